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
# 2026-12-06 one of the five runs made was 30% off at one client
# (docs/scale/serving.md, "Validation").
#
#   scripts/simulate-validate-serve.sh [OUT]    default OUT: a temporary file
#   ATTEMPTS=2 scripts/simulate-validate-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-$(mktemp --suffix=.serve.txt)}")
attempts=${ATTEMPTS:-1}
for a in $(seq 1 "$attempts"); do
	BENCH_SERVE_OUT=$out BENCH_SERVE_WINDOWS=2 BENCH_SERVE_NETNS=4hosts1thread \
		scripts/bench-serve.sh --only in-process,netns >/dev/null
	rc=0
	res=$(SWITCHYARD_SERVE_RUN=$out go test -count=1 -run '^TestPredictLiveServe$' -v ./pkg/simulate 2>&1) || rc=$?
	echo "$res" | grep -E '^\s+serve_test|^(---|ok|FAIL|PASS)' | sed 's/^ *serve_test.go:[0-9]*: /  /' || true
	echo "simulate-validate-serve: attempt $a of $attempts: the run is in $out"
	if ((rc == 0)) && ! grep -q -- '--- SKIP' <<<"$res"; then
		echo "simulate-validate-serve: PASS (judged, attempt $a)"
		exit 0
	fi
	if ((rc == 0)); then
		echo "simulate-validate-serve: attempt $a not judged (a failed request)"
	else
		echo "simulate-validate-serve: attempt $a FAILED"
	fi
done
echo "simulate-validate-serve: FAIL: no judged run within 15% in $attempts attempt(s)"
exit 1
