#!/usr/bin/env bash
# All single-machine benchmarks, each writing its latest results under
# bench/results/:
#   GEMM/GEMV vs OpenBLAS side by side (scripts/bench-gemm.sh -> gemm.txt)
#   decode tokens/s vs the memory-bandwidth bound (scripts/bench-decode.sh -> decode.txt)
#   training tokens/s and step-time shares of the dsv3-tiny preset, exact and
#     --compute bf16 interleaved (-> train.txt)
#   400 training steps exact vs --compute bf16 from the same start: the loss
#     curves' difference and the KL of the trained model's next-token
#     distributions (-> train-bf16-curve.txt, .csv, .png; about 6 minutes)
# The emulated-cluster collectives benchmark is scripts/bench-collectives.sh;
# the llama.cpp comparison is scripts/bench-peers.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bench-gemm.sh
scripts/bench-decode.sh
go run ./bench/train -steps 20 -compute exact,bf16 | tee bench/results/train.txt
go run ./bench/train -curve 400 -curve-out bench/results/train-bf16-curve.csv | tee bench/results/train-bf16-curve.txt
