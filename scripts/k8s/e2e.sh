#!/usr/bin/env bash
# e2e.sh: Switchyard on a real Kubernetes, end to end.
#
# Builds what it needs (scripts/k8s/cluster.sh: Kubernetes v1.34 from the Go
# module proxy, cached; scripts/k8s/images.sh: the Switchyard and etcd OCI
# images), starts the single-node cluster, applies deploy/k8s through its
# local overlay (deploy/k8s/overlays/local) and checks, in order:
#   1. every rollout completes (etcd with TLS and RBAC, coordinator, 2
#      workers, front end) in a namespace where the real apiserver enforces
#      PodSecurity "restricted" (a privileged pod is refused there);
#   2. greedy completions through the front-end Service, streamed and not,
#      equal `switchyard generate` on the same model in one process;
#   3. `kubectl scale statefulset worker --replicas=4` and back to 2
#      re-places the experts (the placement in etcd, read with `switchyard
#      status` inside the cluster, spans 4 and then 2 workers);
#   4. every pod annotated for Prometheus (etcd, coordinator, workers, front
#      end) serves its metrics on the annotated port, and the coordinator's
#      dashboard API (--http) shows both workers and a placed grid;
#   5. `kubectl delete pod worker-1` under load (4 clients, 2 copies of each
#      expert) fails no request, and the pod comes back into the placement;
#   6. deploy/k8s/examples/train-job.yaml (local image, 2 workers, a few
#      steps) runs to completion and its checkpoint loads (`switchyard
#      generate` on it, checksums verified).
# Then it tears everything down (cluster.sh down) and removes the volumes.
# The last line is "k8s-e2e: PASS" or "k8s-e2e: FAIL <reason>"; exit status
# 0 only on PASS.
#
#   scripts/k8s/e2e.sh                 (root; ~2 minutes warm, plus ~10-15
#                                       minutes to build Kubernetes cold)
#
# Environment: K8S_E2E_KEEP=1 leaves the cluster running at the end;
# K8S_E2E_BREAK=port breaks a manifest on purpose (the front end listens on
# another port than its probes and Service use): the run must then FAIL;
# K8S_E2E_ROLLOUT bounds each initial rollout (default 240s).
# Work files and logs go to a temporary folder printed at the start; on a
# failure the pods' state and logs are printed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PATH=$PATH:/usr/local/go/bin
run=${SWITCHYARD_K8S_DIR:-/tmp/switchyard-k8s}
ns=switchyard
vol=/var/lib/switchyard-k8s
work=$(mktemp -d /tmp/switchyard-k8s-e2e.XXXXXX)
start=$SECONDS
k=""
up=""

step() { printf '\n== k8s-e2e: %s  (%s, %ds)\n' "$1" "$(date +%T)" $((SECONDS - start)); }

diagnose() {
	[ -n "$up" ] || return 0
	echo "--- pods:" >&2
	$k -n $ns get pods -o wide >&2 || true
	echo "--- events:" >&2
	$k -n $ns get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 25 >&2 || true
	local p
	for p in $($k -n $ns get pods -o name 2>/dev/null); do
		echo "--- $p (last 15 lines):" >&2
		$k -n $ns logs "$p" --all-containers --tail=15 >&2 2>&1 || true
	done
}

finish() {
	local rc=$?
	trap - EXIT
	if [ $rc -ne 0 ]; then
		diagnose
	fi
	if [ -z "${K8S_E2E_KEEP:-}" ]; then
		scripts/k8s/cluster.sh down >/dev/null 2>&1 || true
		rm -rf "$vol"
	fi
	rm -rf "$work"
	if [ $rc -ne 0 ]; then
		[ -s "$work.reason" ] && echo "k8s-e2e: FAIL $(cat "$work.reason")" || echo "k8s-e2e: FAIL exit status $rc"
		rm -f "$work.reason"
		exit 1
	fi
	rm -f "$work.reason"
	echo "k8s-e2e: PASS"
}
trap finish EXIT

fail() {
	echo "$*" >"$work.reason"
	exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root (containerd, kubelet, network namespaces)"
echo "k8s-e2e: work folder $work"

step "build switchyard and the load client"
go build -o "$work/switchyard" ./cmd/switchyard
go build -o "$work/bs" ./bench/serve

step "start Kubernetes (scripts/k8s/cluster.sh up)"
line=$(scripts/k8s/cluster.sh up | tee "$work/up.log" | tail -n 1)
kubeconfig=${line#k8s: up kubeconfig=}
[ -f "$kubeconfig" ] || fail "cluster.sh up printed no kubeconfig: $line"
export KUBECONFIG=$kubeconfig
k=$run/bin/kubectl
up=1
$k version 2>/dev/null | sed 's/^/  /'

step "images (scripts/k8s/images.sh)"
scripts/k8s/images.sh --import >"$work/images.log" 2>&1 || { tail -n 20 "$work/images.log"; fail "images.sh"; }
imgs=$(sed -n 's/.* kustomization=\([^ ]*\).*/\1/p' "$work/images.log" | tail -n 1)
[ -d "$imgs" ] || fail "images.sh printed no kustomization"
cat "$(dirname "$imgs")/digests.txt" | sed 's/^/  /'

step "volumes: the model (qwen2_moe golden + the gpt2-style tokenizer), the training text"
rm -rf "$vol"
install -d -m 0755 "$vol/model"
install -d -o 65532 -g 65532 -m 0700 "$vol/data" "$vol/etcd-0"
install -d -o 65532 -g 65532 -m 0700 "$vol/data/text"
cp testdata/golden/qwen2_moe/config.json testdata/golden/qwen2_moe/model.safetensors "$vol/model/"
cp testdata/golden/tokenizer_bpe_gpt2/tokenizer.json "$vol/model/tokenizer.json"
chmod -R a+rX "$vol/model"
install -o 65532 -g 65532 -m 0600 testdata/text/opticks.txt "$vol/data/text/corpus.txt"

step "certificates and Secrets (scripts/k8s/certs.sh)"
scripts/k8s/certs.sh "$work/certs" --kubeconfig "$KUBECONFIG" --kubectl "$k" >"$work/certs.log" 2>&1 || { cat "$work/certs.log"; fail "certs.sh"; }
key=$(head -n 1 "$work/certs/api-key")

step "apply deploy/k8s (overlays/local, images pinned by digest)"
$k kustomize --load-restrictor LoadRestrictionsNone "$imgs" >"$work/rendered.yaml"
case "${K8S_E2E_BREAK:-}" in
"") ;;
port)
	echo "  breaking the front end on purpose: it listens on 8001, its probes and Service use 8000"
	sed -i 's/--listen=0.0.0.0:8000/--listen=0.0.0.0:8001/' "$work/rendered.yaml"
	;;
*) fail "unknown K8S_E2E_BREAK=$K8S_E2E_BREAK" ;;
esac
$k apply -f "$work/rendered.yaml" >"$work/apply.log" 2>&1 || { cat "$work/apply.log"; fail "kubectl apply"; }
for w in statefulset/etcd deployment/coordinator statefulset/worker deployment/frontend; do
	$k -n $ns rollout status "$w" --timeout="${K8S_E2E_ROLLOUT:-240s}" || fail "rollout of $w did not complete within ${K8S_E2E_ROLLOUT:-240s}"
done

step "PodSecurity \"restricted\" is enforced by the apiserver"
level=$($k get namespace $ns -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')
[ "$level" = restricted ] || fail "namespace $ns enforces PodSecurity \"$level\", want restricted"
cat >"$work/privileged.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata: {name: privileged-probe, namespace: $ns}
spec:
  containers:
    - name: c
      image: localhost/switchyard:local
      imagePullPolicy: Never
      securityContext: {privileged: true}
EOF
if out=$($k apply --dry-run=server -f "$work/privileged.yaml" 2>&1); then
	fail "a privileged pod was admitted to $ns: $out"
fi
echo "  refused: $(echo "$out" | grep -o 'violates PodSecurity[^:]*' | head -n 1)"

ip=$($k -n $ns get service frontend -o jsonpath='{.spec.clusterIP}')
port=$($k -n $ns get service frontend -o jsonpath='{.spec.ports[0].port}')
url="http://$ip:$port"
export SWITCHYARD_API_KEY=$key SWITCHYARD_MODEL_NAME=/model

step "greedy completions through the front-end Service ($url) equal one process"
"$work/bs" refs -switchyard "$work/switchyard" -model "$vol/model" -out "$work/refs.json" -max-tokens 12
"$work/bs" check -url "$url" -refs "$work/refs.json" -max-tokens 12 -label "  check" || fail "completions through the Service differ from switchyard generate"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "$url/v1/models")
[ "$code" = 401 ] || fail "/v1/models without the API key answered $code, want 401"

# status FIELD...: `switchyard status --json` run inside the coordinator pod
# (its certificate reads etcd), piped through python3 to print one value.
status() {
	$k -n $ns exec deploy/coordinator -c coordinator -- /usr/local/bin/switchyard status --json \
		--etcd https://etcd-client:2379 --cluster switchyard \
		--tls-cert /etc/switchyard/tls/tls.crt --tls-key /etc/switchyard/tls/tls.key --tls-ca /etc/switchyard/tls/ca.crt
}
# placed: the workers the placement lists, comma-separated and sorted,
# once every expert has its copies (no verdict other than OK).
placed() {
	status 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
m = (s.get("models") or [{}])[0]
p = m.get("placement") or {}
v = m.get("placement_status") or {}
live = sorted(w["id"] for w in s.get("workers") or [])
print(",".join(sorted((p.get("workers") or {}).keys())), p.get("epoch", 0), ",".join(live), v.get("ok", ""))
' 2>/dev/null || true
}
# wait_placed WORKERS: until the placement spans exactly WORKERS (sorted,
# comma-separated) and those are the live workers.
wait_placed() {
	local want=$1 i got
	for ((i = 0; i < 240; i++)); do
		got=$(placed)
		set -- $got
		if [ "${1:-}" = "$want" ] && [ "${3:-}" = "$want" ]; then
			echo "  placement epoch ${2}: workers $1"
			return 0
		fi
		sleep 0.5
	done
	fail "placement did not settle on $want (last: $got)"
}

step "scale the workers to 4 and back to 2: the experts are re-placed"
wait_placed worker-0,worker-1
$k -n $ns scale statefulset worker --replicas=4 >/dev/null
$k -n $ns rollout status statefulset/worker --timeout=240s >/dev/null || fail "scale to 4"
wait_placed worker-0,worker-1,worker-2,worker-3
"$work/bs" check -url "$url" -refs "$work/refs.json" -max-tokens 12 -label "  check (4 workers)" || fail "completions on 4 workers differ"
$k -n $ns scale statefulset worker --replicas=2 >/dev/null
$k -n $ns rollout status statefulset/worker --timeout=240s >/dev/null || fail "scale to 2"
wait_placed worker-0,worker-1
"$work/bs" check -url "$url" -refs "$work/refs.json" -max-tokens 12 -label "  check (2 workers)" || fail "completions after scaling back differ"

step "metrics: every pod annotated for Prometheus answers on its port; the coordinator's dashboard shows the cluster"
# What a Prometheus using the pods' annotations would scrape (this
# cluster's CNI bridge does not enforce network policies; the policies
# themselves are checked in deploy/k8s's tests).
$k -n $ns get pods --field-selector=status.phase=Running -o json | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    a = p["metadata"].get("annotations") or {}
    if p["metadata"].get("deletionTimestamp"):
        continue  # going away (the workers scaled back to 2)
    if a.get("prometheus.io/scrape") == "true":
        print(p["metadata"]["name"], p["status"]["podIP"], a["prometheus.io/port"], a.get("prometheus.io/path", "/metrics"))
' >"$work/scrape.txt"
for role in etcd coordinator worker frontend; do
	grep -q "^$role" "$work/scrape.txt" || fail "no running $role pod is annotated for Prometheus"
done
while read -r pod ip mport mpath; do
	case $pod in
	etcd*) want=etcd_server_has_leader ;;
	coordinator*) want=switchyard_coordinator_is_leader ;;
	worker*) want=switchyard_worker_held_experts ;;
	frontend*) want=switchyard_serve_requests_total ;;
	*) continue ;;
	esac
	body=$(curl -s -m 10 "http://$ip:$mport$mpath") || fail "$pod: GET http://$ip:$mport$mpath failed"
	grep -q "^$want" <<<"$body" || fail "$pod: http://$ip:$mport$mpath has no $want"
	echo "  $pod $ip:$mport$mpath: $(grep -c '^[a-z]' <<<"$body") samples, $want present"
done <"$work/scrape.txt"
read -r _ cip cport _ < <(grep '^coordinator' "$work/scrape.txt" | head -n 1)
curl -s -m 20 "http://$cip:$cport/dashboard/api/state" | python3 -c '
import json, sys
s = json.load(sys.stdin)
ids = sorted(w["id"] for w in s["workers"])
cells = sum(len(r) for m in s["models"] for r in m["grid"])
assert ids == ["worker-0", "worker-1"], ids
assert cells > 0 and all(c["live"] > 0 for m in s["models"] for r in m["grid"] for c in r), "grid"
print("  coordinator dashboard: workers %s, %d placement cells, each with a live copy" % (",".join(ids), cells))
' || fail "the coordinator's dashboard API does not show the 2 workers and a placed grid"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 "http://$cip:$cport/dashboard/")
[ "$code" = 200 ] || fail "GET /dashboard/ on the coordinator answered $code"

step "delete a worker pod under load (4 clients, 2 copies of each expert): no request fails"
"$work/bs" load -url "$url" -clients 4 -duration 25s -max-tokens 12 -refs "$work/refs.json" -fail-on-error -label "  load" >"$work/load.log" 2>&1 &
loadpid=$!
sleep 6
t0=$SECONDS
$k -n $ns delete pod worker-1 --wait=false >/dev/null
if ! wait $loadpid; then
	cat "$work/load.log"
	fail "requests failed while worker-1 was deleted"
fi
cat "$work/load.log"
$k -n $ns rollout status statefulset/worker --timeout=240s >/dev/null || fail "worker-1 did not come back"
wait_placed worker-0,worker-1
echo "  worker-1 deleted, replaced and back in the placement within $((SECONDS - t0)) s"

step "train: deploy/k8s/examples/train-job.yaml (local image, 2 workers, 4 steps)"
sed -e 's#image: .*switchyard.*#image: localhost/switchyard:local#' -e 's#imagePullPolicy: IfNotPresent#imagePullPolicy: Never#' \
	-e 's#--workers=3#--workers=2#' -e 's#--steps=400#--steps=4#' \
	-e 's#- --steps=4#- --steps=4\n            - --batch=2\n            - --seq-len=32\n            - --eval-every=0#' \
	deploy/k8s/examples/train-job.yaml >"$work/train-job.yaml"
job=$(python3 -c 'import sys,re; print(re.search(r"^kind: Job\s*\nmetadata:\s*\n\s+name: (\S+)", open(sys.argv[1]).read(), re.M).group(1))' "$work/train-job.yaml")
$k apply -f "$work/train-job.yaml" >/dev/null || fail "apply the training job"
if ! $k -n $ns wait --for=condition=complete "job/$job" --timeout=300s >/dev/null; then
	$k -n $ns logs "job/$job" --tail=20 || true
	fail "training job $job did not complete"
fi
$k -n $ns logs "job/$job" --tail=3 | sed 's/^/  /'
ckpt=$(ls -d "$vol"/data/runs/finetune/checkpoint-* 2>/dev/null | sort | tail -n 1)
[ -n "$ckpt" ] || fail "the training job left no checkpoint under $vol/data/runs/finetune"
out=$("$work/switchyard" generate --model "$ckpt" --tokenizer "$vol/model/tokenizer.json" --prompt "Of the Refractions" --max-tokens 4 --temperature 0 2>"$work/gen.log") ||
	{ cat "$work/gen.log"; fail "the job's checkpoint $ckpt does not load"; }
echo "  checkpoint $(basename "$ckpt") loads (checksums verified); greedy: $(printf %q "$out")"

step "done in $((SECONDS - start)) s"
