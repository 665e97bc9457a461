// Package openblas benchmarks Switchyard's tensor.Gemm side by side with
// OpenBLAS (cblas_sgemm / cblas_sgemv) on the shapes Switchyard runs.
//
// Everything but this file needs cgo and libopenblas and is behind the
// build tag `openblas`, so `go build ./...`, `go vet ./...` and
// `go test ./...` never need either. Run the comparison with
// scripts/bench-gemm.sh, or by hand:
//
//	OPENBLAS_CORETYPE=SkylakeX GOMAXPROCS=1 OPENBLAS_NUM_THREADS=1 \
//	    go test -tags openblas -run '^$' -bench Compare ./bench/openblas
//
// OPENBLAS_CORETYPE matters: OpenBLAS 0.3.21 does not recognise Emerald
// Rapids and otherwise falls back to a generic kernel 10x slower.
package openblas
