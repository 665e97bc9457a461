#!/usr/bin/env bash
# images.sh builds the container images of the local Kubernetes overlay
# (deploy/k8s/overlays/local) without Docker or a registry, and imports them
# into containerd when one runs.
#
#   scripts/k8s/images.sh [--out DIR] [--import | --no-import] [--address SOCKET]
#
# The images, OCI image-layout tarballs in DIR written by scripts/k8s/oci
# (go-containerregistry), under the names the overlay's images: entries give:
#   localhost/switchyard:local  DIR/switchyard.tar: static (CGO_ENABLED=0)
#       builds of ./cmd/switchyard, ./cmd/coordinator, ./cmd/worker in
#       /usr/local/bin (the manifests' command:), user 65532:65532, entrypoint
#       /usr/local/bin/switchyard, /etc/passwd and /etc/group for the user,
#       /tmp; nothing else (no shell, no CA certificates).
#   localhost/etcd:<version>    DIR/etcd.tar: /usr/local/bin/etcd and etcdctl
#       built in scripts/k8s/oci from go.etcd.io/etcd at go.mod's version of
#       go.etcd.io/etcd/server/v3; user 65532:65532, entrypoint etcd.
# It prints "NAME DIGEST BYTES" per image and writes DIR/digests.txt
# ("NAME DIGEST" lines) and DIR/kustomize/kustomization.yaml: the overlay with
# every image pinned by digest, which the e2e can apply instead of the overlay:
#   kubectl kustomize --load-restrictor LoadRestrictionsNone DIR/kustomize | kubectl apply -f -
# The same tree gives the same digests (every timestamp is
# $SOURCE_DATE_EPOCH, default 0; builds use -trimpath and no build ID).
#
# Import: `ctr -n k8s.io images import --digests` into containerd's k8s.io
# namespace, the kubelet's, so both NAME and REPO@DIGEST resolve for pods
# with imagePullPolicy: Never. --import requires it, --no-import skips it;
# by default it imports when ctr reaches containerd at SOCKET:
# $CONTAINERD_ADDRESS, else scripts/k8s/cluster.sh's
# ${SWITCHYARD_K8S_DIR:-/tmp/switchyard-k8s}/containerd/containerd.sock.
# $CONTAINERD_SNAPSHOTTER (ctr reads it) picks the snapshotter to unpack into.
# DIR defaults to ${SWITCHYARD_K8S_CACHE:-$HOME/.cache/switchyard-k8s}/images-switchyard.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
oci=$root/scripts/k8s/oci
overlay=$root/deploy/k8s/overlays/local

usage() {
	sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

out=${SWITCHYARD_K8S_CACHE:-$HOME/.cache/switchyard-k8s}/images-switchyard
import=auto
address=${CONTAINERD_ADDRESS:-${SWITCHYARD_K8S_DIR:-/tmp/switchyard-k8s}/containerd/containerd.sock}
while [[ $# -gt 0 ]]; do
	case $1 in
	--out) [[ $# -ge 2 ]] || usage; out=$2; shift 2 ;;
	--import) import=yes; shift ;;
	--no-import) import=no; shift ;;
	--address) [[ $# -ge 2 ]] || usage; address=$2; shift 2 ;;
	-h | --help) usage ;;
	*) echo "images: unknown argument $1" >&2; usage ;;
	esac
done

log() { echo "images: $*" >&2; }
die() { log "$*"; exit 1; }

# image_of NAME: newName:newTag of the overlay's images: entry for NAME, the
# reference the rendered manifests use (overlay_test.go keeps the entries
# in this shape).
image_of() {
	awk -v want="$1" '
		/^  - name:/ { name = $3; next }
		/^  [^ ]/ { name = "" }
		name == want && $1 == "newName:" { n = $2 }
		name == want && $1 == "newTag:" { t = $2 }
		END { if (n != "" && t != "") print n ":" t }
	' "$overlay/kustomization.yaml"
}

switchyard_image=$(image_of switchyard)
etcd_image=$(image_of gcr.io/etcd-development/etcd)
[[ -n $switchyard_image && -n $etcd_image ]] ||
	die "no images: entries for switchyard and gcr.io/etcd-development/etcd with newName and newTag in $overlay/kustomization.yaml"

# etcd: the main module's version, the nested module's and the image tag agree.
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' "$root/go.mod")
oci_etcd_version=$(cd "$oci" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
[[ -n $etcd_version && $etcd_version == "$oci_etcd_version" && $etcd_image == *":$etcd_version" ]] ||
	die "etcd versions disagree: go.mod $etcd_version, scripts/k8s/oci/go.mod $oci_etcd_version, overlay image $etcd_image (keep all three equal)"

mkdir -p "$out/bin" "$out/switchyard" "$out/etcd"
out=$(cd "$out" && pwd)
arch=$(go env GOARCH)
export CGO_ENABLED=0 GOOS=linux GOARCH=$arch
build=(go build -trimpath -buildvcs=false -ldflags='-s -w -buildid=')

log "building the image builder (scripts/k8s/oci)"
(cd "$oci" && GOOS= GOARCH= go build -o "$out/bin/oci" .)

log "building switchyard, coordinator, worker (CGO_ENABLED=0 $GOOS/$arch)"
(cd "$root" && "${build[@]}" -o "$out/switchyard/" ./cmd/switchyard ./cmd/coordinator ./cmd/worker)

log "building etcd and etcdctl $etcd_version (scripts/k8s/oci)"
(cd "$oci" && "${build[@]}" -o "$out/etcd/etcd" go.etcd.io/etcd/server/v3 &&
	"${build[@]}" -o "$out/etcd/etcdctl" go.etcd.io/etcd/etcdctl/v3)

common=(-user 65532:65532 -arch "$arch")
"$out/bin/oci" -name "$switchyard_image" -out "$out/switchyard.tar" "${common[@]}" \
	-entrypoint /usr/local/bin/switchyard \
	-file /usr/local/bin/switchyard="$out/switchyard/switchyard" \
	-file /usr/local/bin/coordinator="$out/switchyard/coordinator" \
	-file /usr/local/bin/worker="$out/switchyard/worker" \
	-label org.opencontainers.image.title=switchyard \
	-label org.opencontainers.image.source=https://github.com/switchyard/switchyard \
	-label org.opencontainers.image.description="Switchyard coordinator, worker and front end (deploy/k8s/overlays/local)" \
	>"$out/digests.txt.tmp"
"$out/bin/oci" -name "$etcd_image" -out "$out/etcd.tar" "${common[@]}" \
	-entrypoint /usr/local/bin/etcd \
	-file /usr/local/bin/etcd="$out/etcd/etcd" \
	-file /usr/local/bin/etcdctl="$out/etcd/etcdctl" \
	-label org.opencontainers.image.title=etcd \
	-label org.opencontainers.image.source=https://github.com/etcd-io/etcd \
	-label org.opencontainers.image.version="$etcd_version" \
	>>"$out/digests.txt.tmp"
mv "$out/digests.txt.tmp" "$out/digests.txt"

# The overlay pinned by digest (kustomize wants a relative path to it).
mkdir -p "$out/kustomize"
{
	echo "# Written by scripts/k8s/images.sh: deploy/k8s/overlays/local with the"
	echo "# images just built pinned by digest."
	echo "apiVersion: kustomize.config.k8s.io/v1beta1"
	echo "kind: Kustomization"
	echo "resources:"
	echo "  - $(realpath --relative-to="$out/kustomize" "$overlay")"
	echo "images:"
	while read -r name digest; do
		echo "  - name: ${name%:*}"
		echo "    digest: $digest"
	done <"$out/digests.txt"
} >"$out/kustomize/kustomization.yaml"

declare -A tarball=(["$switchyard_image"]=switchyard.tar ["$etcd_image"]=etcd.tar)
while read -r name digest; do
	echo "$name $digest $(stat -c %s "$out/${tarball[$name]}")"
done <"$out/digests.txt"

ctr_k8s() { ctr --address "$address" --namespace k8s.io "$@"; }
if [[ $import == auto ]]; then
	import=no
	if command -v ctr >/dev/null && [[ -S $address ]] && timeout 10 ctr --address "$address" version >/dev/null 2>&1; then
		import=yes
	else
		log "no containerd at $address: not importing (--import to insist, --address or CONTAINERD_ADDRESS to point elsewhere)"
	fi
fi
if [[ $import == yes ]]; then
	command -v ctr >/dev/null || die "--import: no ctr on PATH"
	while read -r name digest; do
		log "importing $name into containerd at $address (namespace k8s.io)"
		ctr_k8s images import --base-name "${name%:*}" --digests "$out/${tarball[$name]}" >&2
		listed=$(ctr_k8s images ls -q)
		for ref in "$name" "${name%:*}@$digest"; do
			grep -Fqx "$ref" <<<"$listed" || die "containerd does not list $ref after the import"
		done
	done <"$out/digests.txt"
	log "imported: pods may use the names or the digests with imagePullPolicy: Never"
fi
log "out=$out digests=$out/digests.txt kustomization=$out/kustomize"
