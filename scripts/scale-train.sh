#!/usr/bin/env bash
# scale-train.sh writes the generated part of docs/scale/training.md (the
# text between its "scale-train.sh: begin" and "end" markers) and the plots
# docs/scale/train-*.png with `switchyard simulate train`
# (pkg/simulate.PredictTrainStep): a Mixtral-8x22B-shaped model trained
# data + expert parallel on 16 to 1024 workers at 25 and 100 GbE, on the
# calibration measured on this project's AMD VM, plus variants (an
# oversubscribed fabric, --compute bf16, fewer tokens per rank, the
# built-in ASSUMED calibration). Pure prediction, no cluster: about a
# minute on 2 cores.
#
#   scripts/scale-train.sh [CALIBRATION]   default bench/results/calibration-amd.json
set -euo pipefail
cd "$(dirname "$0")/.."
cal=${1:-bench/results/calibration-amd.json}
doc=docs/scale/training.md
go build -o bin/switchyard ./cmd/switchyard
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The hosts: 32 cores and 512 GiB each (ASSUMED), 10 us one-way latency,
# 32 hosts per leaf switch, non-blocking or 3:1 oversubscribed uplinks.
echo '{"workers": 1, "cores": 32, "memory": "512GiB", "latency": "10us", "hosts_per_leaf": 32}' >"$tmp/cluster.json"
echo '{"workers": 1, "cores": 32, "memory": "512GiB", "latency": "10us", "hosts_per_leaf": 32, "oversubscription": 3}' >"$tmp/cluster-3to1.json"
run() {
	echo
	echo '```'
	echo "\$ switchyard simulate train $*" | sed "s#$tmp/##g"
	echo '```'
	echo
	bin/switchyard simulate train --markdown "$@"
}
{
	echo "<!-- written by scripts/scale-train.sh on $(date -u +%Y-%m-%d) from $cal ($(sed -n 's/.*"cpu": "\(.*\)",/\1/p' "$cal")); model: pkg/simulate.PredictTrainStep -->"
	echo
	echo "The cluster files (\`--cluster\`; the sweep sets workers and NIC):"
	echo
	echo '```'
	echo "cluster.json:       $(cat "$tmp/cluster.json")"
	echo "cluster-3to1.json:  $(cat "$tmp/cluster-3to1.json")"
	echo '```'
	echo
	echo "### Main scenario: 32-core hosts of 512 GiB, non-blocking fabric"
	run --calibration "$cal" --cluster "$tmp/cluster.json" --nic 25gbit,100gbit --plot-dir docs/scale | grep -v '^wrote '
	echo
	echo "### The same on a 3:1 oversubscribed leaf-spine fabric (32 hosts per leaf), 25 GbE"
	run --calibration "$cal" --cluster "$tmp/cluster-3to1.json" --nic 25gbit --workers 64,256,1024
	echo
	echo "### Products with bf16-rounded operands (--compute bf16), 100 GbE"
	run --calibration "$cal" --cluster "$tmp/cluster.json" --nic 100gbit --workers 16,64,256,1024 --compute bf16
	echo
	echo "### 1024 tokens per rank (one sequence) instead of 4096, 100 GbE"
	run --calibration "$cal" --cluster "$tmp/cluster.json" --nic 100gbit --workers 16,64,256,1024 --tokens-per-rank 1024
	echo
	echo "### The built-in ASSUMED calibration instead of the measured one, 100 GbE"
	run --cluster "$tmp/cluster.json" --nic 100gbit --workers 16,64,256,1024
} >"$tmp/generated.md"
awk -v gen="$tmp/generated.md" '
	/<!-- scale-train.sh: begin -->/ { print; while ((getline line < gen) > 0) print line; skip = 1; next }
	/<!-- scale-train.sh: end -->/ { skip = 0 }
	!skip { print }
' "$doc" >"$tmp/doc.md"
grep -q '<!-- scale-train.sh: end -->' "$tmp/doc.md" || { echo "scale-train.sh: $doc lacks the begin/end markers" >&2; exit 1; }
cp "$tmp/doc.md" "$doc"
echo "wrote $doc and docs/scale/train-*.png"
