#!/usr/bin/env bash
# bench-collectives-ab.sh compares the collectives of two commits side by
# side: it builds bench/collectives at OLD (a git worktree) and from the
# working tree, then runs scripts/bench-collectives.sh with each binary in
# turn, ROUNDS times (interleaved, so both see the same machine; odd
# rounds run the old binary first, even rounds the new one), and
# prints one line per row and round: operation, n, size, the two times
# (us) and new/old. Needs root (network namespaces); each round of the
# default configuration takes about 15 s per binary.
#
#   scripts/bench-collectives-ab.sh OLD [OUT]      e.g. OLD=ffb6d56; OUT default: a temporary file
#   ROUNDS=3 BENCH_CONFIGS="4:1gbit:4 8:500mbit:8" BENCH_ARGS="-ops allreduce -sizes 256K,1M,4M" (defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: scripts/bench-collectives-ab.sh OLD [OUT]}
out=$(realpath -m "${2:-$(mktemp --suffix=.collectives-ab.txt)}")
rounds=${ROUNDS:-3}
export BENCH_CONFIGS=${BENCH_CONFIGS:-"4:1gbit:4 8:500mbit:8"}
export BENCH_ARGS=${BENCH_ARGS:-"-ops allreduce -sizes 256K,1M,4M -probe 1s"}
export BENCH_WAIT=${BENCH_WAIT:-60}
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/old" 2>/dev/null || true; rm -rf "$tmp"' EXIT
git worktree add --detach -q "$tmp/old" "$old"
(cd "$tmp/old" && go build -o "$tmp/bench-old" ./bench/collectives)
go build -o "$tmp/bench-new" ./bench/collectives
oldrev=$(git rev-parse --short "$old")
newrev="$(git rev-parse --short HEAD)$(git diff --quiet -- pkg bench || echo +dirty)"
{
	echo "# scripts/bench-collectives-ab.sh $old: $oldrev (old) against $newrev (new), $rounds interleaved rounds"
	echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); configs: $BENCH_CONFIGS; args: $BENCH_ARGS"
	echo "# time = slowest rank's mean per iteration, us; busbw/C = bus bandwidth over the run's own raw-TCP rate"
	printf '%-6s %-14s %3s %6s %12s %12s %8s %10s %10s\n' round op n size old_us new_us new/old old_bw/C new_bw/C
} >"$out"
for ((r = 1; r <= rounds; r++)); do
	order="old new"
	((r % 2)) || order="new old"
	for v in $order; do
		BENCH_BIN=$tmp/bench-$v scripts/bench-collectives.sh "$tmp/$v.txt" >/dev/null 2>&1
	done
	join -j1 \
		<(awk '/^allreduce/ {print $1"/"$2"/"$3, $7, $10}' "$tmp/old.txt" | sort) \
		<(awk '/^allreduce/ {print $1"/"$2"/"$3, $7, $10}' "$tmp/new.txt" | sort) |
		awk '{split($1, k, "/"); s = k[3]; m = s ~ /K$/ ? 1024 : s ~ /M$/ ? 1048576 : 1; sub(/[KM]$/, "", s); print k[2], s * m, $0}' |
		sort -k1,1n -k2,2n | cut -d' ' -f3- |
		awk -v r="$r" '{split($1, k, "/"); printf "%-6s %-14s %3s %6s %12.1f %12.1f %8.3f %10s %10s\n", r, k[1], k[2], k[3], $2, $4, $4/$2, $3, $5}' >>"$out"
done
cat "$out"
