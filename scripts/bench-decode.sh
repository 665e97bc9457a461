#!/usr/bin/env bash
# Decode throughput of a generated MoE model (8 layers, hidden 1024, 32 experts
# top-4, expert intermediate 2816, vocab 32000, bf16 weights: ~4.6 GB) next to
# the memory-bandwidth bound measured in the same run (weight bytes read per
# token / copy bandwidth), with the routed experts as bf16 and quantized to int8
# and q4 (serve --quantize), in interleaved rounds. The model is generated once
# into $DIR.
#   scripts/bench-decode.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${TMPDIR:-/tmp}/switchyard-bench-decode}
out=bench/results/decode.txt
{
	echo "# scripts/bench-decode.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
	echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(go version)"
	echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
	go run ./bench/decode -dir "$DIR" -tokens 32 -rounds 3 -formats bf16,int8,q4
	echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
