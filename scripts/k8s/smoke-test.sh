#!/usr/bin/env bash
# smoke-test.sh checks a cluster that scripts/k8s/cluster.sh up started:
#
#   scripts/k8s/smoke-test.sh
#
# In a fresh namespace labelled pod-security.kubernetes.io/enforce=restricted
# it runs a restricted pod of the busybox test image, checks that a
# privileged pod is refused by PodSecurity, makes a headless Service and a
# StatefulSet of 2 replicas, and resolves web-0.web.<ns>.svc.cluster.local and
# web-1... from inside a pod (busybox nslookup through CoreDNS), and checks
# that kubectl exec and logs reach the kubelet. It deletes the namespace
# at the end (kept on failure). Environment: SWITCHYARD_K8S_DIR (the run
# folder, default /tmp/switchyard-k8s). Last line: smoke: ok.
set -euo pipefail

run=${SWITCHYARD_K8S_DIR:-/tmp/switchyard-k8s}
ns=smoke-$$
image=localhost/switchyard/busybox:1.35

kubectl() { "$run/bin/kubectl" --kubeconfig "$run/kubeconfig" "$@"; }
say() { echo "smoke: $*"; }
fail() {
	echo "smoke: FAIL: $*" >&2
	echo "smoke: namespace $ns kept for inspection" >&2
	exit 1
}

# restricted_spec NAME COMMAND: a pod template spec that PodSecurity's
# restricted level admits.
restricted_spec() {
	cat <<-EOF
		      securityContext:
		        runAsNonRoot: true
		        runAsUser: 65534
		        runAsGroup: 65534
		        seccompProfile: {type: RuntimeDefault}
		      terminationGracePeriodSeconds: 1
		      containers:
		      - name: main
		        image: $image
		        imagePullPolicy: Never
		        command: [sh, -c, '$2']
		        securityContext:
		          allowPrivilegeEscalation: false
		          capabilities: {drop: [ALL]}
	EOF
}

kubectl create namespace "$ns" >/dev/null
kubectl label namespace "$ns" pod-security.kubernetes.io/enforce=restricted >/dev/null
say "namespace $ns (enforce=restricted)"

# A restricted pod runs.
{
	printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: %s}\nspec:\n' "$ns"
	restricted_spec client 'echo hello from $(hostname); sleep 3600' | sed 's/^    //'
} | kubectl apply -f - >/dev/null
kubectl -n "$ns" wait --for=condition=Ready pod/client --timeout=120s >/dev/null || fail "restricted pod not Ready"
say "restricted pod Running and Ready"

# A privileged pod is refused.
if out=$(kubectl apply -f - 2>&1 <<-EOF
	apiVersion: v1
	kind: Pod
	metadata: {name: privileged, namespace: $ns}
	spec:
	  containers:
	  - name: main
	    image: $image
	    imagePullPolicy: Never
	    command: [sleep, "3600"]
	    securityContext: {privileged: true}
	EOF
); then
	fail "privileged pod admitted in a restricted namespace"
fi
grep -q 'violates PodSecurity "restricted' <<<"$out" || fail "privileged pod refused, but not by PodSecurity: $out"
say "privileged pod refused: ${out#*: }"

# A headless Service and a StatefulSet; their names resolve in the pod.
{
	cat <<-EOF
		apiVersion: v1
		kind: Service
		metadata: {name: web, namespace: $ns}
		spec:
		  clusterIP: None
		  selector: {app: web}
		  ports: [{name: http, port: 80}]
		---
		apiVersion: apps/v1
		kind: StatefulSet
		metadata: {name: web, namespace: $ns}
		spec:
		  serviceName: web
		  replicas: 2
		  selector:
		    matchLabels: {app: web}
		  template:
		    metadata:
		      labels: {app: web}
		    spec:
	EOF
	restricted_spec web 'sleep 3600'
} | kubectl apply -f - >/dev/null
kubectl -n "$ns" rollout status statefulset/web --timeout=120s >/dev/null || fail "statefulset web not ready"
say "statefulset web: 2/2 Ready"
for i in 0 1; do
	name=web-$i.web.$ns.svc.cluster.local
	want=$(kubectl -n "$ns" get pod "web-$i" -o 'jsonpath={.status.podIP}')
	got=
	for _ in $(seq 30); do # CoreDNS sees the endpoints within its watch latency
		got=$(kubectl -n "$ns" exec client -- nslookup "$name" 2>/dev/null | sed -n 's/^Address: \([0-9.]*\)$/\1/p' | tail -1) || true
		[[ $got == "$want" ]] && break
		sleep 1
	done
	[[ $got == "$want" ]] || fail "$name resolved to '$got', want $want"
	say "in pod client: $name -> $got"
done

# kubectl logs reaches the kubelet.
kubectl -n "$ns" logs client | grep -q "hello from client" || fail "kubectl logs"
say "kubectl logs and exec reach the kubelet"

kubectl delete namespace "$ns" --wait=false >/dev/null
say ok
