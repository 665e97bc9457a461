#!/usr/bin/env bash
# certs.sh issues the certificates of the local Kubernetes overlay
# (deploy/k8s/overlays/local) and the Secrets its pods mount, in place of
# cert-manager (deploy/k8s/examples/cert-manager.yaml), and applies them
# when given a cluster.
#
#   scripts/k8s/certs.sh DIR [--workers N] [--namespace NS] [--cluster-domain D]
#                            [--kubeconfig FILE] [--kubectl PATH]
#
# DIR gets (scripts/k8s/oci/certs): the Switchyard CA and the etcd peer CA
# (both reused when present, so certificates already handed out stay
# valid), etcd's server and peer certificates (the etcd-client and
# etcd-peer Services' names in NS), coordinator/coordinator,
# frontend/frontend, worker/worker-0 .. worker-(N-1) (the worker pods'
# names), client/train, client/admin and etcd's root user, the front ends'
# API key (DIR/api-key, reused), and DIR/secrets.yaml with the Secrets
# etcd-server-tls, etcd-peer-tls, switchyard-coordinator-tls,
# switchyard-frontend-tls, switchyard-train-client-tls, switchyard-api-key
# and switchyard-worker-tls (every worker's certificate and key in one
# Secret: a local-only shortcut, see the overlay's worker.yaml). Defaults:
# 4 workers, namespace switchyard, domain cluster.local.
#
# With --kubeconfig (or $KUBECONFIG) it also applies the namespace
# (deploy/k8s/namespace.yaml) and DIR/secrets.yaml with kubectl
# (--kubectl, $KUBECTL, scripts/k8s/cluster.sh's
# ${SWITCHYARD_K8S_DIR:-/tmp/switchyard-k8s}/bin/kubectl, or kubectl on PATH),
# server-side, so no copy of the keys lands in a last-applied annotation.
# DIR holds private keys (0600, the folder 0700): keep it off shared disks.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

usage() {
	sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[[ $# -ge 1 && $1 != -* ]] || usage
dir=$1
shift
args=()
namespace=switchyard
kubeconfig=${KUBECONFIG:-}
kubectl=${KUBECTL:-}
while [[ $# -gt 0 ]]; do
	case $1 in
	--workers | --cluster-domain)
		[[ $# -ge 2 ]] || usage
		args+=("-${1#--}" "$2")
		shift 2
		;;
	--namespace) [[ $# -ge 2 ]] || usage; namespace=$2; shift 2 ;;
	--kubeconfig) [[ $# -ge 2 ]] || usage; kubeconfig=$2; shift 2 ;;
	--kubectl) [[ $# -ge 2 ]] || usage; kubectl=$2; shift 2 ;;
	-h | --help) usage ;;
	*) echo "certs: unknown argument $1" >&2; usage ;;
	esac
done

mkdir -p "$dir"
chmod 0700 "$dir"
dir=$(cd "$dir" && pwd)
(cd "$root/scripts/k8s/oci" && go run ./certs -dir "$dir" -namespace "$namespace" "${args[@]}")

if [[ -n $kubeconfig ]]; then
	if [[ -z $kubectl ]]; then
		kubectl=${SWITCHYARD_K8S_DIR:-/tmp/switchyard-k8s}/bin/kubectl
		[[ -x $kubectl ]] || kubectl=$(command -v kubectl) || { echo "certs: no kubectl (--kubectl PATH)" >&2; exit 1; }
	fi
	k() { "$kubectl" --kubeconfig "$kubeconfig" "$@"; }
	if [[ $namespace == switchyard ]]; then
		k apply --server-side --force-conflicts -f "$root/deploy/k8s/namespace.yaml"
	else
		k get namespace "$namespace" >/dev/null || { echo "certs: namespace $namespace does not exist" >&2; exit 1; }
	fi
	k apply --server-side --force-conflicts -f "$dir/secrets.yaml"
	echo "certs: applied $dir/secrets.yaml to namespace $namespace"
fi
