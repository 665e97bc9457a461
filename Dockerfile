# syntax=docker/dockerfile:1
#
# One image with the three Switchyard binaries, for the Kubernetes manifests
# in deploy/k8s (which pick the binary with `command:`):
#   /usr/local/bin/coordinator  /usr/local/bin/worker  /usr/local/bin/switchyard
#
#   docker build -t registry.example.com/ml/switchyard:v0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ... --push .
#
# Pure Go (CGO_ENABLED=0: the kernels are Go assembly chosen at run time;
# cgo is only used by an optional benchmark), static binaries on a
# distroless base that runs as uid 65532. No model weights go into the
# image: workers read them from a mounted volume (deploy/k8s/README.md).

# Keep in step with the go directive in go.mod (the test in deploy/k8s
# checks it).
ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Dependencies first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/ \
        ./cmd/coordinator ./cmd/worker ./cmd/switchyard

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/coordinator /out/worker /out/switchyard /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/switchyard"]
