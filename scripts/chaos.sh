#!/usr/bin/env bash
# Chaos run on an emulated cluster (DESIGN section 9). 6 hosts
# (scripts/netns/cluster.sh, SY_CLUSTER=chaos, SY_SUBNET=10.99.0, 1 Gbit/s
# tbf both ways per host):
#
#   h0      etcd member e0 (`switchyard etcd`; a 3-member cluster with e1
#           on h1 and e2 on h2), coordinator c1, front end
#           (`switchyard serve --etcd`), and the driver (test/chaos)
#   h1      coordinator c2, etcd member e1
#   h2..h5  workers w2..w5 (qwen2_moe golden model, --replicas 2: every
#           expert on two workers; --data-root the work folder; --wait);
#           etcd member e2 on h2
#
# The driver first runs a dsv3-micro training job on the book (40 steps,
# batch 4, seq-len 32, save-every 4, fixed size: 3 of the 4 workers)
# uninterrupted, as the reference; then it runs the same job again while a
# serving load (3 clients looping on /v1/completions) runs and seeded
# random faults are injected one at a time: SIGKILL of a worker (restarted
# 1 s later), SIGSTOP/SIGCONT of a worker (4 s), SIGKILL of the leader
# coordinator (restarted), SIGKILL of an etcd member (restarted 1 s later
# on its data directory; undone once it answers), a host's link down (6 s,
# on the bridge side), a host's link throttled to 1% (5 s), the host of
# etcd's raft leader cut off (6 s; leadership first moved off h0). Each fault's detection and recovery
# times are read from etcd. Invariants: (a) no serving request fails;
# (b) the job reaches Done with exactly `steps` losses; (c) every
# checkpoint it wrote verifies and loads; (d) its final checkpoint equals
# the reference's bit for bit (SHA-256 of every model*.safetensors).
#
#   scripts/chaos.sh [--faults N] [--seconds S] [--seed X] [--kinds K,..] [--hosts H,..]
#     (root; defaults 30, 300, from the clock, every kind, hosts 1-5; a
#     fault starts only once the last one has recovered, so S bounds the
#     run and N the faults; --kinds draws only from those kinds, e.g.
#     link-down; --hosts is where link-down and throttle strike, e.g. 1)
#
# Prints a table (one row per fault), the invariants, and the last line
# "chaos: <faults> faults, <violations> invariant violations"; the same goes
# to bench/results/chaos.txt. Exit 0 only with 0 violations. Everything is
# torn down on exit; CHAOS_KEEP=1 keeps the work folder (logs) of a run;
# CHAOS_OUT=FILE writes the results there instead (CI's short run);
# CHAOS_ETCD_LOG_LEVEL=info logs the etcd members' elections;
# CHAOS_SESSION_TTL=10s sets the coordinators' --session-ttl (default 3s).
# A failed run prints the end of the driver's log.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
faults=30
seconds=300
seed=0
extra=()
while [ $# -gt 0 ]; do
	case "$1" in
	--faults) faults=${2:?--faults needs a value}; shift 2 ;;
	--seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
	--seed) seed=${2:?--seed needs a value}; shift 2 ;;
	--kinds) extra+=(--kinds "${2:?--kinds needs a value}"); shift 2 ;;
	--hosts) extra+=(--hosts "${2:?--hosts needs a value}"); shift 2 ;;
	*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "chaos: needs root (network namespaces, tc)"; echo "chaos: 0 faults, 1 invariant violations"; exit 1; }

export SY_CLUSTER=chaos SY_SUBNET=10.99.0
export PATH=$PATH:/usr/local/go/bin
net=scripts/netns/cluster.sh
work=$(mktemp -d /tmp/switchyard-chaos.XXXXXX)
driver=""
cleanup() {
	if [ -n "$driver" ]; then
		kill -TERM "$driver" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$driver" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$driver" 2>/dev/null || true
	fi
	$net down >/dev/null 2>&1 || true
	if [ -n "${CHAOS_KEEP:-}" ]; then
		echo "chaos: work folder kept: $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

go build -o "$work/switchyard" ./cmd/switchyard
go build -o "$work/coordinator" ./cmd/coordinator
go build -o "$work/chaos" ./test/chaos
mkdir -p "$work/in" bench/results
cp -r testdata/golden/qwen2_moe "$work/in/model"
cp testdata/golden/tokenizer_bpe_gpt2/tokenizer.json "$work/in/model/tokenizer.json"
cp testdata/golden/tokenizer_bpe_gpt2/tokenizer.json "$work/in/tokenizer.json"
cp testdata/text/opticks.txt "$work/in/opticks.txt"
$net up 6 1gbit >/dev/null

set +e
$net run h0 "$work/chaos" --work "$work" --bin "$work" --net "$SY_CLUSTER" --subnet "$SY_SUBNET" \
	--faults "$faults" --seconds "$seconds" --seed "$seed" ${extra[@]+"${extra[@]}"} --report "${CHAOS_OUT:-$root/bench/results/chaos.txt}" 2>"$work/driver.log" &
driver=$!
wait $driver
rc=$?
driver=""
set -e
if [ $rc -ne 0 ]; then
	tail -n 30 "$work/driver.log" >&2
fi
exit $rc
