#!/usr/bin/env bash
# simulate-validate-serve.sh checks the serving model (pkg/simulate) against
# the emulated cluster, now: it runs the serving benchmark on network
# namespaces with every process one Go thread (scripts/bench-serve.sh
# --only in-process,netns with BENCH_SERVE_NETNS=4hosts1thread and two
# 20-second windows a row: a front end on h0 and 4 worker hosts over 1 and
# 10 Gbit/s tbf links, 1 and 16 clients; before each configuration
# `simulate calibrate --quick --peer` measures the link, the exchange's
# core time across it and its idle round trip), then predicts every
# 4-host row from that run's own calibration and requires tokens/s within
# 15% on each (TestPredictLiveServe, the check TestPredictServe4Hosts makes
# on the committed runs; the models wrong on purpose must still miss).
# Before its first measurement the run waits up to BENCH_WAIT seconds
# (default 120) for the 1-minute load average to drop below 3; a run
# that started at 3 or more, or with a failed request in a judged row, is
# reported, not judged. Needs root. About 13 minutes an attempt; the run
# is left in OUT (and its table in OUT's .md).
#
# ATTEMPTS (default 1) fresh runs are made until one is judged and passes;
# the script fails when none did (with JUDGE_UNJUDGED_OK=1 it passes when
# none was judged: scripts/lib/judge.sh). The run also measures the model
# in process on one thread (BENCH_SERVE_INPROCESS_1THREAD=1: the one-thread
# front end's attention) and, in each configuration's calibration, four
# one-thread processes sharing the cores (--share-procs 4). It is a stage
# of scripts/test.sh (ATTEMPTS=3) since 2026-12-07; before the sharing was
# calibrated it passed 5 of 7 runs on their own on a Zen 5 VM and failed 3
# of 3 attempts as a stage (docs/scale/serving.md, "Validation").
#
#   scripts/simulate-validate-serve.sh [OUT]    default OUT: a temporary file
#   ATTEMPTS=2 scripts/simulate-validate-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-$(mktemp --suffix=.serve.txt)}")
. scripts/lib/judge.sh
run() {
	BENCH_SERVE_OUT=$out BENCH_SERVE_INPROCESS_1THREAD=1 BENCH_SERVE_WINDOWS=2 BENCH_SERVE_NETNS=4hosts1thread BENCH_SERVE_QUIET_WAIT=${BENCH_WAIT:-120} \
		scripts/bench-serve.sh --only in-process,netns >/dev/null
}
judge_attempts simulate-validate-serve "${ATTEMPTS:-1}" run TestPredictLiveServe SWITCHYARD_SERVE_RUN "$out" "a failed request, or a start on a busy machine"
