#!/usr/bin/env bash
# Pins an image of the Kubernetes manifests to a digest: rewrites its
# images[] entry in kustomization.yaml (digest, and newName when the source
# names a repository) and every "image: REPO[:TAG]@sha256:..." line of
# examples/*.yaml for the same image. Tags can be moved to other content;
# digests cannot, so a pinned manifest runs exactly the image you checked.
#
#   pin-images.sh [-k DIR] [-n NEW_NAME] NAME SOURCE
#   pin-images.sh [-k DIR] --check
#
# NAME     an images[].name of kustomization.yaml (switchyard,
#          gcr.io/etcd-development/etcd), or the repository of an image in
#          examples/ (busybox)
# SOURCE   where the digest comes from:
#          sha256:<64 hex>             a digest you already checked
#          oci:DIR[:REF]               an OCI image layout, e.g. from
#                                      docker buildx build --output type=oci,tar=false,dest=DIR
#                                      (REF picks a manifest of index.json by
#                                      its org.opencontainers.image.ref.name
#                                      when there are several)
#          oci-archive:FILE[:REF]      the same layout as a tar file
#          REGISTRY/REPO[:TAG]         a pushed image, resolved with crane,
#                                      skopeo or docker buildx imagetools; its
#                                      repository becomes newName
# -n       set the image's newName (the repository to pull from)
# -k DIR   the folder of kustomization.yaml (default: this script's)
# --check  exit 1 if any digest is still a placeholder (all zeros) or an
#          example image is not pinned
#
# Examples:
#   docker buildx build --output type=oci,tar=false,dest=/tmp/sy-oci .
#   deploy/k8s/pin-images.sh -n registry.example.com/ml/switchyard switchyard oci:/tmp/sy-oci
#   deploy/k8s/pin-images.sh switchyard registry.example.com/ml/switchyard:v0.1.0
#   deploy/k8s/pin-images.sh gcr.io/etcd-development/etcd gcr.io/etcd-development/etcd:v3.7.3
#   deploy/k8s/pin-images.sh busybox docker.io/library/busybox:1.37
#   deploy/k8s/pin-images.sh --check
set -euo pipefail

die() { echo "pin-images: $*" >&2; exit 1; }

dir=$(cd "$(dirname "$0")" && pwd)
new_name=
check=
while [ $# -gt 0 ]; do
	case $1 in
	-k) dir=$2; shift 2 ;;
	-n) new_name=$2; shift 2 ;;
	--check) check=1; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) die "unknown option $1" ;;
	*) break ;;
	esac
done
kust=$dir/kustomization.yaml
[ -f "$kust" ] || die "$kust: no such file"
hex64='[0-9a-f]\{64\}'
zeros=sha256:0000000000000000000000000000000000000000000000000000000000000000
examples=()
for f in "$dir"/examples/*.yaml; do [ -e "$f" ] && examples+=("$f"); done

if [ -n "$check" ]; then
	[ $# -eq 0 ] || die "--check takes no arguments"
	bad=0
	if grep -n "digest: *$zeros" "$kust"; then bad=1; fi
	for f in ${examples[@]+"${examples[@]}"}; do
		if grep -n "^ *image: .*@$zeros" "$f"; then bad=1; fi
		if grep -n '^ *image: ' "$f" | grep -v "@sha256:$hex64 *\$"; then bad=1; fi
	done
	[ $bad -eq 0 ] || die "the lines above hold placeholder digests or unpinned images"
	echo "pin-images: every image is pinned"
	exit 0
fi
[ $# -eq 2 ] || die "usage: pin-images.sh [-k DIR] [-n NEW_NAME] NAME SOURCE (or --check)"
name=$1 source=$2

# sha256_of FILE: the hex SHA-256 of a file's bytes.
sha256_of() {
	if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
	else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

# from_index INDEX_JSON REF: the digest of the one manifest of an OCI
# index.json, or of the one whose ref.name annotation is REF.
from_index() {
	local index=$1 ref=$2 digests
	if [ -z "$ref" ]; then
		digests=$(tr -d ' \n\t' <"$index" | grep -o '"digest":"sha256:[0-9a-f]*"' | cut -d'"' -f4 | sort -u)
		[ "$(printf '%s\n' "$digests" | grep -c .)" -eq 1 ] ||
			die "index.json lists $(printf '%s\n' "$digests" | grep -c .) manifests; name one with oci:DIR:REF"
		printf '%s\n' "$digests"
		return
	fi
	if command -v jq >/dev/null; then
		jq -r --arg ref "$ref" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $ref) | .digest' "$index"
	elif command -v python3 >/dev/null; then
		python3 -c 'import json,sys; print("\n".join(m["digest"] for m in json.load(open(sys.argv[1]))["manifests"] if m.get("annotations",{}).get("org.opencontainers.image.ref.name")==sys.argv[2]))' "$index" "$ref"
	else
		die "picking a manifest by REF needs jq or python3"
	fi
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
repo=
case $source in
sha256:*)
	digest=$source
	;;
oci:* | oci-archive:*)
	kind=${source%%:*} rest=${source#*:}
	path=${rest%%:*} ref=
	[ "$path" = "$rest" ] || ref=${rest#*:}
	if [ "$kind" = oci ]; then
		[ -f "$path/index.json" ] || die "$path: no index.json (not an OCI image layout)"
		cp "$path/index.json" "$tmp/index.json"
	else
		tar -xOf "$path" index.json >"$tmp/index.json" 2>/dev/null || die "$path: no index.json in the archive"
	fi
	digest=$(from_index "$tmp/index.json" "$ref")
	[ "$(printf '%s\n' "$digest" | grep -c .)" -eq 1 ] || die "$source: want exactly one manifest named $ref, found: $digest"
	# The manifest blob must be there and hash to its name.
	blob=blobs/sha256/${digest#sha256:}
	if [ "$kind" = oci ]; then
		[ -f "$path/$blob" ] || die "$path/$blob: the manifest is not in the layout"
		cp "$path/$blob" "$tmp/manifest"
	else
		tar -xOf "$path" "$blob" >"$tmp/manifest" 2>/dev/null || die "$path: no $blob in the archive"
	fi
	[ "sha256:$(sha256_of "$tmp/manifest")" = "$digest" ] || die "$source: $blob does not hash to its name"
	;;
*)
	ref=$source
	# The repository: the reference without a tag (a ':' after the last '/')
	# or digest.
	repo=${ref%@*}
	case ${repo##*/} in *:*) repo=${repo%:*} ;; esac
	if command -v crane >/dev/null; then
		digest=$(crane digest "$ref")
	elif command -v skopeo >/dev/null; then
		skopeo inspect --raw "docker://$ref" >"$tmp/manifest"
		digest=sha256:$(sha256_of "$tmp/manifest")
	elif command -v docker >/dev/null; then
		docker buildx imagetools inspect --raw "$ref" >"$tmp/manifest"
		digest=sha256:$(sha256_of "$tmp/manifest")
	else
		die "resolving $ref needs crane, skopeo or docker (or give sha256:... or oci:DIR)"
	fi
	;;
esac
printf '%s\n' "$digest" | grep -qx "sha256:$hex64" || die "$source: $digest is not a sha256 digest"
[ "$digest" != "$zeros" ] || die "$source: the all-zeros placeholder is not a digest"
[ -n "$new_name" ] || new_name=$repo
# No newName when it would repeat NAME (Docker Hub's long form included).
case $new_name in "$name" | docker.io/library/"$name") new_name= ;; esac

# kustomization.yaml: the entry "- name: NAME" becomes name, newName (when
# one is given), digest; its newTag goes (a digest replaces it).
old_new_name=$(awk -v n="$name" '
	/^[^ #]/ || /^ *- / { in_entry = 0 }
	/^ *- name: / && $3 == n { in_entry = 1; next }
	in_entry && $1 == "newName:" { print $2 }' "$kust")
awk -v n="$name" -v d="$digest" -v nn="$new_name" '
	/^[^ #]/ || /^ *- / { in_entry = 0 }
	/^ *- name: / && $3 == n {
		print
		ind = $0; sub(/-.*/, "", ind); ind = ind "  "
		if (nn != "") print ind "newName: " nn
		print ind "digest: " d
		in_entry = 1; found = 1
		next
	}
	in_entry && ($1 == "digest:" || $1 == "newTag:" || ($1 == "newName:" && nn != "")) { next }
	{ print }
	END { exit !found }' "$kust" >"$tmp/kust" && in_kust=1 || in_kust=
if [ -n "$in_kust" ]; then
	cat "$tmp/kust" >"$kust"
	echo "pin-images: kustomization.yaml: $name -> ${new_name:-${old_new_name:-$name}}@$digest"
fi

# examples/*.yaml: "image: REPO[:TAG]@sha256:..." where REPO is NAME or its
# previous newName.
repl=${new_name:-${old_new_name:-$name}}
changed=
for f in ${examples[@]+"${examples[@]}"}; do
	awk -v a="$name" -v b="$old_new_name" -v r="$repl" -v d="$digest" '
		$1 == "image:" {
			img = $2; at = index(img, "@"); ref = at ? substr(img, 1, at - 1) : img
			repo = ref; tag = ""
			slash = match(ref, /\/[^\/]*$/); last = slash ? substr(ref, slash + 1) : ref
			c = index(last, ":")
			if (c) { tag = substr(last, c); repo = substr(ref, 1, length(ref) - length(tag)) }
			if (repo == a || (b != "" && repo == b)) {
				ind = $0; sub(/image:.*/, "", ind)
				print ind "image: " r tag "@" d
				hit = 1
				next
			}
		}
		{ print }
		END { exit !hit }' "$f" >"$tmp/example" || continue
	cat "$tmp/example" >"$f"
	changed=1
	echo "pin-images: ${f#"$dir"/}: $repl@$digest"
done
[ -n "$in_kust" ] || [ -n "$changed" ] || die "$name: no images[] entry in kustomization.yaml and no image in examples/"
