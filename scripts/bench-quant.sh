#!/usr/bin/env bash
# Quantized routed experts (serve --quantize): speed and quality, side by side.
#  1. decode of the generated 4.6 GB Mixtral-style bf16 model
#     (scripts/bench-decode.sh's) with its routed experts as bf16, int8 and
#     q4, in interleaved rounds: tokens/s, fraction of the bandwidth bound,
#     speed-up over bf16, and where a token's time goes;
#  2. quality on a model trained with `switchyard train` (dsv3-tiny on the
#     bundled book, 600 steps; trained once into $TRAIN): perplexity on the
#     run's held-out windows and the mean KL divergence of next-token
#     distributions from the bf16 model's.
# Results: bench/results/quant.md.
#   scripts/bench-quant.sh [DECODE_DIR] [TRAIN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${TMPDIR:-/tmp}/switchyard-bench-decode}
TRAIN=${2:-${TMPDIR:-/tmp}/switchyard-bench-quant-train}
TEXT=cmd/switchyard/quickstart_opticks.txt
out=bench/results/quant.md
ck=$TRAIN/checkpoint-0000600
if [ ! -f "$ck/model.safetensors" ]; then
	echo "training dsv3-tiny for 600 steps into $TRAIN ..." >&2
	go run ./cmd/switchyard train --preset dsv3-tiny --text "$TEXT" --steps 600 \
		--eval-every 100 --save-every 600 --out "$TRAIN" >&2
fi
{
	echo "# scripts/bench-quant.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo
	echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
		"flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8)$' | xargs); $(go version)"
	echo
	echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo
	echo "## Decode speed (go run ./bench/decode -tokens 32 -rounds 5 -formats bf16,int8,q4)"
	echo
	go run ./bench/decode -dir "$DIR" -tokens 32 -rounds 5 -formats bf16,int8,q4
	echo
	echo "## Quality (go run ./bench/quant -model $ck -text $TEXT)"
	echo
	go run ./bench/quant -model "$ck" -text "$TEXT"
	echo
	echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
