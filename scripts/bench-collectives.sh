#!/usr/bin/env bash
# Benchmarks the collectives (all-reduce, all-to-all) in emulated clusters
# (scripts/netns/cluster.sh) and writes bench/results/collectives.txt:
#
#   4 hosts x 1 Gbit/s:    n = 2 (hosts h0, h1) and n = 4
#   8 hosts x 500 Mbit/s:  n = 8
#
# Each run measures its own raw-TCP ceiling C first (bench/collectives).
# Needs root. Takes about 7 minutes; the cluster is removed on exit.
#
#   scripts/bench-collectives.sh [OUT]       default OUT: bench/results/collectives.txt
#   BENCH_ARGS="-sizes 4K,1M -target 500ms" scripts/bench-collectives.sh /tmp/quick.txt
#   BENCH_CONFIGS="4:1gbit:4" ...            cluster configs as HOSTS:RATE:N[,N...] separated by spaces
#   BENCH_BIN=/tmp/old/bench-collectives ... run that binary instead of building bench/collectives
#                                            (scripts/bench-collectives-ab.sh compares two commits)
#
# The machine is shared: before each run the script waits (up to
# BENCH_WAIT seconds, default 300) for the 1-minute load average to drop
# below BENCH_MAX_LOAD (default 3), and records the load it got.
#
# GOMAXPROCS defaults to 1 per host process: 4-8 emulated hosts share this
# machine's 2 cores, and with GOMAXPROCS=2 each Go runtime spins idle
# threads and wakes goroutines across threads, which measured 20-30% slower
# on small operations here (no difference at large sizes). Override with
# GOMAXPROCS=N in the environment.
set -euo pipefail
export GOMAXPROCS=${GOMAXPROCS:-1}
cd "$(dirname "$0")/.."
out=${1:-bench/results/collectives.txt}
configs=${BENCH_CONFIGS:-"4:1gbit:2,4 8:500mbit:8"}
args=${BENCH_ARGS:-}
port=7070
max_load=${BENCH_MAX_LOAD:-3}
max_wait=${BENCH_WAIT:-300}

# wait_quiet waits until the 1-minute load average is below max_load or
# max_wait seconds passed.
wait_quiet() {
	local waited=0
	while awk -v m="$max_load" '{exit !($1 >= m)}' /proc/loadavg && ((waited < max_wait)); do
		sleep 10
		waited=$((waited + 10))
	done
	((waited > 0)) && echo "bench: waited ${waited}s for load < $max_load (now $(cut -d' ' -f1 /proc/loadavg))" >&2
	return 0
}

net=scripts/netns/cluster.sh
trap '$net down' EXIT
mkdir -p bin "$(dirname "$out")"
bin=${BENCH_BIN:-bin/bench-collectives}
[[ -n "${BENCH_BIN:-}" ]] || go build -o bin/bench-collectives ./bench/collectives

tmp=$(mktemp)
trap '$net down; rm -f "$tmp"' EXIT
{
	echo "# scripts/bench-collectives.sh $*"
	echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet 2>/dev/null || echo '+dirty')"
	echo "# configs: $configs  extra args: ${args:-none}  GOMAXPROCS=$GOMAXPROCS per host process${BENCH_BIN:+  binary: $BENCH_BIN}"
	echo "# kernel $(uname -r); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# hosts: network namespaces on a bridge, tc tbf on both directions of each 1500-MTU veth (scripts/netns/cluster.sh)"
} >"$tmp"

rate_bits() {
	local r=${1,,}
	case "$r" in
	*gbit) echo "${r%gbit}e9" ;;
	*mbit) echo "${r%mbit}e6" ;;
	*) echo "$r" ;;
	esac
}

for cfg in $configs; do
	IFS=: read -r hosts rate ns <<<"$cfg"
	$net up "$hosts" "$rate" >&2
	for n in ${ns//,/ }; do
		peers=""
		for ((i = 0; i < n; i++)); do
			peers+="${peers:+,}$($net ip "h$i"):$port"
		done
		wait_quiet
		echo >>"$tmp"
		echo "## $hosts hosts x $rate, n=$n, load average $(cut -d' ' -f1-3 /proc/loadavg)" >>"$tmp"
		pids=()
		for ((i = 1; i < n; i++)); do
			$net run "h$i" "$bin" -rank "$i" -peers "$peers" -rate "$(rate_bits "$rate")" $args >/dev/null &
			pids+=($!)
		done
		$net run h0 "$bin" -rank 0 -peers "$peers" -label "${hosts}x$rate" -rate "$(rate_bits "$rate")" $args | tee -a "$tmp"
		for p in "${pids[@]}"; do wait "$p"; done
	done
	$net down
done
echo >>"$tmp"
echo "# done $(date -u +%Y-%m-%dT%H:%M:%SZ); load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$tmp"
chmod 644 "$tmp"
mv "$tmp" "$out"
echo "wrote $out" >&2
