#!/usr/bin/env bash
# scale-scenarios.sh writes docs/scale/README.md's tables with `switchyard
# simulate` (pkg/simulate). What is modeled so far: the dense-gradient
# all-reduce of data+expert-parallel training. Takes about a minute.
#
#   scripts/scale-scenarios.sh [OUT]     default OUT: docs/scale/tables.md
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/scale/tables.md}
go build -o bin/switchyard ./cmd/switchyard
# Mixtral-8x22B (hidden 6144, 56 layers, 48 query / 8 key-value heads of
# 128, vocabulary 32768, untied head): the parameters every data-parallel
# rank holds and all-reduces (attention, embeddings, head, routers, norms).
dense=$((32768 * 6144 * 2 + 56 * (6144 * 6144 * 2 + 6144 * 1024 * 2 + 6144 * 8 + 6144 * 2) + 6144))
{
	echo "<!-- written by scripts/scale-scenarios.sh on $(date -u +%Y-%m-%d); model: pkg/simulate (all-reduce) -->"
	echo
	echo "Mixtral-8x22B-shaped training, data+expert parallel: every step all-reduces the dense gradients, $dense parameters:"
	echo "$((dense * 4)) bytes in float32, half that with bf16 on the wire (collective's bf16 format). Routed experts (135 B parameters) stay with their owners and are not all-reduced."
	for rate in 25gbit 100gbit; do
		for wire in f32 bf16; do
			b=$((dense * 4))
			[[ $wire == bf16 ]] && b=$((dense * 2))
			echo
			echo "### $rate, $wire on the wire ($b bytes): one all-reduce per step"
			echo
			echo '```'
			echo "\$ switchyard simulate allreduce --hosts 16,64,256,1024 --rate $rate --bytes $b --latency 10us --msg-cpu 5us --cores 4"
			bin/switchyard simulate allreduce --hosts 16,64,256,1024 --rate "$rate" --bytes "$b" --latency 10us --msg-cpu 5us --cores 4
			echo '```'
		done
	done
} >"$out"
echo "wrote $out"
