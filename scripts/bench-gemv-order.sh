#!/usr/bin/env bash
# bench-gemv-order.sh: the two orders in which the single-token kernels read
# a weight matrix (tensor.GemvOrderEnv = SWITCHYARD_GEMV_ORDER), side by
# side on this machine:
#   interleaved  four rows at a time, each load of x shared by the four
#                (four memory streams a row apart);
#   sequential   one row after the other, four cache lines a step (one
#                memory stream).
# Measured, the orders alternating in every round, ROUNDS (3) rounds:
#   stream  BenchmarkGemvStream: GemvTBF16 over a 1 GiB bf16 matrix (far
#           beyond the caches, as in decode), GB/s of weights, 1 and 2
#           threads;
#   decode  bench/decode -brief: tokens/s of its generated Mixtral-style
#           model (the one scripts/bench-decode.sh and bench-peers.sh use,
#           in ${TMPDIR:-/tmp}/switchyard-bench-decode; generated on first
#           use) with the routed experts in each of FORMATS (bf16,int8; q4
#           too with FORMATS=bf16,int8,q4), 1 and 2 threads, one process per
#           measurement.
# Results: bench/results/gemv-order.txt (OUT) with the CPU model, the
# order this CPU gets by default, and the load average. ~8 minutes.
#
#   scripts/bench-gemv-order.sh
#   ROUNDS=5 THREADS="1 2" scripts/bench-gemv-order.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH=$PATH:/usr/local/go/bin
rounds=${ROUNDS:-3}
threads=${THREADS:-"1 2"}
formats=${FORMATS:-bf16,int8}
out=${OUT:-bench/results/gemv-order.txt}
work=$(mktemp -d /tmp/switchyard-gemv-order.XXXXXX)
trap 'rm -rf "$work"' EXIT
go build -o "$work/decode" ./bench/decode
go test -c -o "$work/tensor.test" ./pkg/tensor
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
def=$("$work/tensor.test" -test.run '^TestGemvOrderName$' -test.v 2>/dev/null | sed -n 's/.*GemvOrder() = \([a-z]*\).*/\1/p' | head -1)
tmp=$(mktemp)
{
	echo "# scripts/bench-gemv-order.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "# cpu:      $cpu; flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512f|avx512_bf16|avx512_vnni|amx_tile|amx_bf16)$' | xargs)"
	echo "# go:       $(go version)"
	echo "# commit:   $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet 2>/dev/null || echo '+dirty')"
	echo "# default order on this CPU: ${def:-unknown} (SWITCHYARD_GEMV_ORDER unset)"
	echo "# command:  ROUNDS=$rounds THREADS=\"$threads\" FORMATS=$formats scripts/bench-gemv-order.sh"
	echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg) (before)"
	echo "# raw:"
} >"$tmp"
for ((r = 1; r <= rounds; r++)); do
	orders="interleaved sequential"
	((r % 2 == 0)) && orders="sequential interleaved"
	for th in $threads; do
		for o in $orders; do
			# The benchmark's sub-benchmark of the other order is skipped.
			gbs=$(SWITCHYARD_GEMV_ORDER=$o "$work/tensor.test" -test.run '^$' -test.bench "^BenchmarkGemvStream/order=$o\$" -test.cpu "$th" -test.benchtime 5x 2>/dev/null |
				awk '/MB\/s/ {for (i = 1; i <= NF; i++) if ($(i+1) == "MB/s") printf "%.2f", $i / 1000}')
			echo "  $(date -u +%H:%M:%SZ) load=$(cut -d' ' -f1 /proc/loadavg) round=$r threads=$th order=$o kind=stream gbs=$gbs" | tee -a "$tmp"
			SWITCHYARD_GEMV_ORDER=$o "$work/decode" -brief -formats "$formats" -rounds 1 -threads "$th" 2>/dev/null |
				sed -n 's/^switchyard: threads=[0-9]* format=\([a-z0-9]*\) round=[0-9]* decode_tokens=[0-9]* decode_tok_s=\([0-9.]*\).*/\1 \2/p' |
				while read -r f tps; do
					echo "  $(date -u +%H:%M:%SZ) load=$(cut -d' ' -f1 /proc/loadavg) round=$r threads=$th order=$o kind=decode format=$f tok_s=$tps" | tee -a "$tmp"
				done
		done
	done
done
echo "# load avg: $(cut -d' ' -f1-3 /proc/loadavg) (after)" >>"$tmp"
# The table: medians over the rounds, and the median of the per-round
# ratios sequential / interleaved.
awk '
/ kind=/ {
	for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
	what = v["kind"] == "stream" ? "GemvTBF16 over 1 GiB, GB/s of weights" : "decode tok/s, " v["format"] " routed experts"
	val = v["kind"] == "stream" ? v["gbs"] : v["tok_s"]
	key = what SUBSEP v["threads"]
	if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
	x[key, v["order"], v["round"]] = val
	if (v["round"] > nr) nr = v["round"]
	delete v
}
function median(a, n,   i, j, t) {
	for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j] < a[j-1]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
	return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2
}
END {
	print ""
	print "| measured | threads | interleaved | sequential | sequential / interleaved |"
	print "|---|---:|---:|---:|---:|"
	for (k = 1; k <= nk; k++) {
		split(keys[k], p, SUBSEP)
		n = 0
		for (r = 1; r <= nr; r++) if ((keys[k], "interleaved", r) in x && (keys[k], "sequential", r) in x) {
			n++; a[n] = x[keys[k], "interleaved", r]; b[n] = x[keys[k], "sequential", r]; q[n] = b[n] / a[n]
		}
		if (n == 0) continue
		printf "| %s | %s | %.2f | %.2f | **%.2f** |\n", p[1], p[2], median(a, n), median(b, n), median(q, n)
		delete a; delete b; delete q
	}
}' "$tmp" >>"$tmp.table"
cat "$tmp.table" >>"$tmp"
rm -f "$tmp.table"
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
chmod 644 "$out"
echo "bench-gemv-order: wrote $out"
tail -8 "$out"
