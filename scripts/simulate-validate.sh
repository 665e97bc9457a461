#!/usr/bin/env bash
# simulate-validate.sh checks the simulator (pkg/simulate) against the
# emulated cluster, now: it runs the collectives benchmark on network
# namespaces (scripts/bench-collectives.sh: n = 2 and 4 on 1 Gbit/s hosts,
# n = 8 on 500 Mbit/s), which measures each run's own link (raw-TCP rate,
# round trips) and the machine's CPU per byte and per message with every
# rank busy, then predicts every all-reduce from that calibration and the
# n = 2 run's smallest all-reduce and largest ring (the per-message cost
# and the gRPC ring's own CPU per byte; CollectivesRun.Costs) and requires the
# validated rows within 15% (TestPredictLiveCollectives; see
# pkg/simulate/collective_test.go for which rows and why; docs/scale says
# where it passes and where it does not yet). A run that
# started on a busy machine (load >= 3 after the benchmark's wait of up to
# BENCH_WAIT seconds, default 120) is reported, not judged: the emulated
# hosts share this machine's cores. Needs root. About 1 minute; the run's
# table is left in OUT.
#
# ATTEMPTS (default 1) fresh runs are made until one is judged and passes;
# the script fails when none did (every run judged and outside 15%, or
# never a quiet machine; JUDGE_UNJUDGED_OK=1: only when a judged run
# missed). scripts/test.sh runs it with ATTEMPTS=3 and
# JUDGE_UNJUDGED_OK=1: a single run's n = 2 4 KiB row missed 15% in 3 of
# the 19 runs kept on 2026-12-06 on the AMD VM, both ways (a round trip
# of tens of microseconds on shared cores; docs/scale/README.md).
#
#   scripts/simulate-validate.sh [OUT]     default OUT: a temporary file
#   ATTEMPTS=3 scripts/simulate-validate.sh   # up to 3 fresh runs
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-$(mktemp --suffix=.collectives.txt)}")
. scripts/lib/judge.sh
run() {
	BENCH_CONFIGS=${BENCH_CONFIGS:-"4:1gbit:2,4 8:500mbit:8"} \
		BENCH_ARGS=${BENCH_ARGS:-"-ops allreduce -sizes 256,4K,16K,256K,1M,4M"} \
		BENCH_WAIT=${BENCH_WAIT:-120} \
		scripts/bench-collectives.sh "$out" >/dev/null
}
judge_attempts simulate-validate "${ATTEMPTS:-1}" run TestPredictLiveCollectives SWITCHYARD_COLLECTIVES_RUN "$out" "a busy machine"
