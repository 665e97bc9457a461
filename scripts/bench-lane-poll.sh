#!/usr/bin/env bash
# The expert exchange's own cost between two emulated hosts, with and
# without polling lanes (SWITCHYARD_LANE_POLL), next to the raw-TCP round
# trip of the same link and message size measured the same two ways.
#
# Two network namespaces h0 and h1 (scripts/netns/cluster.sh, tc tbf at
# RATE, default 10gbit); every process pinned to a core of its own
# (taskset: the caller on CPU 0, the server on CPU 1) with GOMAXPROCS=1,
# as on real hosts. Per round, interleaved, for poll 0 (block) and 20ms:
#   tcpping  raw TCP, 16 KiB each way (one MoE layer's 4 rows of width
#            1024 in f32), back to back; and again with the server running
#            the same 4 expert GEMMs as below before each echo, their time
#            subtracted (the raw round trip when caches and TLBs are as an
#            owner's GEMMs leave them);
#   exchange bench/serve exchange: a real ExpertServer on h1 and a real
#            RemoteExecutor on h0, 1 token x top-4 of 32 experts, width
#            1024, with tiny experts (intermediate 16: the exchange alone)
#            and with the model's (intermediate 2816: 4 GEMMs streaming
#            138 MB of weights between request and answer, as a decode
#            step's owners do); "own" = round trip - the owner's reported
#            part.
# ROUNDS (3) rounds; results to bench/results/lane-poll.txt with the CPU
# and date. Needs root. ~6 minutes.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH=$PATH:/usr/local/go/bin
[ "$(id -u)" = 0 ] || { echo "bench-lane-poll: needs root (network namespaces)" >&2; exit 1; }
export SY_CLUSTER=sylp SY_SUBNET=10.82.0
net=scripts/netns/cluster.sh
rate=${RATE:-10gbit}
rounds=${ROUNDS:-3}
out=bench/results/lane-poll.txt
work=$(mktemp -d /tmp/switchyard-lane-poll.XXXXXX)
srv=""
cleanup() {
	[ -n "$srv" ] && kill -TERM "$srv" 2>/dev/null && wait "$srv" 2>/dev/null || true
	srv=""
}
trap 'cleanup; $net down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
go build -o "$work/bs" ./bench/serve
$net up 2 "$rate" >/dev/null
ns() { local h=$1; shift; nsenter --net="/var/run/netns/$SY_CLUSTER-$h" -- "$@"; }
ip1=$($net ip h1)
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"

# server POLL ARGS...: start a server on h1 (CPU 1).
server() {
	local poll=$1
	shift
	: >"$work/srv.log"
	# nsenter, taskset and env exec: $! is the server's pid.
	nsenter --net="/var/run/netns/$SY_CLUSTER-h1" -- taskset -c 1 env GOMAXPROCS=1 SWITCHYARD_SPIN=0 SWITCHYARD_LANE_POLL="$poll" "$work/bs" "$@" >"$work/srv.log" 2>&1 &
	srv=$!
	local deadline=$((SECONDS + 120))
	until grep -q 'serving\|listening' "$work/srv.log"; do
		kill -0 "$srv" 2>/dev/null || { cat "$work/srv.log"; exit 1; }
		[ $SECONDS -gt $deadline ] && { echo "bench-lane-poll: server not up"; exit 1; }
		sleep 0.2
	done
}
client() {
	local poll=$1
	shift
	ns h0 taskset -c 0 env GOMAXPROCS=1 SWITCHYARD_SPIN=0 SWITCHYARD_LANE_POLL="$poll" "$work/bs" "$@"
}

{
	echo "# scripts/bench-lane-poll.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo "# cpu: $cpu; $(go version); link: 2 emulated hosts, tc tbf $rate; caller on CPU 0, owner on CPU 1, GOMAXPROCS=1 each"
	for r in $(seq "$rounds"); do
		echo "## round $r, load average $(cut -d' ' -f1-3 /proc/loadavg)"
		for poll in 0 20ms; do
			server "$poll" tcpping -listen "$ip1:7999" -poll "$poll"
			client "$poll" tcpping -addr "$ip1:7999" -n 2000 -size 16384 -poll "$poll" | grep -v '^rtt_ms'
			cleanup
			server "$poll" tcpping -listen "$ip1:7999" -poll "$poll" -size 16384 -gemm-inter 2816
			client "$poll" tcpping -addr "$ip1:7999" -n 400 -size 16384 -poll "$poll" -gemm-inter 2816 | grep -v '^rtt_ms'
			cleanup
			for inter in 16 2816; do
				server "$poll" exchange -listen "$ip1:7998" -inter "$inter"
				n=3000
				[ "$inter" -gt 16 ] && n=400
				client "$poll" exchange -addr "$ip1:7998" -n "$n" | sed "s/^exchange:/exchange (expert intermediate $inter):/"
				cleanup
			done
		done
	done
} | tee "$work/out.txt"
cp "$work/out.txt" "$out"
echo "bench-lane-poll: results in $out"
