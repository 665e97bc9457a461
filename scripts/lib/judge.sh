# judge.sh: the retry loop of the live simulator checks
# (scripts/simulate-validate.sh, scripts/simulate-validate-serve.sh) and
# the quiet wait before their measurements (scripts/bench-serve.sh,
# scripts/simulate-validate-train.sh). Source it, then:
#
#   wait_quiet NAME SECONDS STEP
#
# waits, STEP seconds at a time, up to SECONDS for the 1-minute load
# average to drop below busy_load (3: the live checks do not judge a run
# that started at it), and says on stderr how long it waited, if at all.
#
# or:
#
#   judge_attempts NAME ATTEMPTS RUN TEST ENV OUT WHY
#
# makes up to ATTEMPTS fresh runs: each calls the shell function RUN
# (which writes the run to OUT), then `ENV=OUT go test -run '^TEST$'
# ./pkg/simulate`, and prints the test's lines. It exits 0 at the first
# run that is judged (the test ran, not skipped) and passes, 1 when none
# did. WHY says why a skipped run was not judged. With
# JUDGE_UNJUDGED_OK=1 (scripts/test.sh sets it) it also exits 0 when no
# run was judged at all, saying so: a busy CI machine measures its load,
# not the model; a run that was judged and missed still fails, unless
# JUDGE_REPORT_ONLY=1: then a miss is printed as one ("MISSED, NOT
# GATING") and the exit is 0, where every failed attempt failed on the
# 15% band alone (a test that failed otherwise, unable to read the run,
# say, still fails). scripts/test.sh sets it for a check whose
# target an open issue says the model does not meet on this machine yet
# (the training step, issue 17: docs/scale/training.md, "Validation").
busy_load=3

wait_quiet() {
	local name=$1 limit=$2 step=$3 waited=0
	while awk -v busy="$busy_load" '{exit !($1 >= busy)}' /proc/loadavg && ((waited < limit)); do
		sleep "$step"
		waited=$((waited + step))
	done
	((waited == 0)) || echo "$name: waited ${waited}s for load < $busy_load (now $(cut -d' ' -f1 /proc/loadavg))" >&2
}

judge_attempts() {
	local name=$1 attempts=$2 run=$3 test=$4 env=$5 out=$6 why=$7 a rc res judged=0 broken=0
	for a in $(seq 1 "$attempts"); do
		"$run"
		rc=0
		res=$(env "$env=$out" go test -count=1 -run "^$test\$" -v ./pkg/simulate 2>&1) || rc=$?
		echo "$res" | grep -E '^\s+[a-z_]+_test\.go|^(---|ok|FAIL|PASS)' | sed 's/^ *[a-z_]*_test\.go:[0-9]*: /  /' || true
		echo "$name: attempt $a of $attempts: the run is in $out"
		if ((rc == 0)) && ! grep -q -- '--- SKIP' <<<"$res"; then
			echo "$name: PASS (judged, attempt $a)"
			exit 0
		fi
		if ((rc == 0)); then
			echo "$name: attempt $a not judged ($why)"
		else
			judged=1
			echo "$name: attempt $a FAILED"
			# A miss of the band says "within 15% false, want true" (or
			# the reverse); a failure without one (a run the test could not
			# read, a panic, a build failure) is not the model's miss.
			if ! grep -qE 'within 15% (true|false), want (true|false)' <<<"$res" || grep -qE '^panic:|\[(build|setup) failed\]' <<<"$res"; then
				broken=1
			fi
		fi
	done
	if ((judged == 0)) && [ "${JUDGE_UNJUDGED_OK:-0}" = 1 ]; then
		echo "$name: NOT JUDGED: none of $attempts attempt(s) ran on a quiet machine ($why); passing, as JUDGE_UNJUDGED_OK=1 asks"
		exit 0
	fi
	if ((judged == 1 && broken == 0)) && [ "${JUDGE_REPORT_ONLY:-0}" = 1 ]; then
		echo "$name: MISSED, NOT GATING: no judged run within 15% in $attempts attempt(s); reported only, as JUDGE_REPORT_ONLY=1 asks"
		exit 0
	fi
	echo "$name: FAIL: no judged run within 15% in $attempts attempt(s)"
	exit 1
}
