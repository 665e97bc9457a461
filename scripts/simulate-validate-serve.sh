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
# on the committed runs; the models wrong on purpose must still miss). A
# run with a failed request in a judged row is reported, not judged.
# Needs root. About 9 minutes an attempt; the run is left in OUT (and its
# table in OUT's .md).
#
# ATTEMPTS (default 1) fresh runs are made until one is judged and passes;
# the script fails when none did. It is not a CI stage: on the AVX2 VM of
# 2026-12-06 one of the seven runs made was 30% off at one client
# (docs/scale/serving.md, "Validation").
#
#   scripts/simulate-validate-serve.sh [OUT]    default OUT: a temporary file
#   ATTEMPTS=2 scripts/simulate-validate-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-$(mktemp --suffix=.serve.txt)}")
. scripts/lib/judge.sh
run() {
	BENCH_SERVE_OUT=$out BENCH_SERVE_WINDOWS=2 BENCH_SERVE_NETNS=4hosts1thread \
		scripts/bench-serve.sh --only in-process,netns >/dev/null
}
judge_attempts simulate-validate-serve "${ATTEMPTS:-1}" run TestPredictLiveServe SWITCHYARD_SERVE_RUN "$out" "a failed request"
