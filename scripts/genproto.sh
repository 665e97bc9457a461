#!/usr/bin/env bash
# Regenerates the Go code for every .proto under proto/ (etcd's
# scripts/genproto.sh habit): pinned generator versions, output committed.
#
#   protoc              3.21.12 (Debian bookworm's protobuf-compiler)
#   protoc-gen-go       v1.36.12 (go.mod tool)
#   protoc-gen-go-grpc  v1.6.2   (go.mod tool)
#
# Generated files land next to their .proto (paths=source_relative), in the
# Go package named by go_package. scripts/verify-genproto.sh checks that
# running this changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_protoc="libprotoc 3.21.12"
if ! command -v protoc >/dev/null 2>&1; then
	echo "genproto: installing protobuf-compiler (Debian) ..." >&2
	(apt-get install -y --no-install-recommends protobuf-compiler >/dev/null 2>&1 ||
		{ apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends protobuf-compiler >/dev/null; })
fi
have=$(protoc --version)
if [ "$have" != "$want_protoc" ]; then
	echo "genproto: need $want_protoc, found $have" >&2
	exit 1
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
go build -o "$bin/protoc-gen-go-grpc" google.golang.org/grpc/cmd/protoc-gen-go-grpc

mapfile -t protos < <(find proto -name '*.proto' | sort)
if [ "${#protos[@]}" -eq 0 ]; then
	echo "genproto: no .proto files" >&2
	exit 0
fi
PATH="$bin:$PATH" protoc -I proto \
	--go_out=proto --go_opt=paths=source_relative \
	--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	"${protos[@]}"
echo "genproto: generated from ${#protos[@]} files"
