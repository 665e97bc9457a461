#!/usr/bin/env bash
# local-cluster.sh runs a Switchyard cluster on this machine: a coordinator
# (with its embedded etcd on a free port, the model registered) and N worker
# processes, each in the background with its log in a state folder.
#
#   scripts/local-cluster.sh up N [--model DIR] [--dir STATE] [--replicas R] [--lease-ttl D] [--tls] [--data-root DIR] [--coordinators K] [--etcd-members M]
#   scripts/local-cluster.sh status [--dir STATE] [--json]
#   scripts/local-cluster.sh down [--dir STATE]
#
# up builds bin/{coordinator,worker,switchyard} into STATE, starts everything,
# waits until each process printed its ready line and the placement spreads
# every expert over the N workers (each serving it), and prints where
# everything listens. down stops every process it started (SIGTERM to each
# process group, SIGKILL after 5 s) and is idempotent. Defaults: the model
# testdata/golden/qwen2_moe, STATE ${TMPDIR:-/tmp}/switchyard-local-cluster.
# Training jobs' paths are relative to the workers' --data-root (default: the
# directory this script runs from) and confined to it.
#
# Every coordinator serves its Prometheus metrics and the cluster dashboard
# on a free loopback port (--http; the URL is the "coordinator: http=" line
# of STATE/coordinator*.out: URL/metrics, URL/dashboard/), every worker its
# metrics (--metrics; the "worker: metrics=" line of STATE/wI.out).
#
# --coordinators K (K >= 2) runs etcd in a process of its own (switchyard
# etcd; STATE/etcd.pid) and K coordinators c1..cK on it (STATE/coordinator.pid,
# STATE/coordinator2.pid, ...): one leads, the others take over within the
# leader's session TTL (3 s) when it dies, so a coordinator's death stalls
# neither a training job nor the serving placement.
#
# --etcd-members M (M >= 2; 3 is the usual) runs etcd as M members of one
# cluster, each a `switchyard etcd` process of its own on fixed free ports
# (STATE/etcd.pid, STATE/etcd2.pid, ...; the command that starts member I
# again on its data directory in STATE/etcdI.cmd), so any one of them may
# die or restart while the cluster keeps its quorum; STATE/endpoint holds
# every member's client URL, comma-separated.
#
# --tls makes a development CA and certificates in STATE/tls (scripts/dev-ca.sh:
# coordinator, w1..wN, fe1, fe2, client) and runs everything with mutual TLS:
# etcd on https:// with client certificates, workers' gRPC and training
# groups mTLS, gossip encrypted. STATE/tls-flags then holds the flags a
# client needs (e.g. `switchyard status --etcd $(cat STATE/endpoint)
# $(cat STATE/tls-flags)`); a front end uses fe1.crt/fe1.key.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=local

usage() {
	sed -n '2,42p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

[[ $# -ge 1 ]] || usage
cmd=$1
shift
n=0
if [[ $cmd == up ]]; then
	[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -ge 1 ]] || { echo "local-cluster: up needs a worker count N >= 1" >&2; usage; }
	n=$1
	shift
fi
model=$root/testdata/golden/qwen2_moe
state=${TMPDIR:-/tmp}/switchyard-local-cluster
replicas=1
lease_ttl=10s
json=
tls=
data_root=
coordinators=1
members=1
while [[ $# -gt 0 ]]; do
	case $1 in
	--model) model=$2; shift 2 ;;
	--dir) state=$2; shift 2 ;;
	--replicas) replicas=$2; shift 2 ;;
	--lease-ttl) lease_ttl=$2; shift 2 ;;
	--json) json=--json; shift ;;
	--tls) tls=1; shift ;;
	--data-root) data_root=$2; shift 2 ;;
	--coordinators) coordinators=$2; shift 2 ;;
	--etcd-members) members=$2; shift 2 ;;
	*) echo "local-cluster: unknown argument $1" >&2; usage ;;
	esac
done
mkdir -p "$state"
state=$(cd "$state" && pwd)
bin=$state/bin

# running PID: the process exists and is not a zombie waiting to be reaped.
running() {
	local st
	st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
	[[ $st != Z* ]]
}

# alive PIDFILE: the process recorded in PIDFILE runs.
alive() { [[ -f $1 ]] && running "$(cat "$1")"; }

# stop PIDFILE: SIGTERM the process group, SIGKILL after 5 s, forget it.
stop() {
	local f=$1 pid i
	[[ -f $f ]] || return 0
	pid=$(cat "$f")
	if running "$pid"; then
		kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			running "$pid" || break
			sleep 0.1
		done
		if running "$pid"; then
			echo "local-cluster: $(basename "$f" .pid) (pid $pid) did not stop in 5 s; killing it" >&2
			kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$f"
}

down() {
	local f stoppers=()
	shopt -s nullglob
	for f in "$state"/w*.pid; do # workers first (together): they deregister
		stop "$f" &
		stoppers+=($!)
	done
	[[ ${#stoppers[@]} -eq 0 ]] || wait "${stoppers[@]}"
	for f in "$state"/coordinator*.pid; do
		stop "$f"
	done
	for f in "$state"/etcd*.pid; do
		stop "$f"
	done
	for f in "$state"/etcd "$state"/etcd[0-9]*; do # data directories (logs stay)
		[[ ! -d $f ]] || rm -rf "$f"
	done
	rm -f "$state"/etcd*.cmd
	shopt -u nullglob
	rm -rf "$state/endpoint" "$state/tls-flags"
}

# tlsflags NAME: the --tls-* flags of the process whose certificate is NAME
# (empty without --tls).
tlsflags() {
	[[ -n $tls ]] || return 0
	echo "--tls-cert $state/tls/$1.crt --tls-key $state/tls/$1.key --tls-ca $state/tls/ca.crt"
}

# await FILE PATTERN SECONDS PIDFILE: wait until FILE has a line matching
# PATTERN (printed), failing early if the process exits.
await() {
	local file=$1 pattern=$2 secs=$3 pidfile=$4 i line
	for ((i = 0; i < secs * 10; i++)); do
		if line=$(grep -m1 -E "$pattern" "$file" 2>/dev/null); then
			echo "$line"
			return 0
		fi
		if ! alive "$pidfile"; then
			echo "local-cluster: $(basename "$pidfile" .pid) exited; its log:" >&2
			tail -n 20 "${file%.out}.log" >&2 || true
			return 1
		fi
		sleep 0.1
	done
	echo "local-cluster: no line matching '$pattern' in $file after ${secs}s" >&2
	return 1
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# freeport: a loopback TCP port nothing listens on now (probed by
# connecting), below the kernel's ephemeral range, so that no outgoing
# connection is given it before etcd binds it; none of the ports in $1
# (a space-separated list already chosen).
freeport() {
	local p lo
	lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	[[ $lo -gt 12000 ]] || lo=32768
	while :; do
		p=$((10000 + RANDOM % (lo - 10000)))
		[[ " ${1:-} " == *" $p "* ]] && continue
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
	done
}

# member I: the suffix of member I's files (etcd, etcd2, etcd3, ...).
member() { [[ $1 -eq 1 ]] && echo etcd || echo "etcd$1"; }

# start_members: $members etcd members e1..eM on fixed free ports, one
# cluster; sets etcd to their client URLs.
start_members() {
	local i f initial="" clients=() peers=() chosen=()
	for ((i = 1; i <= members; i++)); do
		clients+=("$scheme://127.0.0.1:$(freeport "${chosen[*]:-}")")
		chosen+=("${clients[i - 1]##*:}")
		peers+=("$scheme://127.0.0.1:$(freeport "${chosen[*]}")")
		chosen+=("${peers[i - 1]##*:}")
		initial+="${initial:+,}e$i=${peers[i - 1]}"
	done
	for ((i = 1; i <= members; i++)); do
		f=$state/$(member "$i")
		printf '%q ' setsid "$bin/switchyard" etcd --name "e$i" --data-dir "$f" \
			--listen-client-urls "${clients[i - 1]}" --listen-peer-urls "${peers[i - 1]}" \
			--initial-cluster "$initial" $(tlsflags coordinator) >"$f.cmd"
		echo >>"$f.cmd"
		bash -c "exec $(cat "$f.cmd") >>$(printf %q "$f.out") 2>>$(printf %q "$f.log") </dev/null" &
		echo $! >"$f.pid"
	done
	for ((i = 1; i <= members; i++)); do # each waits for a quorum
		f=$state/$(member "$i")
		await "$f.out" '^etcd: ready' 60 "$f.pid" >/dev/null
	done
	etcd=$(IFS=,; echo "${clients[*]}")
}

up() {
	if alive "$state/coordinator.pid" || alive "$state/etcd.pid"; then
		echo "local-cluster: already running (state in $state); run: $0 down --dir $state" >&2
		exit 1
	fi
	down # leftovers of a crashed run
	[[ -f $model/config.json ]] || { echo "local-cluster: $model has no config.json" >&2; exit 1; }
	model=$(cd "$model" && pwd)
	[[ -z $data_root ]] || data_root=$(cd "$data_root" && pwd)
	echo "local-cluster: building binaries into $bin" >&2
	(cd "$root" && go build -o "$bin/" ./cmd/coordinator ./cmd/worker ./cmd/switchyard)
	if [[ -n $tls ]]; then
		"$bin/switchyard" dev-ca "$state/tls" --workers "$n" --frontends 2 >/dev/null
		tlsflags client >"$state/tls-flags"
	fi

	# Workers keep bf16 weights as bf16: size the placement's memory model alike.
	elem=4
	grep -q '"bfloat16"' "$model/config.json" && elem=2

	trap 'echo "local-cluster: up failed; stopping what started" >&2; down' ERR
	if [[ $coordinators -le 1 && $members -le 1 ]]; then
		setsid "$bin/coordinator" --listen-client-urls 127.0.0.1:0 --listen-peer-urls 127.0.0.1:0 \
			--data-dir "$state/etcd" --cluster "$cluster" --name local --model "$model" --http 127.0.0.1:0 \
			--elem-bytes "$elem" --replicas "$replicas" --expect-workers "$n" $(tlsflags coordinator) \
			>"$state/coordinator.out" 2>"$state/coordinator.log" </dev/null &
		echo $! >"$state/coordinator.pid"
		line=$(await "$state/coordinator.out" '^coordinator: etcd=' 60 "$state/coordinator.pid")
	else
		scheme=http
		[[ -z $tls ]] || scheme=https
		if [[ $members -le 1 ]]; then
			setsid "$bin/switchyard" etcd --name local --data-dir "$state/etcd" \
				--listen-client-urls "$scheme://127.0.0.1:0" --listen-peer-urls "$scheme://127.0.0.1:0" $(tlsflags coordinator) \
				>"$state/etcd.out" 2>"$state/etcd.log" </dev/null &
			echo $! >"$state/etcd.pid"
			etcd=$(await "$state/etcd.out" '^etcd: ready' 60 "$state/etcd.pid" | field client)
		else
			start_members
		fi
		rbac=
		[[ -z $tls ]] || rbac=--etcd-rbac
		for ((c = 1; c <= coordinators; c++)); do
			pidf=$state/coordinator.pid out=$state/coordinator.out log=$state/coordinator.log
			[[ $c -eq 1 ]] || pidf=$state/coordinator$c.pid out=$state/coordinator$c.out log=$state/coordinator$c.log
			setsid "$bin/coordinator" --etcd "$etcd" --cluster "$cluster" --name "c$c" --model "$model" --http 127.0.0.1:0 \
				--elem-bytes "$elem" --replicas "$replicas" --expect-workers "$n" $(tlsflags coordinator) $rbac \
				>"$out" 2>"$log" </dev/null &
			echo $! >"$pidf"
			line=$(await "$out" '^coordinator: etcd=' 60 "$pidf")
			rbac= # once is enough
		done
		line=$(grep -m1 '^coordinator: etcd=' "$state/coordinator.out")
	fi
	etcd=$(echo "$line" | sed -n 's/^coordinator: etcd=\([^ ]*\).*/\1/p')
	fp=$(echo "$line" | field model)
	echo "$etcd" >"$state/endpoint"

	for ((i = 1; i <= n; i++)); do
		setsid "$bin/worker" --id "w$i" --model "$model" --etcd "$etcd" --cluster "$cluster" \
			--listen 127.0.0.1:0 --gossip 127.0.0.1:0 --metrics 127.0.0.1:0 --lease-ttl "$lease_ttl" $(tlsflags "w$i") ${data_root:+--data-root "$data_root"} \
			>"$state/w$i.out" 2>"$state/w$i.log" </dev/null &
		echo $! >"$state/w$i.pid"
	done
	for ((i = 1; i <= n; i++)); do
		await "$state/w$i.out" '^worker: id=' 60 "$state/w$i.pid" >/dev/null
	done
	placed=$("$bin/switchyard" wait --etcd "$etcd" --cluster "$cluster" --workers "$n" --timeout 60s $(tlsflags client))
	trap - ERR

	echo "local cluster \"$cluster\" is up (state and logs in $state)"
	if [[ -f $state/etcd.pid ]]; then
		for ((i = 1; i <= members; i++)); do
			f=$state/$(member "$i")
			printf '  %-12s %-28s pid %-7s log %s\n' "etcd e$i" "$(field client <"$f.out" | head -n1)" "$(cat "$f.pid")" "$f.log"
		done
		for ((c = 1; c <= coordinators; c++)); do
			pidf=$state/coordinator.pid log=$state/coordinator.log
			[[ $c -eq 1 ]] || pidf=$state/coordinator$c.pid log=$state/coordinator$c.log
			printf '  %-12s %-28s pid %-7s log %s\n' "c$c" "coordinator" "$(cat "$pidf")" "$log"
		done
	else
		printf '  %-12s %-28s pid %-7s log %s\n' etcd "$etcd" "$(cat "$state/coordinator.pid")" "$state/coordinator.log"
	fi
	for ((i = 1; i <= n; i++)); do
		line=$(grep -m1 '^worker: id=' "$state/w$i.out")
		printf '  %-12s grpc=%-22s gossip=%-22s pid %-7s log %s\n' "w$i" "$(echo "$line" | field grpc)" \
			"$(echo "$line" | field gossip)" "$(cat "$state/w$i.pid")" "$state/w$i.log"
	done
	echo "  model        $fp ($model)"
	echo "  ${placed}"
	[[ -z $tls ]] || echo "  tls          mutual TLS everywhere; certificates in $state/tls"
	echo "inspect: $bin/switchyard status --etcd $etcd --cluster $cluster $(tlsflags client)  (or: $0 status --dir $state)"
	echo "stop:    $0 down --dir $state"
}

status() {
	[[ -f $state/endpoint ]] && { alive "$state/coordinator.pid" || alive "$state/etcd.pid"; } || { echo "local-cluster: not running (state $state)" >&2; exit 1; }
	local flags=
	[[ ! -f $state/tls-flags ]] || flags=$(cat "$state/tls-flags")
	"$bin/switchyard" status --etcd "$(cat "$state/endpoint")" --cluster "$cluster" $json $flags
}

case $cmd in
up) up ;;
down) down; echo "local-cluster: down (state $state)" ;;
status) status ;;
*) usage ;;
esac
