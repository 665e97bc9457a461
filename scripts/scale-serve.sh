#!/usr/bin/env bash
# scale-serve.sh makes the serving scenario of docs/scale/serving.md with
# `switchyard simulate serve` (pkg/simulate's serving model): DeepSeek-V3
# (671 B, 256 routed experts top-8, 1 shared, MLA) in bf16 on 8 to 256 CPU
# servers with 25 and 100 GbE, one front end per 4 workers; the skew sweep
# (Zipf 0, 0.5, 1 with and without hot replicas, three ways of choosing
# copies; Mixtral-8x22B for contrast); recovery from a dead worker; and
# the validation against the emulated serving runs. It
# rewrites the part of docs/scale/serving.md between the "scale-serve.sh"
# markers and the docs/scale/serve-*.png plots. A few minutes on 2 cores.
#
#   scripts/scale-serve.sh [DOC]     default DOC: docs/scale/serving.md
#
# Host assumptions (ASSUMED, not measured: no such cluster was run): 64
# cores, 768 GiB of memory of which 32 GiB is kept for the OS and runtime,
# 300 GB/s of memory bandwidth per host (two sockets of 8-channel DDR4-3200,
# about 75% of the 409.6 GB/s peak), 10 us one-way latency, a non-blocking
# leaf-spine; front ends are hosts of the same kind. Costs: the built-in
# calibration (pkg/simulate.AssumedCalibration: the committed benchmarks
# of a 2-vCPU Xeon, per core, scaled linearly in cores).
set -euo pipefail
cd "$(dirname "$0")/.."
doc=${1:-docs/scale/serving.md}
plots=$(dirname "$doc")
export PATH=$PATH:/usr/local/go/bin
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/switchyard" ./cmd/switchyard
sy=$tmp/switchyard
hosts=(--model deepseek-v3 --cores 64 --memory 768GiB --reserve 32GiB --mem-bandwidth 300GB/s --latency 10us --replicas 2 --context 1024)

run() { # run NAME ARGS...: the command and its output, as a markdown code block
	local name=$1
	shift
	{
		echo '```'
		echo "\$ switchyard simulate serve $*"
		"$sy" simulate serve "$@"
		echo '```'
	} >"$tmp/$name.md"
	echo "scale-serve: $name done" >&2
}

run sweep "${hosts[@]}" --workers 8,16,32,64,128,256 --nic 25gbit,100gbit --frontends N/4 --batch 1,32,128 --steps 8 \
	--load-rate nic --plot-dir "$plots"
run small "${hosts[@]}" --workers 2,3,4 --nic 25gbit --frontends 1 --batch 1 --steps 2 --recovery=false
run skew "${hosts[@]}" --workers 64 --nic 100gbit --frontends N/4 --batch 32 --steps 8 --zipf 0,0.5,1 --hot-replicas 0,32 \
	--replica-choice client,primary,split --recovery=false --plot-dir "$plots"
run mixtral --model mixtral-8x22b --cores 64 --memory 768GiB --reserve 32GiB --mem-bandwidth 300GB/s --latency 10us --replicas 2 \
	--context 1024 --workers 16 --nic 100gbit --frontends N/4 --batch 32 --steps 8 --zipf 0,0.5,1 --hot-replicas 0,4 \
	--replica-choice client,primary,split --recovery=false --plot-dir "$plots" --plot-prefix serve-mixtral
go test -count=1 -run 'TestPredictServeBench$' -v ./pkg/simulate/ | grep -E 'clients:' | sed 's/^ *serve_test.go:[0-9]*: //' >"$tmp/validate.txt"

{
	echo "<!-- scale-serve.sh: written by scripts/scale-serve.sh on $(date -u +%Y-%m-%d); do not edit by hand between these markers -->"
	echo
	echo "### The sweep: 8 to 256 workers, 25 and 100 GbE, batch 1, 32 and 128 per front end"
	echo
	cat "$tmp/sweep.md"
	echo
	echo "### Fewer hosts: where DeepSeek-V3 stops fitting (768 GiB hosts, 2 copies)"
	echo
	cat "$tmp/small.md"
	echo
	echo "### Skew: Zipf 0, 0.5 and 1, with and without 32 hot replicas per layer (64 workers, 100 GbE, batch 32)"
	echo
	cat "$tmp/skew.md"
	echo
	echo "### For contrast, Mixtral-8x22B (8 experts top-2): 16 workers, 100 GbE, batch 32, 4 hot replicas per layer"
	echo
	cat "$tmp/mixtral.md"
	echo
	echo "### Validation: bench/results/serve.txt predicted with ServeBenchCalibration"
	echo
	echo '```'
	echo '$ go test -run TestPredictServeBench -v ./pkg/simulate/'
	cat "$tmp/validate.txt"
	echo '```'
	echo
	echo "<!-- /scale-serve.sh -->"
} >"$tmp/generated.md"

if [ -f "$doc" ] && grep -q '^<!-- scale-serve.sh' "$doc"; then
	awk -v gen="$tmp/generated.md" '
		/^<!-- scale-serve.sh/ { while ((getline l < gen) > 0) print l; skip = 1; next }
		/^<!-- \/scale-serve.sh -->/ { skip = 0; next }
		!skip { print }
	' "$doc" >"$tmp/doc.md"
	cp "$tmp/doc.md" "$doc"
else
	cp "$tmp/generated.md" "$doc"
fi
echo "scale-serve: wrote $doc and $plots/serve-*.png" >&2
