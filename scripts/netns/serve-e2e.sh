#!/usr/bin/env bash
# Emulated multi-host serving run (DESIGN.md section 7): 5 hosts, each a
# network namespace with a full-duplex link of RATE (tc tbf both ways, 1
# Gbit/s by default) to a bridge.
#
#   h0      coordinator (embedded etcd on h0's address, --replicas 2
#           --expect-workers 4) and one front end (`switchyard serve --etcd
#           ... --cluster ...`)
#   h1..h4  one worker each, inside a memory cgroup capped at 0.75 x the
#           model's routed-expert bytes (bf16, as workers hold them): no
#           host could hold the model, 4 hold 2 copies, 3 can restore them
#
# The model is a generated Mixtral-style bf16 model with ~1 GiB of routed
# experts (4 layers x 32 experts, top-2, hidden 1024) and the 320-token
# test tokenizer, cached in $SWITCHYARD_SERVE_E2E_DIR (default
# ${TMPDIR:-/tmp}/switchyard-serve-e2e). Checks, one line each:
#
#   - every worker starts under its cap: it reports the cgroup's limit
#     (mem=<cap>), and its cgroup's peak usage stays under the cap with no
#     OOM kill, from start-up to the end (peak usage and peak RSS printed);
#   - greedy completions through the front end (several prompts, streamed
#     and not) equal `switchyard generate` in one process;
#   - SIGKILL of h2's worker under load (8 clients looping ~10 s around the
#     kill) fails no request, and the placement is back to 2 copies on the
#     3 survivors (time printed);
#   - on one machine (no namespaces): `switchyard serve --workers 4
#     --replicas 2 --worker-mem <cap>` comes up and serves the same answers.
#
# Last line: "netns serve e2e: PASS" or "netns serve e2e: FAIL <reason>";
# exit 0 only on PASS. Everything (processes, namespaces, cgroups) is torn
# down on exit. Needs root; about 2-3 minutes (plus ~10 s to generate the
# model the first time). SWITCHYARD_BIN_DIR=DIR takes the switchyard and
# coordinator binaries (and bs, bench/serve, if there) from DIR instead of
# building them; SERVE_E2E_KEEP=1 keeps the logs of a failed run.
#
#   scripts/netns/serve-e2e.sh [--rate RATE]     (RATE in tc syntax: 1gbit, 10gbit, 500mbit)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
rate=1gbit
while [ $# -gt 0 ]; do
	case "$1" in
	--rate) rate=${2:?--rate needs a value}; shift 2 ;;
	--rate=*) rate=${1#--rate=}; shift ;;
	*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
	esac
done

export SY_CLUSTER=syserve SY_SUBNET=10.79.0
net=scripts/netns/cluster.sh
say() { echo "netns serve e2e: $*"; }
failed=""
fail() {
	failed=1
	say "FAIL $*"
	exit 1
}
work=$(mktemp -d /tmp/switchyard-netns-serve.XXXXXX)
pids=()     # background processes started here
cgroups=()  # memory cgroups made here
serve_pid=""
last_cmd=""
trap 'last_cmd="line $LINENO: $BASH_COMMAND"' ERR
cleanup() {
	local p cg
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	if [ -n "$serve_pid" ]; then
		kill -TERM "$serve_pid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$serve_pid" 2>/dev/null || true
		# `serve` removes its workers' cgroups when it closes; if it could
		# not, they are named after its PID.
		for cg in "$cgparent"/switchyard-serve-"$serve_pid"-*; do
			[ -d "$cg" ] && cgroups+=("$cg")
		done
	fi
	$net down || true
	for cg in "${cgroups[@]}"; do
		for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		for _ in $(seq 50); do rmdir "$cg" 2>/dev/null && break; sleep 0.1; done
	done
	if [ -n "$failed" ] && [ -n "${SERVE_E2E_KEEP:-}" ]; then
		echo "netns serve e2e: logs kept in $work" >&2
	else
		rm -rf "$work"
	fi
}
on_exit() {
	local rc=$?
	cleanup >/dev/null 2>&1
	if [ $rc -ne 0 ] && [ -z "$failed" ]; then
		say "FAIL unexpected error (exit $rc${last_cmd:+ at $last_cmd})"
	fi
	exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || fail "needs root (network namespaces, tc, memory cgroups)"
start_all=$SECONDS

# --- memory cgroups: children of our own (v1) or of the v2 root ---------
cgver=""
own=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
if [ -n "$own" ] && [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
	cgver=1
	cgparent=/sys/fs/cgroup/memory$own
	[ -d "$cgparent" ] || cgparent=/sys/fs/cgroup/memory
elif grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null && grep -qw memory /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
	cgver=2
	cgparent=/sys/fs/cgroup
else
	fail "no writable memory cgroup hierarchy (cgroup v1 memory controller or cgroup v2 with memory enabled)"
fi
# make_cgroup NAME BYTES: makes the cgroup, its directory in $cgdir
make_cgroup() {
	local dir=$cgparent/$1
	rmdir "$dir" 2>/dev/null || true
	mkdir "$dir" || return 1
	cgroups+=("$dir")
	cgdir=$dir
	if [ $cgver = 1 ]; then
		echo "$2" >"$dir/memory.limit_in_bytes" || return 1
		[ -f "$dir/memory.memsw.limit_in_bytes" ] && echo "$2" >"$dir/memory.memsw.limit_in_bytes" 2>/dev/null || true
	else
		echo "$2" >"$dir/memory.max" || return 1
		[ -f "$dir/memory.swap.max" ] && echo 0 >"$dir/memory.swap.max" || true
	fi
}
# cg_peak DIR, cg_oomkills DIR
cg_peak() {
	if [ $cgver = 1 ]; then cat "$1/memory.max_usage_in_bytes"; else cat "$1/memory.peak" 2>/dev/null || cat "$1/memory.current"; fi
}
cg_oomkills() {
	if [ $cgver = 1 ]; then
		awk '$1 == "oom_kill" {k = $2} $1 == "under_oom" && $2 != 0 {k += 1} END {print k + 0}' "$1/memory.oom_control"
	else
		awk '$1 == "oom_kill" {print $2}' "$1/memory.events"
	fi
}
mib() { awk -v b="$1" 'BEGIN {printf "%.0f MiB", b / 1048576}'; }

# --- build, model, reference answers -------------------------------------
export PATH=$PATH:/usr/local/go/bin
if [ -n "${SWITCHYARD_BIN_DIR:-}" ]; then # binaries built already (switchyard, coordinator)
	cp "$SWITCHYARD_BIN_DIR/switchyard" "$SWITCHYARD_BIN_DIR/coordinator" "$work/"
else
	go build -o "$work/switchyard" ./cmd/switchyard
	go build -o "$work/coordinator" ./cmd/coordinator
fi
if [ -x "${SWITCHYARD_BIN_DIR:-/nonexistent}/bs" ]; then # bench/serve built already
	cp "$SWITCHYARD_BIN_DIR/bs" "$work/"
else
	go build -o "$work/bs" ./bench/serve
fi
cache=${SWITCHYARD_SERVE_E2E_DIR:-${TMPDIR:-/tmp}/switchyard-serve-e2e}
model=$cache/mixtral-l4-e32-h1024-f1408
"$work/bs" synth -dir "$model" -layers 4 -hidden 1024 -experts 32 -topk 2 -inter 1408 -vocab 320 \
	-tokenizer testdata/golden/tokenizer_bpe_gpt2/tokenizer.json >"$work/synth.txt"
expert_bytes=$(sed -n 's/.*routed_expert_bytes=\([0-9]*\).*/\1/p' "$work/synth.txt")
[ -n "$expert_bytes" ] || fail "no routed_expert_bytes from bench/serve synth: $(cat "$work/synth.txt")"
cap=$((expert_bytes * 3 / 4))
reserve=$(sed -n 's/^const RuntimeReserve int64 = \([0-9]*\) << 20$/\1/p' internal/worker/memlimit.go)
say "model $model: routed experts $(mib "$expert_bytes") (bf16); cap per worker 0.75x = $(mib "$cap") (expert budget $(mib $((cap - ${reserve:-48} * 1048576))) after the ${reserve:-48} MiB runtime reserve): 2 copies need $(mib $((2 * expert_bytes)))"
maxtok=12
"$work/bs" refs -switchyard "$work/switchyard" -model "$model" -max-tokens $maxtok -out "$work/refs.json"

# --- the emulated hosts ---------------------------------------------------
$net up 5 "$rate" >/dev/null
nsrun() { # HOST CMD...: run CMD in HOST's network namespace only (keeps /sys/fs/cgroup)
	local h=$1
	shift
	nsenter --net="/var/run/netns/$SY_CLUSTER-$h" -- "$@"
}
ip0=$($net ip h0)
etcd="http://$ip0:2379"
nsrun h0 "$work/coordinator" --listen-client-urls "$etcd" --listen-peer-urls "http://$ip0:2380" \
	--data-dir "$work/etcd" --cluster emu --model "$model" --elem-bytes 2 --replicas 2 --expect-workers 4 \
	--gossip-addr "$ip0:7947" --name c0 >"$work/coordinator.out" 2>"$work/coordinator.log" &
pids+=($!)
declare -A wcg
for i in 1 2 3 4; do
	ip=$($net ip h$i)
	make_cgroup "switchyard-serve-e2e-$$-h$i" "$cap" || fail "cannot make a memory cgroup under $cgparent"
	wcg[$i]=$cgdir
	# The shell joins the cgroup, then becomes the worker (--mem auto reads the limit).
	nsrun h$i /bin/sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "${wcg[$i]}" \
		"$work/switchyard" worker --etcd "$etcd" --cluster emu --id "h$i" --listen "$ip:7070" --gossip "$ip:7946" \
		--model "$model" --no-jobs >"$work/w$i.out" 2>"$work/w$i.log" &
	pids+=($!)
done
deadline=$((SECONDS + 60))
until [ "$(cat "$work"/w*.out 2>/dev/null | grep -c '^worker: id=')" -eq 4 ]; do
	[ $SECONDS -gt $deadline ] && fail "workers did not start: $(tail -n 5 "$work"/w*.log)"
	sleep 0.2
done
for i in 1 2 3 4; do
	m=$(sed -n 's/^worker: .* mem=\([0-9]*\)$/\1/p' "$work/w$i.out")
	[ "$m" = "$cap" ] || fail "worker h$i reports mem=$m, not its cgroup's cap $cap"
done
say "coordinator on h0 ($etcd), workers on h1..h4 each in a cgroup v$cgver memory cgroup of $(mib "$cap") (each reports mem=$cap), links $rate both ways"

nsrun h0 "$work/switchyard" serve --model "$model" --etcd "$etcd" --cluster emu --listen "$ip0:8000" \
	--served-model-name m >"$work/frontend.log" 2>&1 &
pids+=($!)
url="http://$ip0:8000"
deadline=$((SECONDS + 90))
until [ "$(nsrun h0 curl -s -o /dev/null -w '%{http_code}' "$url/health" 2>/dev/null)" = 200 ]; do
	[ $SECONDS -gt $deadline ] && fail "front end not healthy after 90 s: $(tail -n 5 "$work/frontend.log")"
	sleep 0.25
done
say "front end on h0 serving: $(grep -o 'placement epoch.*' "$work/frontend.log" | tail -n 1)"

# memcheck WHEN: every worker's cgroup peak under its cap, no OOM kill.
memcheck() {
	local i peak kills hwm line
	for i in 1 2 3 4; do
		peak=$(cg_peak "${wcg[$i]}")
		kills=$(cg_oomkills "${wcg[$i]}")
		hwm=$(awk '/^VmHWM:/ {print $2 * 1024}' "/proc/$(head -n 1 "${wcg[$i]}/cgroup.procs" 2>/dev/null)/status" 2>/dev/null || true)
		line="worker h$i: cgroup peak $(mib "$peak") of cap $(mib "$cap"), ${hwm:+peak RSS $(mib "$hwm"), }$kills OOM kills"
		say "$1: $line"
		[ "$kills" = 0 ] || fail "$1: worker h$i was OOM-killed under its cap ($line)"
		[ "$peak" -le "$cap" ] || fail "$1: worker h$i over its cap ($line)"
	done
}
memcheck "after start-up"

# --- greedy answers equal one process ------------------------------------
nsrun h0 "$work/bs" check -url "$url" -refs "$work/refs.json" -max-tokens $maxtok -label "netns serve e2e: front end" >"$work/check.txt" ||
	fail "answers through the front end differ from one process: $(grep -v ': ok' "$work/check.txt" | head -n 3)"
say "greedy completions through the front end on h0 equal \`switchyard generate\` in one process: $(grep -c ': ok' "$work/check.txt") answers ($(grep -c ': ok' "$work/check.txt" | awk '{print $1/2}') prompts, streamed and not)"

# --- SIGKILL of h2's worker under load -----------------------------------
nsrun h0 "$work/bs" load -url "$url" -clients 8 -duration 10s -max-tokens $maxtok -stream mixed -refs "$work/refs.json" \
	-label "netns serve e2e: load" -fail-on-error >"$work/load.txt" 2>&1 &
loadpid=$!
pids+=($loadpid)
sleep 3
victim=$(head -n 1 "${wcg[2]}/cgroup.procs")
[ -n "$victim" ] || fail "worker h2 not running before the kill"
killed=$(date +%s%N)
kill -KILL "$victim"
nsrun h0 "$work/bs" restore -etcd "$etcd" -cluster emu -model "$model" -replicas 2 -gone h2 -since "$killed" -timeout 60s >"$work/restore.txt" 2>&1 ||
	fail "placement not restored after SIGKILL of h2's worker: $(tail -n 3 "$work/restore.txt")"
wait $loadpid && load_ok=1 || load_ok=""
grep '^netns serve e2e: load' "$work/load.txt" | grep -v 'per generated token' || true
[ -n "$load_ok" ] || fail "requests failed around the SIGKILL of h2's worker: $(tail -n 3 "$work/load.txt")"
say "SIGKILL of h2's worker under 8 clients: 0 failed requests; $(sed 's/^restore: //' "$work/restore.txt")"
memcheck "after the failover"
for i in 1 3 4; do
	[ -n "$(cat "${wcg[$i]}/cgroup.procs")" ] || fail "worker h$i died: $(tail -n 3 "$work/w$i.log")"
done
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
pids=()
$net down >/dev/null 2>&1

# --- one machine: serve --workers 4 --replicas 2 --worker-mem <cap> ------
"$work/switchyard" serve --model "$model" --workers 4 --replicas 2 --worker-mem "$cap" --listen 127.0.0.1:0 \
	--served-model-name m >"$work/serve.log" 2>&1 &
serve_pid=$!
deadline=$((SECONDS + 90))
until grep -q '^serve: ready: http' "$work/serve.log"; do
	kill -0 $serve_pid 2>/dev/null || fail "serve --workers 4 --worker-mem $cap exited: $(tail -n 5 "$work/serve.log")"
	[ $SECONDS -gt $deadline ] && fail "serve --workers 4 not ready after 90 s: $(tail -n 5 "$work/serve.log")"
	sleep 0.25
done
grep -q "capped at $cap bytes: cgroup v" "$work/serve.log" || fail "serve did not cap its workers with memory cgroups: $(grep -m1 capped "$work/serve.log")"
lurl=$(sed -n 's/^serve: ready: \(http[^ ]*\) .*/\1/p' "$work/serve.log")
"$work/bs" check -url "$lurl" -refs "$work/refs.json" -max-tokens $maxtok -label "netns serve e2e: one machine" >"$work/check1.txt" ||
	fail "serve --workers 4 --worker-mem: answers differ from one process: $(grep -v ': ok' "$work/check1.txt" | head -n 3)"
say "one machine: serve --workers 4 --replicas 2 --worker-mem $cap ($(grep -o 'capped at.*' "$work/serve.log")) serves $(grep -c ': ok' "$work/check1.txt") answers equal to one process"
kill -TERM $serve_pid
wait $serve_pid || true
left=$(compgen -G "$cgparent/switchyard-serve-$serve_pid-*" | wc -l || true)
[ "$left" = 0 ] || fail "serve left $left worker cgroups behind in $cgparent"
serve_pid=""
say "took $((SECONDS - start_all)) s"
say "PASS"
