#!/usr/bin/env bash
# Serving benchmark: a generated Mixtral-style bf16 model (bench/decode's
# shape: 8 layers, hidden 1024, 32 experts top-4, expert intermediate 2816;
# vocabulary 320 so the repository's gpt2-style test tokenizer covers it:
# ~4.5 GB of weights, 4.43 GB of them routed experts) served over the
# OpenAI API, measured from the client side (bench/serve load): tokens/s
# with 1 client and with 16 concurrent clients, time to first token and
# inter-token latency p50/p90/p99 (streaming), and from the front end's
# /metrics the forward time per generated token split into attention,
# experts (on a cluster: the exchange with the owners, remote compute
# included) and the rest, and the mean MoE-layer exchange time next to the
# link's round trip + transfer time. Configurations:
#
#   in-process    serve --workers 0 (experts in the front end's process);
#                 with the netns configurations, again after them
#                 ("in-process, again"; BENCH_SERVE_INPROCESS_AGAIN=0 skips);
#                 with BENCH_SERVE_INPROCESS_1THREAD=1 also with GOMAXPROCS=1
#                 ("in-process, 1 thread each")
#   2 workers     serve --workers 2 (local worker processes, loopback gRPC)
#   2 workers, overlap  the same with --overlap (two-micro-batch overlap)
#   4 workers     serve --workers 4
#   netns 1gbit   4 emulated hosts h1..h4 with a worker each, the coordinator
#   netns 10gbit  and the front end on h0 (scripts/netns/cluster.sh, tc tbf);
#                 every process with SWITCHYARD_SPIN=0, as `serve --workers N`
#                 gives its own workers: 5 processes share this machine's cores
#   netns 2 hosts, 1 core each   2 emulated worker hosts at 1 and 10 Gbit/s, each
#                 worker with GOMAXPROCS=1: the closest a 2-core machine gets
#                 to one host per worker (no two threads wanting one core
#                 while the front end waits for the owners); run twice:
#                 over expert lanes (the default) and over gRPC streams
#                 (SWITCHYARD_EXPERT_LANES=0), side by side
#   netns 1 host, 1 core each, pinned   the front end on h0 pinned to CPU 0
#                 and one worker host pinned to CPU 1 (taskset), both with
#                 GOMAXPROCS=1: each process has a core of its own, as on
#                 real hosts; run twice, side by side: blocking lanes, and
#                 lanes that poll (SWITCHYARD_LANE_POLL=20ms on both: the
#                 caller polls for the answer, the owner for the next
#                 request, instead of sleeping and being woken; see
#                 internal/rawsock)
#
# BENCH_SERVE_CLIENTS ("1 16") and BENCH_SERVE_RATES ("1gbit 10gbit", the
# 4-host runs) narrow a run; BENCH_SERVE_NETNS ("4hosts 2hosts 1host";
# also "4hosts1core": the 4 worker hosts with GOMAXPROCS=1 each, and
# "4hosts1thread": the front end too) picks the
# emulated-host sets (BENCH_SERVE_ONLY_2HOSTS=1 is "2hosts"),
# BENCH_SERVE_2HOST_RATES and BENCH_SERVE_1HOST_RATES ("1gbit 10gbit")
# their rates, BENCH_SERVE_1HOST_POLLS ("0 20ms") the lane polls of the
# 1-host runs;
# BENCH_SERVE_OUT (bench/results/serve.txt) is the results file, its table
# beside it (.md); BENCH_SERVE_KEEP=1 keeps the work folder (every process's log);
# BENCH_SERVE_TRACE=1 has the emulated hosts' processes write OpenTelemetry
# spans there (trace-RATE-fe.jsonl, trace-RATE-wI.jsonl; tracing costs time,
# so such a run's numbers are for decomposing a layer, not for the table).
#
# Every request asks for 64 tokens (ignore_eos), but the first of each of N
# clients asks for (c+1)/N of them, so that the clients do not start and end
# their requests in lockstep; each measurement runs BENCH_SERVE_WARMUP (5) s,
# then a BENCH_SERVE_SECONDS (20) s window, BENCH_SERVE_WINDOWS (1) times
# (the simulator's validation takes their mean: simulate.MeanWindows);
# requests still running at a window's end are cancelled. Only requests
# sent inside the window count for TTFT, only tokens received inside it
# for tokens/s and ITL. Each window also records where the machine's CPU
# went (a "cores:" line, from /proc: the front end's, the workers' and the
# coordinator's processes, every thread and their kernel time included,
# the rest of the busy machine as "other", and user/system/irq/steal), which
# `switchyard simulate validate --serve` sets beside the model's core time
# per token. The raw-TCP round trip h0 -> h1 is
# measured with bench/serve tcpping in the same namespaces, back to back
# and with the hosts idle 5 ms before each (as ping measures it, and as a
# decode step's per-layer messages find the hosts); transfer =
# 2 x rows x hidden x 4 bytes / rate. The model is generated once into
# ${TMPDIR:-/tmp}/switchyard-bench. Results: bench/results/serve.txt (the
# date and CPU with every result, the raw lines, the table) and the table in
# bench/results/serve.md. Needs root for the netns configurations (skipped
# otherwise); ~10 minutes plus ~1 minute to generate the model.
# SWITCHYARD_BIN_DIR=DIR takes switchyard, coordinator (and bs, bench/serve,
# if there) from DIR instead of building them.
#
#   scripts/bench-serve.sh [--only in-process|workers|netns[,...]]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
only=""
[ "${1:-}" = "--only" ] && only=${2:?--only needs a value}
export PATH=$PATH:/usr/local/go/bin
export SY_CLUSTER=sybench SY_SUBNET=10.80.0
net=scripts/netns/cluster.sh
cache=${TMPDIR:-/tmp}/switchyard-bench
model=$cache/mixtral-l8-e32-h1024-f2816-v320
warm=${BENCH_SERVE_WARMUP:-5}
secs=${BENCH_SERVE_SECONDS:-20}
tokens=64
out=${BENCH_SERVE_OUT:-bench/results/serve.txt}
md=${out%.txt}.md
work=$(mktemp -d /tmp/switchyard-bench-serve.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	pids=()
	$net down >/dev/null 2>&1 || true
}
trap 'cleanup; if [ -n "${BENCH_SERVE_KEEP:-}" ]; then echo "bench-serve: work folder kept: $work" >&2; else rm -rf "$work"; fi' EXIT
trap 'exit 130' INT TERM

cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
stamp() { echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ); cpu: $cpu; load average $(cut -d' ' -f1-3 /proc/loadavg)"; }
log() { echo "$*" | tee -a "$work/raw.txt"; }

if [ -n "${SWITCHYARD_BIN_DIR:-}" ]; then
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
"$work/bs" synth -dir "$model" -layers 8 -hidden 1024 -experts 32 -topk 4 -inter 2816 -vocab 320 \
	-tokenizer testdata/golden/tokenizer_bpe_gpt2/tokenizer.json | tee "$work/synth.txt"

# BENCH_SERVE_QUIET_WAIT=SECONDS: before the first measurement (after the
# builds and the model's generation, which load the machine), wait up to
# that long for the 1-minute load average to drop below 3; the first
# stamp records the load it got (the simulator's live serving check does
# not judge a run that started on a busy machine).
if [ -n "${BENCH_SERVE_QUIET_WAIT:-}" ]; then
	. scripts/lib/judge.sh
	wait_quiet bench-serve "$BENCH_SERVE_QUIET_WAIT" 5
fi

# measure NAME URL [NSRUN...] [-- extra load flags]: 1 client, then 16.
measure() {
	local name=$1 url=$2 file
	shift 2
	local runner=() extra=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do runner+=("$1"); shift; done
	[ "${1:-}" = -- ] && shift && extra=("$@")
	log "$(stamp)"
	for c in ${BENCH_SERVE_CLIENTS:-1 16}; do
		for _ in $(seq "${BENCH_SERVE_WINDOWS:-1}"); do
			file=$work/result-$(printf %02d "${#results[@]}").json
			"${runner[@]}" "$work/bs" load -url "$url" -clients $c -warmup "${warm}s" -duration "${secs}s" -drain=false \
				-max-tokens $tokens -ignore-eos -stagger -stream always -metrics -config "$name" -model "$model" \
				-label "$name, $c client(s)" -json "$file" "${extra[@]}" | tee -a "$work/raw.txt"
			results+=("$file")
		done
	done
}
results=()

# local NAME WORKERS [serve flags...]
run_local() {
	local name=$1 n=$2 url
	shift 2
	"$work/switchyard" serve --model "$model" --workers "$n" --listen 127.0.0.1:0 --served-model-name m "$@" \
		>"$work/$name.log" 2>&1 &
	pids+=($!)
	local deadline=$((SECONDS + 300))
	until grep -q '^serve: ready: http' "$work/$name.log"; do
		kill -0 "${pids[-1]}" 2>/dev/null || { tail -n 20 "$work/$name.log"; exit 1; }
		[ $SECONDS -gt $deadline ] && { echo "bench-serve: $name not ready"; tail -n 20 "$work/$name.log"; exit 1; }
		sleep 0.5
	done
	url=$(sed -n 's/^serve: ready: \(http[^ ]*\) .*/\1/p' "$work/$name.log")
	until [ "$(curl -s -o /dev/null -w '%{http_code}' "$url/health")" = 200 ]; do sleep 0.5; done
	measure "$name" "$url"
	cleanup
}

# run_netns RATE [HOSTS [NAME-SUFFIX]]: front end + coordinator on h0, a
# worker on each of h1..hHOSTS (4); BENCH_SERVE_WORKER_ENV and
# BENCH_SERVE_FRONTEND_ENV add environment variables to those processes,
# BENCH_SERVE_WORKER_CPUS and BENCH_SERVE_FRONTEND_CPUS pin them (taskset
# -c LIST).
run_netns() {
	local rate=$1 hosts=${2:-4} name ip0 etcd url i ip rtt idle wpin=() fpin=()
	name="netns $hosts hosts $rate${3:-}"
	[ "$hosts" = 1 ] && name="netns 1 host $rate${3:-}"
	[ -n "${BENCH_SERVE_WORKER_CPUS:-}" ] && wpin=(taskset -c "$BENCH_SERVE_WORKER_CPUS")
	[ -n "${BENCH_SERVE_FRONTEND_CPUS:-}" ] && fpin=(taskset -c "$BENCH_SERVE_FRONTEND_CPUS")
	$net up $((hosts + 1)) "$rate" >/dev/null
	nsrun() { local h=$1; shift; nsenter --net="/var/run/netns/$SY_CLUSTER-$h" -- "$@"; }
	ip0=$($net ip h0)
	etcd="http://$ip0:2379"
	# The link's calibration in the same run, before the cluster starts:
	# the exchange's core time across h0 -> h1 on both hosts, with the
	# front end's and the workers' environments (simulate calibrate
	# --peer; the serving model charges it where hosts share cores), and
	# one expert of the model's shape timed by rows on one thread
	# (--expert: the serving model's expert cost by rows); with
	# BENCH_SERVE_SHARE_PROCS=N (the one-thread sets: N = the workers),
	# N one-thread processes computing that expert side by side, each
	# woken by a message (--share-procs: what the shared cores add to a
	# worker's products and wakes).
	nsrun h1 env ${BENCH_SERVE_WORKER_ENV:-} "$work/switchyard" simulate calibrate --serve-link "$($net ip h1):7071" >/dev/null 2>&1 &
	local lpid=$!
	sleep 0.5
	if nsrun h0 env ${BENCH_SERVE_FRONTEND_ENV:-} "$work/switchyard" simulate calibrate --quick --peer "$($net ip h1):7071" \
		--expert 1024x2816 ${BENCH_SERVE_SHARE_PROCS:+--share-procs "$BENCH_SERVE_SHARE_PROCS"} --out "$work/cal-$rate.json" >"$work/cal-$rate.log" 2>&1; then
		log "calibration: $(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])), separators=(",", ":")))' "$work/cal-$rate.json")"
	else
		log "# link calibration failed: $(tail -n 1 "$work/cal-$rate.log")"
	fi
	kill "$lpid" 2>/dev/null || true
	wait "$lpid" 2>/dev/null || true
	nsrun h0 "$work/coordinator" --listen-client-urls "$etcd" --listen-peer-urls "http://$ip0:2380" \
		--data-dir "$work/etcd-$rate" --cluster bench --model "$model" --elem-bytes 2 --expect-workers "$hosts" \
		--name c0 >"$work/coord-$rate.out" 2>"$work/coord-$rate.log" &
	pids+=($!)
	for i in $(seq "$hosts"); do
		ip=$($net ip h$i)
		nsrun h$i "${wpin[@]}" env ${BENCH_SERVE_WORKER_ENV:-} "$work/switchyard" worker --etcd "$etcd" --cluster bench --id "h$i" --listen "$ip:7070" \
			--gossip "$ip:7946" --model "$model" --no-jobs ${BENCH_SERVE_TRACE:+--trace-file "$work/trace-$rate-w$i.jsonl"} >"$work/w$i-$rate.out" 2>"$work/w$i-$rate.log" &
		pids+=($!)
	done
	nsrun h0 "${fpin[@]}" env ${BENCH_SERVE_FRONTEND_ENV:-} "$work/switchyard" serve --model "$model" --etcd "$etcd" --cluster bench --listen "$ip0:8000" \
		--served-model-name m ${BENCH_SERVE_TRACE:+--trace-file "$work/trace-$rate-fe.jsonl"} >"$work/fe-$rate.log" 2>&1 &
	pids+=($!)
	url="http://$ip0:8000"
	local deadline=$((SECONDS + 300))
	until [ "$(nsrun h0 curl -s -o /dev/null -w '%{http_code}' "$url/health" 2>/dev/null)" = 200 ]; do
		[ $SECONDS -gt $deadline ] && { echo "bench-serve: $name not healthy"; tail -n 5 "$work"/fe-$rate.log "$work"/w*-$rate.log; exit 1; }
		sleep 0.5
	done
	nsrun h1 "$work/bs" tcpping -listen "$($net ip h1):7999" >/dev/null 2>&1 &
	pids+=($!)
	nsrun h0 "$work/bs" tcpping -addr "$($net ip h1):7999" -n 2000 -size 64 | tee "$work/ping-$rate.txt" | grep -v '^rtt_ms' | tee -a "$work/raw.txt"
	rtt=$(sed -n 's/^rtt_ms=//p' "$work/ping-$rate.txt")
	nsrun h0 "$work/bs" tcpping -addr "$($net ip h1):7999" -n 500 -size 64 -gap 5ms | tee "$work/ping-idle-$rate.txt" | grep -v '^rtt_ms' | tee -a "$work/raw.txt"
	idle=$(sed -n 's/^rtt_ms=//p' "$work/ping-idle-$rate.txt")
	measure "$name" "$url" nsrun h0 -- -link-rate "$rate" -link-rtt-ms "$rtt" -link-idle-rtt-ms "$idle"
	cleanup
}

want() { [ -z "$only" ] || case ",$only," in *",$1,"*) true ;; *) false ;; esac; }
if want in-process; then
	run_local "in-process" 0
	# BENCH_SERVE_INPROCESS_1THREAD=1: the same with GOMAXPROCS=1, the
	# front end's own compute on the one thread a one-thread emulated
	# host's front end has (the serving model's attention points at one
	# thread: simulate.ServeBenchCalibration).
	if [ "${BENCH_SERVE_INPROCESS_1THREAD:-0}" = 1 ]; then
		GOMAXPROCS=1 run_local "in-process, 1 thread each" 0
	fi
fi
if want workers; then
	run_local "2 local workers" 2
	run_local "2 local workers, overlap" 2 --overlap
	run_local "4 local workers" 4
fi
if want netns; then
	if [ "$(id -u)" = 0 ]; then
		sets=${BENCH_SERVE_NETNS:-4hosts 2hosts 1host}
		[ -n "${BENCH_SERVE_ONLY_2HOSTS:-}" ] && sets=2hosts
		case " $sets " in *" 4hosts "*)
			for rate in ${BENCH_SERVE_RATES:-1gbit 10gbit}; do
				SWITCHYARD_SPIN=0 run_netns "$rate" 4
			done
			;;
		esac
		case " $sets " in *" 4hosts1core "*)
			# 4 worker hosts of one Go thread each, as the 2-host rows: an
			# idle Go thread of one emulated host spins on a core another needs.
			for rate in ${BENCH_SERVE_RATES:-1gbit 10gbit}; do
				SWITCHYARD_SPIN=0 BENCH_SERVE_WORKER_ENV=GOMAXPROCS=1 run_netns "$rate" 4 ", 1 core each"
			done
			;;
		esac
		case " $sets " in *" 4hosts1thread "*)
			# The same with the front end one Go thread too: every emulated
			# host a process of one thread.
			for rate in ${BENCH_SERVE_RATES:-1gbit 10gbit}; do
				BENCH_SERVE_SHARE_PROCS=4 SWITCHYARD_SPIN=0 BENCH_SERVE_WORKER_ENV=GOMAXPROCS=1 BENCH_SERVE_FRONTEND_ENV=GOMAXPROCS=1 run_netns "$rate" 4 ", 1 thread each"
			done
			;;
		esac
		case " $sets " in *" 2hosts "*)
			for rate in ${BENCH_SERVE_2HOST_RATES:-1gbit 10gbit}; do
				SWITCHYARD_SPIN=0 BENCH_SERVE_WORKER_ENV=GOMAXPROCS=1 run_netns "$rate" 2 ", 1 core each"
				# The same over gRPC streams instead of expert lanes, side by side.
				SWITCHYARD_EXPERT_LANES=0 SWITCHYARD_SPIN=0 BENCH_SERVE_WORKER_ENV=GOMAXPROCS=1 run_netns "$rate" 2 ", 1 core each, gRPC"
			done
			;;
		esac
		case " $sets " in *" 1host "*)
			for rate in ${BENCH_SERVE_1HOST_RATES:-1gbit 10gbit}; do
				# Blocking lanes, then polling lanes, side by side.
				for poll in ${BENCH_SERVE_1HOST_POLLS:-0 20ms}; do
					suffix=", 1 core each, pinned"
					[ "$poll" != 0 ] && suffix="$suffix, polled lanes"
					SWITCHYARD_LANE_POLL=$poll SWITCHYARD_SPIN=0 BENCH_SERVE_WORKER_ENV=GOMAXPROCS=1 BENCH_SERVE_FRONTEND_ENV=GOMAXPROCS=1 \
						BENCH_SERVE_WORKER_CPUS=1 BENCH_SERVE_FRONTEND_CPUS=0 run_netns "$rate" 1 "$suffix"
				done
			done
			;;
		esac
	else
		log "# netns configurations skipped: need root"
	fi
fi

# The in-process rows once more after the emulated hosts: the simulator's
# serving validation calibrates the compute from the mean of every
# in-process window (simulate.ServeBenchCalibration), as one window on
# this shared machine can run a fifth slow. BENCH_SERVE_INPROCESS_AGAIN=0
# skips it.
if want in-process && want netns && [ "$(id -u)" = 0 ] && [ "${BENCH_SERVE_INPROCESS_AGAIN:-1}" = 1 ]; then
	run_local "in-process, again" 0
fi

"$work/bs" report -out "$work/table.md" "${results[@]}" >/dev/null
{
	echo "# scripts/bench-serve.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo "# cpu: $cpu; $(go version)"
	echo "# model: $(grep '^model:' "$work/synth.txt" | sed 's/^model: //'); mixtral-style, 8 layers, hidden 1024, 32 experts top-4, expert intermediate 2816, vocab 320, bf16"
	echo "# each measurement: ${warm} s warm-up, ${secs} s window, $tokens tokens per request (ignore_eos; the first of each client staggered), streamed"
	cat "$work/raw.txt"
	echo
	cat "$work/table.md"
} >"$out"
cp "$work/table.md" "$md"
cat "$work/table.md"
