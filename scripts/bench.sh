#!/usr/bin/env bash
# All single-machine benchmarks, each writing its latest results under
# bench/results/:
#   GEMM/GEMV vs OpenBLAS side by side (scripts/bench-gemm.sh -> gemm.txt)
#   decode tokens/s vs the memory-bandwidth bound (scripts/bench-decode.sh -> decode.txt)
#   training tokens/s and step-time shares of the dsv3-tiny preset (-> train.txt)
# The emulated-cluster collectives benchmark is scripts/bench-collectives.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bench-gemm.sh
scripts/bench-decode.sh
go run ./bench/train -steps 20 | tee bench/results/train.txt
