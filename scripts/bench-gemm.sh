#!/usr/bin/env bash
# bench-gemm.sh: Switchyard's tensor.Gemm/GemvT against OpenBLAS
# (cblas_sgemm / cblas_sgemv), side by side, on the shapes Switchyard runs:
# square 1024^3 (NN, NT), one expert's FFN matmul for 64 tokens with
# Hugging Face weights [N=2816, K=1024] (f32 and bf16 B), and the same layer
# at decode time (m = 1).
#
# Both implementations run in one test binary (bench/openblas, build tag
# `openblas`), each shape as an ours/OpenBLAS pair back to back, the order
# of the pair alternating between rounds, and 1- and 2-thread runs
# alternating too, so load from other processes hits both alike. Each cell
# of the table is the median over ROUNDS runs of BENCHTIME each.
#
# A second table pairs the two call by call (BenchmarkPaired, below), which
# resolves a few percent on a shared VM where the rounds' medians move by 5%.
#
# Usage: scripts/bench-gemm.sh            (about 4 minutes)
#   ROUNDS=5 BENCHTIME=1s PAIRTIME=10s THREADS="1 2" OUT=bench/results/gemm.txt
#
# Installs libopenblas-dev with apt-get if it is missing (needs root or
# sudo). On CPUs with AVX-512, OPENBLAS_CORETYPE=SkylakeX is forced: OpenBLAS
# 0.3.21 does not recognise Emerald Rapids or Zen 5 and otherwise runs a
# generic kernel at ~13 GFLOP/s. Without AVX-512 (SkylakeX's kernels would
# fault) OpenBLAS picks its own core (Zen, Haswell), printed in the header.
# A caller's OPENBLAS_CORETYPE wins either way.
set -euo pipefail

ROUNDS=${ROUNDS:-5}
BENCHTIME=${BENCHTIME:-1s}
PAIRTIME=${PAIRTIME:-10s} # per shape and thread count; 0 skips the paired table
THREADS=${THREADS:-"1 2"}
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$root/bench/results/gemm.txt}
cd "$root"

if ! dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q 'install ok installed'; then
	echo "installing libopenblas-dev..." >&2
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
	export DEBIAN_FRONTEND=noninteractive
	if ! $sudo apt-get install -y --no-install-recommends libopenblas-dev >&2; then
		$sudo apt-get update >&2
		$sudo apt-get install -y --no-install-recommends libopenblas-dev >&2
	fi
fi
coretype_warning=
if grep -qw avx512f /proc/cpuinfo; then
	if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
		export OPENBLAS_CORETYPE=SkylakeX
	elif [ "$OPENBLAS_CORETYPE" != SkylakeX ] && [ "$OPENBLAS_CORETYPE" != Cooperlake ] && [ "$OPENBLAS_CORETYPE" != SapphireRapids ]; then
		# Some VMs' environments preset it (one Zen 5 VM had Haswell):
		# OpenBLAS then runs AVX2 kernels on an AVX-512 CPU, at about half
		# its speed, and the ratios flatter Switchyard.
		coretype_warning="# WARNING: OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE was preset on this AVX-512 CPU: OpenBLAS ran without its AVX-512 kernels; run with OPENBLAS_CORETYPE=SkylakeX to compare against them"
		echo "bench-gemm: ${coretype_warning#\# }" >&2
	fi
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -tags openblas -o "$tmp/compare.test" ./bench/openblas
"$tmp/compare.test" -test.run '^TestAgree$' >/dev/null # same results, or stop

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
raw="$tmp/raw.txt" # lines: shape threads impl GFLOP/s
: >"$raw"
config=""
kernels=""
for r in $(seq 1 "$ROUNDS"); do
	for t in $THREADS; do
		first=$(((r + t) % 2))
		echo "round $r/$ROUNDS, $t thread(s)..." >&2
		log=$(GOMAXPROCS=$t OPENBLAS_NUM_THREADS=$t GEMM_BENCH_OPENBLAS_FIRST=$first \
			"$tmp/compare.test" -test.run '^$' -test.bench '^BenchmarkCompare$' \
			-test.benchtime "$BENCHTIME" -test.count 1 -test.v)
		[ -n "$config" ] || config=$(echo "$log" | sed -n 's/.*OpenBLAS: //p' | head -1)
		[ -n "$kernels" ] || kernels=$(echo "$log" | sed -n 's/.*Switchyard kernels: //p' | head -1)
		echo "$log" | awk -v t="$t" '
			/^BenchmarkCompare\// && /GFLOP\/s/ {
				split($1, p, "/"); impl = p[3]; sub(/-[0-9]+$/, "", impl)
				for (i = 2; i <= NF; i++) if ($i == "GFLOP/s") v = $(i - 1)
				print p[2], t, impl, v
			}' >>"$raw"
	done
done
# Paired: call by call, alternating (BenchmarkPaired), the GEMM shapes
# only. OpenBLAS's idle threads spin for a while after each call, on the
# core our next call needs (at 2 threads that halved our side), so its
# thread timeout is set to the minimum here: its threads sleep between
# calls as ours do. That costs it a wake-up per call, which matters for the
# sub-millisecond GEMVs, left out of this table for that reason.
paired="$tmp/paired.txt" # lines: shape threads ours openblas ratio pairs
: >"$paired"
if [ "$PAIRTIME" != 0 ]; then
	for t in $THREADS; do
		echo "paired calls, $t thread(s)..." >&2
		GOMAXPROCS=$t OPENBLAS_NUM_THREADS=$t OPENBLAS_THREAD_TIMEOUT=4 \
			"$tmp/compare.test" -test.run '^$' -test.bench '^BenchmarkPaired$/^(1024x|64x)' \
			-test.benchtime "$PAIRTIME" -test.count 1 |
			awk -v t="$t" '/^BenchmarkPaired\// {
				split($1, p, "/"); sub(/-[0-9]+$/, "", p[2])
				for (i = 2; i <= NF; i++) v[$i] = $(i - 1)
				printf "%s %s %s %s %s %s\n", p[2], t, v["ours-GFLOP/s"], v["openblas-GFLOP/s"], v["ratio"], v["pairs"]
			}' >>"$paired"
	done
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# Median per (shape, threads, impl), shapes in benchmark order.
table=$(awk '
	{ key = $1 SUBSEP $2 SUBSEP $3; n[key]++; v[key, n[key]] = $4
	  if (!($1 in seen)) { seen[$1] = ++ns; shapes[ns] = $1 }
	  if (!($2 in tseen)) { tseen[$2] = ++nt; threads[nt] = $2 } }
	function median(key,    m, i, j, x, a) {
		m = n[key]
		for (i = 1; i <= m; i++) a[i] = v[key, i]
		for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
	}
	END {
		printf "%-24s %7s %14s %18s %7s\n", "shape", "threads", "ours GFLOP/s", "OpenBLAS GFLOP/s", "ratio"
		for (s = 1; s <= ns; s++) for (ti = 1; ti <= nt; ti++) {
			o = median(shapes[s] SUBSEP threads[ti] SUBSEP "ours")
			b = median(shapes[s] SUBSEP threads[ti] SUBSEP "openblas")
			printf "%-24s %7s %14.1f %18.1f %7.2f\n", shapes[s], threads[ti], o, b, (b > 0 ? o / b : 0)
		}
	}' "$raw")

cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
{
	echo "# Switchyard Gemm vs OpenBLAS sgemm/sgemv ($(date -u '+%Y-%m-%d %H:%M UTC'))"
	echo "# cpu:      $cpu ($(nproc) vCPU)"
	echo "# go:       $(go version)"
	echo "# openblas: ${config:-unknown} (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-auto})"
	if [ -n "$coretype_warning" ]; then echo "$coretype_warning"; fi
	echo "# ours:     ${kernels:-unknown}"
	echo "# command:  ROUNDS=$ROUNDS BENCHTIME=$BENCHTIME PAIRTIME=$PAIRTIME THREADS=\"$THREADS\" scripts/bench-gemm.sh"
	echo "# load avg: $load_before (before), $load_after (after)"
	echo "# cells: median GFLOP/s (2*m*n*k per call) over $ROUNDS rounds; *_bf16 rows read bf16 B"
	echo "# on our side and f32 B on OpenBLAS's (it has no f32 x bf16 routine); m = 1 rows"
	echo "# are GemvT/GemvTBF16 vs cblas_sgemv."
	echo
	echo "$table"
	if [ -s "$paired" ]; then
		echo
		echo "# paired: one call of each side in turn, alternating which goes first, for"
		echo "# PAIRTIME=$PAIRTIME a shape (BenchmarkPaired; OPENBLAS_THREAD_TIMEOUT=4 so OpenBLAS's"
		echo "# idle threads do not spin on our cores); GFLOP/s are the medians of each side's"
		echo "# calls, ratio the median of the per-pair ratios (ours/OpenBLAS)."
		echo
		awk 'BEGIN { printf "%-24s %7s %14s %18s %7s %6s\n", "shape (paired)", "threads", "ours GFLOP/s", "OpenBLAS GFLOP/s", "ratio", "pairs" }
			{ printf "%-24s %7s %14.1f %18.1f %7.3f %6d\n", $1, $2, $3, $4, $5, $6 }' "$paired"
	fi
} | tee "$OUT"
