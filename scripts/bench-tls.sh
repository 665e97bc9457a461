#!/usr/bin/env bash
# bench-tls.sh: what mutual TLS costs, measured side by side in one run on
# loopback (the same process, the same machine state):
#   - one MoE layer's expert exchange (4 workers, top-4 of 16 experts,
#     D = 1024; tokens 1, 64, 1024) and one unary round trip, plaintext vs
#     mutual TLS (pkg/transport BenchmarkExchange);
#   - a collective group of 4: a 4 KiB all-reduce on the lanes and over
#     gRPC, and a 1 MiB ring, plaintext (with and without lane polling) vs
#     TLS (pkg/collective BenchmarkSmallAllReduceTLS).
# Writes bench/results/tls.txt (CPU model and load average in its header).
#
#   scripts/bench-tls.sh [BENCHTIME]     (default 2000x for the exchange)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000x}
out=bench/results/tls.txt
{
	echo "# scripts/bench-tls.sh $n  ($(date -u +%Y-%m-%dT%H:%MZ))"
	echo "# cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "# exchange: go test -run '^\$' -bench Exchange -benchtime $n ./pkg/transport"
	go test -run '^$' -bench Exchange -benchtime "$n" ./pkg/transport | grep '^Benchmark'
	echo "# collectives: go test -run '^\$' -bench SmallAllReduceTLS -benchtime 2s ./pkg/collective"
	go test -run '^$' -bench SmallAllReduceTLS -benchtime 2s ./pkg/collective | grep '^Benchmark'
} | tee "$out"
