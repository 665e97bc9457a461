#!/usr/bin/env bash
# bench-peers.sh: Switchyard next to llama.cpp on the same model, same
# machine, same threads: decode (one sequence, greedy, one token a step) and
# prefill (one forward of a PREFILL-token prompt), with bf16 weights and
# with the routed experts 8-bit (Switchyard --quantize int8 vs llama.cpp
# Q8_0), at 1 and 2 threads, in interleaved rounds.
#
# The model is bench/decode's generated Mixtral-style checkpoint (8 layers,
# hidden 1024, 32 experts top-4, expert intermediate 2816, vocabulary 32000,
# bf16: ~4.6 GB, the model of scripts/bench-decode.sh, shared with it in
# ${TMPDIR:-/tmp}/switchyard-bench-decode), converted to GGUF with
# `switchyard export --gguf --outtype bf16|q8_0`; where that command is
# missing or its file does not load in llama.cpp, with the gguf-py fallback
# bench/peers/hf_to_gguf.py (labelled FALLBACK in the results). export's
# q8_0 quantizes every matrix but the router (llama.cpp's convention) while
# Switchyard's --quantize int8 quantizes only the routed experts, so a third
# GGUF, Q8_0 routed experts only (gguf-py), is measured too: the same bytes
# as int8, a comparison of the kernels alone (Q8_EXPERTS_ONLY=0: not).
# The GGUFs are written once into $CACHE/gguf (again when the model or the
# exporter's source is newer).
#
# llama.cpp is the prebuilt libllama of the npm package node-llama-cpp
# (3.22.1, platform package @node-llama-cpp/linux-x64), installed once into
# $CACHE/npm; bench/peers/llama_bench.c is compiled against it with gcc.
# Each measurement is its own process (bench/decode -brief, llama_bench),
# after an untimed warm-up; in each round and thread count the order is
#   Switchyard decode, llama.cpp decode, Switchyard prefill, llama.cpp
#   prefill (bf16), Switchyard int8 decode, llama.cpp Q8_0 decode
#   (, llama.cpp Q8_0 experts-only decode),
# each group reversed every other round. Go's GOMAXPROCS and llama.cpp's
# n_threads / n_threads_batch are the same number in every pair: a fair
# comparison needs that. The copy-bandwidth bound is the copy bandwidth
# bench/decode measures (a 1 GiB memory copy, STREAM's convention) at that
# many threads, divided by the weight bytes a decode token reads (counted
# from the model on Switchyard's side, from the GGUF's tensor table on
# llama.cpp's). Decode lines carry the greedy tokens after the same prompt:
# a check that both sides compute the same model.
#
# Run it on a quiet machine: a load average above 1 is flagged in the
# results. llama.cpp's threads spin at barriers, and with fewer free cores
# than threads its 2-thread runs collapse (smoke runs at load 5-12 measured
# 2-8 tokens/s at 2 threads against ~4000 at 1; the same run under chrt -f,
# shielded from the other load, 4000 at 2 threads too).
#
# Results: bench/results/peers.txt (date, CPU model, load average, every raw
# measurement with its own time and load, the table) and the table alone in
# bench/results/peers.md. Cells are medians over the rounds; ratios are the
# median of the per-round ratios.
#
#   scripts/bench-peers.sh
#   ROUNDS=3 THREADS="1 2" TOKENS=32 PREFILL=512 scripts/bench-peers.sh
#   BENCH_PEERS_SMOKE=1 scripts/bench-peers.sh   # small model (2 layers,
#       hidden 256, 8 experts top-2, inter 512, vocab 1000), 1 round, 8
#       tokens, 64-token prompt; results into $CACHE/smoke/, not bench/results
#
# Environment: CACHE (${TMPDIR:-/tmp}/switchyard-peers), ROUNDS (3),
# THREADS ("1 2"), TOKENS (32), PREFILL (512), LAYERS HIDDEN EXPERTS TOPK
# INTER VOCAB (the model's shape), MODEL_DIR, GGUF_CONVERTER (auto | export
# | gguf-py), Q8_EXPERTS_ONLY (1), OUT and MD (the result files). Needs Go,
# node/npm (the first time), gcc, git, and python3 with numpy for gguf-py
# (python3-numpy is installed with apt-get when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH=$PATH:/usr/local/go/bin

CACHE=${CACHE:-${TMPDIR:-/tmp}/switchyard-peers}
SMOKE=${BENCH_PEERS_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
	LAYERS=${LAYERS:-2} HIDDEN=${HIDDEN:-256} EXPERTS=${EXPERTS:-8} TOPK=${TOPK:-2}
	INTER=${INTER:-512} VOCAB=${VOCAB:-1000}
	ROUNDS=${ROUNDS:-1} TOKENS=${TOKENS:-8} PREFILL=${PREFILL:-64}
	OUT=${OUT:-$CACHE/smoke/peers.txt} MD=${MD:-$CACHE/smoke/peers.md}
fi
LAYERS=${LAYERS:-8} HIDDEN=${HIDDEN:-1024} EXPERTS=${EXPERTS:-32} TOPK=${TOPK:-4}
INTER=${INTER:-2816} VOCAB=${VOCAB:-32000}
ROUNDS=${ROUNDS:-3} THREADS=${THREADS:-"1 2"} TOKENS=${TOKENS:-32} PREFILL=${PREFILL:-512}
OUT=${OUT:-bench/results/peers.txt} MD=${MD:-bench/results/peers.md}
GGUF_CONVERTER=${GGUF_CONVERTER:-auto}
shape="l$LAYERS-h$HIDDEN-e$EXPERTS-k$TOPK-i$INTER-v$VOCAB"
if [ "$shape" = "l8-h1024-e32-k4-i2816-v32000" ]; then
	# bench/decode's default model: the one scripts/bench-decode.sh uses.
	MODEL_DIR=${MODEL_DIR:-${TMPDIR:-/tmp}/switchyard-bench-decode}
fi
MODEL_DIR=${MODEL_DIR:-$CACHE/model-$shape}
NODE_LLAMA_CPP_VERSION=3.22.1
mkdir -p "$CACHE/bin" "$CACHE/gguf" "$(dirname "$OUT")" "$(dirname "$MD")"
t_start=$(date +%s)
say() { echo "bench-peers: $*" >&2; }

# --- llama.cpp: the prebuilt libllama of node-llama-cpp, and the harness.
npm_dir=$CACHE/npm
# (3.22.1 ships libllama.v0.5.0.so, libggml.v0.5.0.so, libggml-base.so and
# libggml-cpu-<variant>.so, loaded at run time: the best one for this CPU.)
find_lib() { find "$npm_dir/node_modules/@node-llama-cpp/linux-x64" \( -name 'libllama.so' -o -name 'libllama.v*.so' \) 2>/dev/null | head -1; }
if [ -z "$(find_lib)" ] || [ ! -d "$npm_dir/node_modules/node-llama-cpp" ]; then
	say "installing node-llama-cpp@$NODE_LLAMA_CPP_VERSION into $npm_dir ..."
	mkdir -p "$npm_dir"
	[ -f "$npm_dir/package.json" ] || echo '{"name":"switchyard-peers","private":true}' >"$npm_dir/package.json"
	# --ignore-scripts: no postinstall (it would try to build llama.cpp);
	# --omit=optional: not the CUDA/Vulkan variants; the CPU platform
	# package is named, so it is installed.
	(cd "$npm_dir" && npm install --no-audit --no-fund --ignore-scripts --omit=optional \
		"node-llama-cpp@$NODE_LLAMA_CPP_VERSION" "@node-llama-cpp/linux-x64@$NODE_LLAMA_CPP_VERSION" >&2)
fi
lib=$(find_lib)
[ -n "$lib" ] || { say "no libllama.so under $npm_dir/node_modules/@node-llama-cpp"; exit 1; }
libdir=$(dirname "$lib")
# The llama.cpp source the binaries were built from is a git bundle in the
# package (llama.h, the ggml headers, gguf-py): cloned once.
bundle=$CACHE/llama.cpp
if [ ! -f "$bundle/include/llama.h" ]; then
	rm -rf "$bundle"
	git clone -q "$npm_dir/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$bundle" 2>/dev/null
fi
llama_h=$bundle/include/llama.h
ggml_h=$bundle/ggml/include/ggml-backend.h
[ -f "$llama_h" ] && [ -f "$ggml_h" ] || { say "llama.h / ggml-backend.h not found under $bundle"; exit 1; }
llama_version=$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' "$npm_dir/node_modules/@node-llama-cpp/linux-x64/package.json" | head -1)
llama_release=$(sed -n 's/.*"tag": *"\([^"]*\)".*/\1/p' "$npm_dir/node_modules/node-llama-cpp/llama/llama.cpp.info.json" 2>/dev/null | head -1)
llama_commit=$(git -C "$bundle" rev-parse --short HEAD 2>/dev/null || echo '?')
if ! command -v gcc >/dev/null; then
	say "installing gcc ..."
	sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends gcc libc6-dev >&2 ||
		{ $sudo apt-get update >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends gcc libc6-dev >&2; }
fi
LB=$CACHE/bin/llama_bench
libs="$lib"
for l in "$libdir"/libggml.so "$libdir"/libggml.v*.so "$libdir"/libggml-base.so; do [ -e "$l" ] && libs="$libs $l"; done
if [ ! -x "$LB" ] || [ bench/peers/llama_bench.c -nt "$LB" ] || [ "$lib" -nt "$LB" ]; then
	say "compiling bench/peers/llama_bench.c against $lib"
	# shellcheck disable=SC2086
	gcc -O2 -std=c11 -Wall -I"$(dirname "$llama_h")" -I"$(dirname "$ggml_h")" \
		-o "$LB" bench/peers/llama_bench.c $libs -Wl,-rpath,"$libdir"
fi
llama_bench() { "$LB" -B "$libdir" "$@"; }

# --- Switchyard: bench/decode (generates the model), switchyard export.
DEC=$CACHE/bin/decode
go build -o "$DEC" ./bench/decode
gen_flags=(-layers "$LAYERS" -hidden "$HIDDEN" -experts "$EXPERTS" -topk "$TOPK" -inter "$INTER" -vocab "$VOCAB")
dec() { "$DEC" -dir "$MODEL_DIR" "${gen_flags[@]}" -brief -rounds 1 "$@"; }
if [ ! -f "$MODEL_DIR/config.json" ]; then
	say "generating the model ($shape) into $MODEL_DIR ..."
	dec -formats bf16 -tokens 0 >/dev/null
fi
# The folder must have the requested shape (a MODEL_DIR made for another).
want="\"(num_hidden_layers\": $LAYERS|hidden_size\": $HIDDEN|num_local_experts\": $EXPERTS|num_experts_per_tok\": $TOPK|intermediate_size\": $INTER|vocab_size\": $VOCAB),?\$"
[ "$(grep -cE "$want" "$MODEL_DIR/config.json")" = 6 ] || { say "$MODEL_DIR/config.json is not the shape $shape"; exit 1; }

SW=$CACHE/bin/switchyard
have_export=0 no_export="GGUF_CONVERTER=gguf-py"
if [ "$GGUF_CONVERTER" != gguf-py ]; then
	if ! go build -o "$SW" ./cmd/switchyard 2>"$CACHE/switchyard-build.log"; then
		no_export="go build ./cmd/switchyard failed"
		say "$no_export:"; head -20 "$CACHE/switchyard-build.log" >&2
	elif ! "$SW" export --help 2>&1 | grep -q -- '--gguf'; then
		no_export="switchyard has no export --gguf"
		say "$no_export"
	else
		have_export=1
	fi
fi
python=""
find_python() {
	for p in python3 /usr/bin/python3; do
		if command -v "$p" >/dev/null && "$p" -c 'import numpy' 2>/dev/null; then python=$p; return; fi
	done
	say "installing python3-numpy (for gguf-py) ..."
	sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends python3-numpy >&2 ||
		{ $sudo apt-get update >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends python3-numpy >&2; }
	python=/usr/bin/python3
}
# loads FILE: llama.cpp opens it and decodes one token; its log (with the
# "llama: weights ..." line: tensor types, bytes per token) in FILE.load.log.
loads() { llama_bench -m "$1" -t 1 -p 0 -n 1 >"$1.load.log" 2>&1; }
# ggufpy OUTTYPE: the gguf-py conversion (bench/peers/hf_to_gguf.py) into
# $gguf_file, made once.
ggufpy() {
	local t=$1
	gguf_file=$CACHE/gguf/$shape-$t-ggufpy.gguf
	if [ ! -s "$gguf_file" ] || [ "$gguf_file" -ot bench/peers/hf_to_gguf.py ] || [ "$gguf_file" -ot "$MODEL_DIR/config.json" ]; then
		[ -n "$python" ] || find_python
		say "gguf-py: bench/peers/hf_to_gguf.py --outtype $t -> $gguf_file"
		"$python" bench/peers/hf_to_gguf.py --gguf-py "$bundle/gguf-py" --model "$MODEL_DIR" \
			--outfile "$gguf_file.tmp" --outtype "$t" >&2
		mv "$gguf_file.tmp" "$gguf_file"
	fi
	loads "$gguf_file" || { say "llama.cpp refuses $gguf_file:"; tail -20 "$gguf_file.load.log" >&2; exit 1; }
}
# gguf OUTTYPE: sets gguf_file and gguf_how for bf16 or q8_0: switchyard
# export's file, else (missing, failed, or refused by llama.cpp) gguf-py's.
gguf() {
	local t=$1 f
	if [ "$have_export" = 1 ]; then
		f=$CACHE/gguf/$shape-$t-export.gguf
		# Made again when the model or the exporter's source is newer.
		if [ ! -s "$f" ] || [ "$f" -ot "$MODEL_DIR/config.json" ] ||
			[ -n "$(find cmd/switchyard/export.go pkg/gguf -name '*.go' -newer "$f" 2>/dev/null | head -1)" ]; then
			say "switchyard export --gguf $f --model $MODEL_DIR --outtype $t"
			rm -f "$f"
			"$SW" export --gguf "$f" --model "$MODEL_DIR" --outtype "$t" >&2 ||
				{ say "switchyard export --gguf failed (see above)"; rm -f "$f"; }
		fi
		if [ -s "$f" ]; then
			if loads "$f"; then
				gguf_file=$f gguf_how="switchyard export --outtype $t"
				return
			fi
			say "llama.cpp refuses $f (switchyard export --gguf --outtype $t):"
			tail -20 "$f.load.log" >&2
			export_errors="${export_errors:-}$t: $(grep -v '^llama: ' "$f.load.log" | tail -3 | tr '\n' ' ')"$'\n'
		fi
		[ "$GGUF_CONVERTER" = export ] && { say "GGUF_CONVERTER=export: no fallback"; exit 1; }
	fi
	say "FALLBACK: gguf-py conversion for --outtype $t"
	ggufpy "$t"
	gguf_how="FALLBACK gguf-py bench/peers/hf_to_gguf.py --outtype $t ($([ "$have_export" = 1 ] && echo "llama.cpp refused switchyard export's file" || echo "$no_export"))"
}
# wline FILE: the harness's "weights ..." line of that GGUF.
wline() { sed -n 's/^llama: weights //p' "$1.load.log"; }
wbytes() { wline "$1" | sed -n 's/.*bytes_per_token=\([0-9]*\).*/\1/p'; }
wtypes() { wline "$1" | sed 's/ *bytes_per_token=.*//'; }
gguf bf16
gguf_bf16=$gguf_file how_bf16=$gguf_how
gguf q8_0
gguf_q8=$gguf_file how_q8=$gguf_how
# Switchyard's --quantize int8 quantizes only the routed experts. If the
# Q8_0 file quantizes more (llama.cpp's own convention: every matrix but the
# router), also measure a Q8_0 file with only the experts Q8_0 (gguf-py):
# the same split of bytes as int8, so that row compares kernels alone.
gguf_q8x=""
if [ "${Q8_EXPERTS_ONLY:-1}" = 1 ] && [ "$(wtypes "$gguf_q8" | grep -o 'attn=[^ ]*')" != "attn=bf16" ]; then
	ggufpy q8_0
	gguf_q8x=$gguf_file
fi

# --- Measurements.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
raw=$tmp/raw.txt
: >"$raw"
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# A busy machine distorts both sides, llama.cpp's threads most: they spin at
# barriers and, with fewer free cores than threads, lose a time slice at each.
busy=""
if awk -v l="${load_before%% *}" 'BEGIN { exit !(l > 1.0) }'; then
	busy="WARNING: load average ${load_before%% *} before the run: the machine is busy; the results are not comparable"
	say "$busy"
fi
stamp() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) load=$(cut -d' ' -f1 /proc/loadavg)"; }
# record R T IMPL WEIGHTS KIND: reads a measurement line of bench/decode
# (switchyard: ...) or llama_bench (llama: ...) on stdin, appends one raw line.
# Decode lines carry the greedy tokens (the prompt is 1 2 3 4 on both
# sides): a check that both compute the same model.
record() {
	local out line v n g
	out=$(cat)
	line=$(echo "$out" | grep -E "${5}_tok_s=" | tail -1)
	[ -n "$line" ] || { say "no measurement from $3 $4 $5 (round $1, $2 threads)"; exit 1; }
	v=$(echo "$line" | sed -n "s/.*${5}_tok_s=\([0-9.]*\).*/\1/p")
	n=$(echo "$line" | sed -n "s/.*${5}_tokens=\([0-9]*\).*/\1/p")
	g=$(echo "$out" | sed -n 's/.*greedy=\([0-9,]*\).*/\1/p' | head -1)
	echo "$(stamp) round=$1 threads=$2 impl=$3 weights=$4 kind=$5 tokens=$n tok_s=$v${g:+ greedy=$g}" | tee -a "$raw" >&2
}
# greedy IMPL WEIGHTS: the first greedy tokens recorded for them.
greedy() { { grep " impl=$1 weights=$2 kind=decode " "$raw" || true; } | sed -n 's/.*greedy=//p' | head -1; }
# same A B: how many leading tokens two comma lists share.
same() { awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, ","); split(b, y, ","); for (i = 1; i <= n && x[i] == y[i]; i++); print i - 1 "/" n }'; }
sy() { # R T WEIGHTS KIND
	local fl=(-tokens "$TOKENS" -prefill 0)
	[ "$4" = prefill ] && fl=(-tokens 0 -prefill "$PREFILL")
	GOMAXPROCS=$2 dec -threads "$2" -formats "$3" "${fl[@]}" | record "$1" "$2" switchyard "$3" "$4"
}
ll() { # R T WEIGHTS KIND (WEIGHTS: BF16, Q8_0, Q8_0-experts)
	local f=$gguf_bf16 fl=(-p 0 -n "$TOKENS")
	[ "$3" = Q8_0 ] && f=$gguf_q8
	[ "$3" = Q8_0-experts ] && f=$gguf_q8x
	[ "$4" = prefill ] && fl=(-p "$PREFILL" -n 0)
	llama_bench -m "$f" -t "$2" "${fl[@]}" | record "$1" "$2" llama.cpp "$3" "$4"
}
# run R T KIND CMD...: the commands in order, or reversed every other round.
run() {
	local r=$1 t=$2 k=$3 c
	shift 3
	local cmds=("$@")
	if [ $(((r + t) % 2)) = 0 ]; then
		for ((c = ${#cmds[@]} - 1; c >= 0; c--)); do ${cmds[c]} "$r" "$t" "$k"; done
	else
		for c in "${cmds[@]}"; do $c "$r" "$t" "$k"; done
	fi
}
sy_bf16() { sy "$1" "$2" bf16 "$3"; }
sy_bf16c() { # prefill with --compute bf16 (batched products on bf16-rounded operands)
	GOMAXPROCS=$2 dec -threads "$2" -formats bf16 -compute bf16 -tokens 0 -prefill "$PREFILL" >"$tmp/bf16c.out"
	sed -n 's/^switchyard: compute=bf16 kernel=//p' "$tmp/bf16c.out" | head -1 >"$tmp/bf16c.kernel"
	record "$1" "$2" switchyard bf16c "$3" <"$tmp/bf16c.out"
}
ll_bf16() { ll "$1" "$2" BF16 "$3"; }
sy_int8() { sy "$1" "$2" int8 "$3"; }
ll_q8() { ll "$1" "$2" Q8_0 "$3"; }
ll_q8x() { ll "$1" "$2" Q8_0-experts "$3"; }

# Copy bandwidth (STREAM copy, bench/decode) and weight bytes per token.
for t in $THREADS; do
	GOMAXPROCS=$t dec -threads "$t" -copybw -formats bf16,int8 -tokens 0 >"$tmp/bw-$t.txt"
	echo "$(stamp) threads=$t $(grep copy_bw_gbs "$tmp/bw-$t.txt" | sed 's/^switchyard: threads=[0-9]* //')" | tee -a "$raw" >&2
done
bpt_bf16=$(sed -n 's/^switchyard: format=bf16 bytes_per_token=//p' "$tmp/bw-${THREADS%% *}.txt")
kernels=$(sed -n 's/^switchyard: kernels=//p' "$tmp/bw-${THREADS%% *}.txt" | head -1 | tr -d '"')
bpt_int8=$(sed -n 's/^switchyard: format=int8 bytes_per_token=//p' "$tmp/bw-${THREADS%% *}.txt")
lbpt_bf16=$(wbytes "$gguf_bf16") lbpt_q8=$(wbytes "$gguf_q8")
lbpt_q8x=0
[ -n "$gguf_q8x" ] && lbpt_q8x=$(wbytes "$gguf_q8x")

for r in $(seq 1 "$ROUNDS"); do
	for t in $THREADS; do
		say "round $r/$ROUNDS, $t thread(s)"
		run "$r" "$t" decode sy_bf16 ll_bf16
		run "$r" "$t" prefill sy_bf16 sy_bf16c ll_bf16
		if [ -n "$gguf_q8x" ]; then
			run "$r" "$t" decode sy_int8 ll_q8 ll_q8x
		else
			run "$r" "$t" decode sy_int8 ll_q8
		fi
	done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# --- Table: medians over rounds, ratio = median of per-round ratios.
# Row labels; the tensor types of each GGUF are in the header.
l_bf16="llama.cpp BF16 (bf16 weights, activations rounded to bf16)"
if [ "$(wtypes "$gguf_q8" | grep -o 'attn=[^ ]*')" = "attn=bf16" ]; then
	l_q8="llama.cpp Q8_0 routed experts (blocks of 32, activations Q8_0), the rest BF16"
else
	l_q8="llama.cpp Q8_0 every matrix but router and norms (llama.cpp's convention; blocks of 32, activations Q8_0)"
fi
l_q8x="llama.cpp Q8_0 routed experts only, the rest BF16 (int8's split of bytes; blocks of 32, activations Q8_0)"
table=$(awk -v bw_="" -v sb="$bpt_bf16" -v si="$bpt_int8" -v lb="$lbpt_bf16" -v lq="$lbpt_q8" -v lx="$lbpt_q8x" \
	-v P="$PREFILL" -v T="$TOKENS" -v l_bf16="$l_bf16" -v l_q8="$l_q8" -v l_q8x="$l_q8x" '
	function median(a, m,    i, j, x) {
		for (i = 2; i <= m; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
	}
	function field(k,    i, p) { for (i = 1; i <= NF; i++) { split($i, p, "="); if (p[1] == k) return p[2] } return "" }
	field("copy_bw_gbs") != "" { bw[field("threads")] = field("copy_bw_gbs") * 1e9; next }
	{ key = field("round") SUBSEP field("threads") SUBSEP field("impl") SUBSEP field("weights") SUBSEP field("kind"); v[key] = field("tok_s")
	  r = field("round"); if (r > R) R = r; t = field("threads"); if (!(t in ts)) { ts[t] = 1; tl[++nt] = t } }
	function row(label, t, sw, lw, kind, bsw, bll,    r, n, a, b, c, ms, ml, mr, k1, k2) {
		n = 0
		for (r = 1; r <= R; r++) {
			k1 = r SUBSEP t SUBSEP "switchyard" SUBSEP sw SUBSEP kind; k2 = r SUBSEP t SUBSEP "llama.cpp" SUBSEP lw SUBSEP kind
			if (!(k1 in v) || !(k2 in v)) continue
			n++; a[n] = v[k1]; b[n] = v[k2]; c[n] = v[k1] / v[k2]
		}
		if (n == 0) return
		ms = median(a, n); ml = median(b, n); mr = median(c, n)
		if (bsw > 0 && bll > 0 && (t in bw))
			printf "| %s | %s | %.2f | %.2f | **%.2f** | %.1f / %.1f | %.2f | %.2f |\n", label, t, ms, ml, mr, bw[t] / bsw, bw[t] / bll, ms / (bw[t] / bsw), ml / (bw[t] / bll)
		else
			printf "| %s | %s | %.2f | %.2f | **%.2f** | | | |\n", label, t, ms, ml, mr
	}
	END {
		print "| what is compared: Switchyard vs llama.cpp | threads | Switchyard tok/s | llama.cpp tok/s | Switchyard / llama.cpp | copy-bandwidth bound tok/s, Switchyard / llama.cpp bytes | Switchyard fraction of its bound | llama.cpp fraction of its bound |"
		print "|---|---:|---:|---:|---:|---:|---:|---:|"
		for (i = 1; i <= nt; i++) row("decode tok/s (" T " tokens, greedy): bf16 weights, f32 activations (Switchyard exact) vs " l_bf16, tl[i], "bf16", "BF16", "decode", sb, lb)
		for (i = 1; i <= nt; i++) row("prefill tok/s (" P "-token prompt, one batch): bf16 weights, f32 activations (Switchyard exact) vs " l_bf16, tl[i], "bf16", "BF16", "prefill", 0, 0)
		for (i = 1; i <= nt; i++) row("prefill tok/s (" P "-token prompt, one batch): Switchyard --compute bf16 (batched products on bf16-rounded activations and weights, f32 sums) vs " l_bf16, tl[i], "bf16c", "BF16", "prefill", 0, 0)
		for (i = 1; i <= nt; i++) row("decode tok/s (" T " tokens): routed experts int8 (--quantize int8: a scale per output channel, activations int8 per token), the rest bf16 vs " l_q8, tl[i], "int8", "Q8_0", "decode", si, lq)
		if (lx > 0) for (i = 1; i <= nt; i++) row("decode tok/s (" T " tokens): routed experts int8 (--quantize int8), the rest bf16 vs " l_q8x, tl[i], "int8", "Q8_0-experts", "decode", si, lx)
	}' "$raw")

dur=$(($(date +%s) - t_start))
{
	echo "# scripts/bench-peers.sh, $(date -u '+%Y-%m-%d %H:%M UTC')$([ "$SMOKE" = 1 ] && echo ' -- SMOKE RUN (small model), not a result')"
	echo "# cpu:       $cpu; flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_bf16|avx512_vnni|amx_bf16|amx_int8)$' | xargs)"
	echo "# go:        $(go version)"
	echo "# llama.cpp: libllama from npm @node-llama-cpp/linux-x64@${llama_version:-?} (llama.cpp ${llama_release:-?}, bundle commit $llama_commit), $libdir"
	echo "#            $(sed -n 's/^llama: system_info=//p' "$gguf_bf16.load.log")"
	echo "# model:     generated mixtral-style, $LAYERS layers, hidden $HIDDEN, $EXPERTS experts top-$TOPK, expert inter $INTER, vocab $VOCAB, bf16 ($MODEL_DIR)"
	echo "# gguf bf16: $gguf_bf16 ($(du -m "$gguf_bf16" | cut -f1) MB) by $how_bf16"
	echo "#            $(wtypes "$gguf_bf16")"
	echo "# gguf q8_0: $gguf_q8 ($(du -m "$gguf_q8" | cut -f1) MB) by $how_q8"
	echo "#            $(wtypes "$gguf_q8")"
	[ -n "$gguf_q8x" ] && echo "# gguf q8_0 experts only: $gguf_q8x ($(du -m "$gguf_q8x" | cut -f1) MB) by gguf-py bench/peers/hf_to_gguf.py --outtype q8_0" &&
		echo "#            $(wtypes "$gguf_q8x")"
	[ -n "${export_errors:-}" ] && echo "# llama.cpp refused switchyard export's GGUF: $export_errors"
	echo "# (raw: Switchyard = bench/decode -brief, llama.cpp = bench/peers/llama_bench.c; one process per measurement)"
	echo "# command:   ROUNDS=$ROUNDS THREADS=\"$THREADS\" TOKENS=$TOKENS PREFILL=$PREFILL$([ "$SMOKE" = 1 ] && echo ' BENCH_PEERS_SMOKE=1') scripts/bench-peers.sh ($dur s)"
	echo "# load avg:  $load_before (before), $load_after (after)"
	[ -n "$busy" ] && echo "# $busy"
	echo "# threads:   GOMAXPROCS (and bench/decode -threads) = llama.cpp n_threads = n_threads_batch = the threads column"
	echo "# settings:  llama.cpp: CPU only, mmap, its defaults otherwise (flash attention auto, KV cache f16, CPU variant"
	echo "#            $(grep -ho 'libggml-cpu-[a-z0-9]*' "$gguf_bf16.load.log" 2>/dev/null | head -1 || echo '?') chosen at run time); Switchyard: weights in memory, KV cache f32"
	echo "# --compute bf16 kernel on this CPU: $(cat "$tmp/bf16c.kernel" 2>/dev/null || echo '?')"
	echo "# Switchyard float kernels: $kernels"
	echo "# bytes/token (weights read per decode token): Switchyard bf16 $bpt_bf16, int8 experts $bpt_int8;"
	echo "#            llama.cpp BF16 $lbpt_bf16, Q8_0 $lbpt_q8$([ -n "$gguf_q8x" ] && echo ", Q8_0 experts only $lbpt_q8x") (from the GGUF's tensor table)"
	echo "# copy-bandwidth bound = copy bandwidth (STREAM copy, (read+written bytes)/s of a 1 GiB memory copy over"
	echo "#            that many goroutines, measured by bench/decode -copybw in this run) / bytes per token"
	g1=$(greedy switchyard bf16) g2=$(greedy llama.cpp BF16) g3=$(greedy switchyard int8) g4=$(greedy llama.cpp Q8_0) g5=$(greedy llama.cpp Q8_0-experts)
	echo "# greedy tokens after the prompt 1 2 3 4 (do both compute the same model? the weights are random, so"
	echo "#            near-ties can split them; llama.cpp rounds activations to bf16 / Q8_0, Switchyard keeps f32 / int8):"
	echo "#            switchyard bf16           $g1"
	echo "#            llama.cpp BF16            $g2 (leading tokens equal to switchyard bf16: $(same "$g1" "$g2"))"
	echo "#            switchyard int8           $g3"
	echo "#            llama.cpp Q8_0            $g4 (equal to switchyard int8: $(same "$g3" "$g4"))"
	[ -n "$gguf_q8x" ] && echo "#            llama.cpp Q8_0 experts    $g5 (equal to switchyard int8: $(same "$g3" "$g5"))"
	echo "# raw:"
	sed 's/^/  /' "$raw"
	echo
	echo "$table"
} >"$OUT"
{
	echo "Switchyard vs llama.cpp ($([ "$SMOKE" = 1 ] && echo 'SMOKE RUN, small model: ')scripts/bench-peers.sh, $(date -u '+%Y-%m-%d'); $cpu;"
	echo "llama.cpp: node-llama-cpp ${llama_version:-?} prebuilt libllama, llama.cpp ${llama_release:-?}; GGUF by $how_bf16 / $how_q8;"
	echo "model: generated mixtral-style, $LAYERS layers, hidden $HIDDEN, $EXPERTS experts top-$TOPK, expert inter $INTER, vocab $VOCAB;"
	echo "$ROUNDS interleaved rounds, medians; ratio = median of per-round ratios; load average $load_before before, $load_after after; raw lines in $(basename "$OUT"))."
	echo
	echo "Switchyard --compute bf16 runs $(cat "$tmp/bf16c.kernel" 2>/dev/null || echo '?') on this CPU; its float kernels: $kernels."
	echo
	echo "Greedy tokens after the same prompt (a check that both compute the same model; random weights, so near-ties may split them):"
	echo "bf16 vs llama.cpp BF16 agree on $(same "$g1" "$g2") leading tokens, int8 vs llama.cpp Q8_0 on $(same "$g3" "$g4")$([ -n "$gguf_q8x" ] && echo ", int8 vs Q8_0 experts only on $(same "$g3" "$g5")")."
	[ -n "$busy" ] && echo && echo "**$busy**"
	echo
	echo "$table"
} >"$MD"
cat "$OUT"
say "wrote $OUT and $MD in $dur s"
