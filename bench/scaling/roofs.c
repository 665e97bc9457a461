// roofs measures what the machine itself gives 1, 2, ... threads, with no
// Switchyard code, so that scripts/bench-scaling.sh can set Switchyard's
// thread scaling beside the machine's:
//
//   roofs read T   T threads each sum their contiguous share of one 1 GiB
//                  buffer (no stores; the hardware prefetcher's sequential
//                  stream): bytes read / s, the roof of a decode that reads
//                  every weight from memory once per token. Prints
//                  "roofs: threads=T read_bw_gbs=X".
//   roofs fma T    T threads each run independent chains of multiply-adds
//                  on registers (no memory traffic): the cores' arithmetic,
//                  which a VM's other tenants share. The vectors are as
//                  wide as Switchyard's GEMM kernels use on the CPU: 16
//                  floats where the compiler targets AVX-512 (512-bit FMAs
//                  draw more power, and on some CPUs run at a lower clock,
//                  than 256-bit ones, so an 8-float roof overstates what
//                  two cores of AVX-512 GEMM can scale to), else 8.
//                  Prints "roofs: threads=T fma_gflops=X lanes=L".
//
// Each is the median of 5 passes (the median, not the best: the
// Switchyard runs it is set beside are single measurements). Plain C the compiler vectorizes (GCC
// vector extensions; built with gcc -O3 -march=native, so a*b+c is one
// FMA where the CPU has it).
//
//   gcc -O3 -march=native -pthread roofs.c -o roofs && ./roofs read 2
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BYTES = 1 << 30, REPS = 5, MAXT = 64, FMA_ITERS = 20000000 };

// vf is the FMA roof's vector: LANES floats.
#ifdef __AVX512F__
enum { LANES = 16 };
#else
enum { LANES = 8 };
#endif
typedef float vf __attribute__((vector_size(LANES * 4)));

static uint64_t *buf;
static int nthreads;
static uint64_t sums[MAXT * 8]; // one cache line per thread
static float fsums[MAXT * 16]; // one 64-byte vector per thread

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *readShare(void *arg) {
	long id = (long)arg;
	size_t n = BYTES / sizeof(uint64_t) / nthreads;
	const uint64_t *p = buf + id * n;
	uint64_t acc[8] = {0};
	for (size_t i = 0; i < n; i += 8)
		for (int j = 0; j < 8; j++)
			acc[j] += p[i + j];
	for (int j = 1; j < 8; j++)
		acc[0] += acc[j];
	sums[id * 8] = acc[0];
	return NULL;
}

// fmaChains runs 12 independent FMA chains (enough to cover a 4-cycle
// latency at 2 FMAs a cycle) FMA_ITERS times: 12 * LANES * 2 flops a step.
static void *fmaChains(void *arg) {
	long id = (long)arg;
	vf m, c;
	for (int i = 0; i < LANES; i++)
		m[i] = 0.999999f, c[i] = 1e-7f;
	vf x0 = m, x1 = m + c, x2 = m + 2 * c, x3 = m + 3 * c, x4 = m + 4 * c, x5 = m + 5 * c;
	vf x6 = m + 6 * c, x7 = m + 7 * c, x8 = m + 8 * c, x9 = m + 9 * c, x10 = m + 10 * c, x11 = m + 11 * c;
	for (long it = 0; it < FMA_ITERS; it++) {
		x0 = x0 * m + c, x1 = x1 * m + c, x2 = x2 * m + c, x3 = x3 * m + c;
		x4 = x4 * m + c, x5 = x5 * m + c, x6 = x6 * m + c, x7 = x7 * m + c;
		x8 = x8 * m + c, x9 = x9 * m + c, x10 = x10 * m + c, x11 = x11 * m + c;
		__asm__ volatile("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(x3), "+x"(x4), "+x"(x5));
	}
	vf s = x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11;
	memcpy(&fsums[id * 16], &s, sizeof s);
	return NULL;
}

static double pass(void *(*fn)(void *)) {
	pthread_t th[MAXT];
	double t0 = now();
	for (long i = 0; i < nthreads; i++)
		pthread_create(&th[i], NULL, fn, (void *)i);
	for (int i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	return now() - t0;
}

// median sorts the REPS values in place and returns the middle one.
static double median(double *v) {
	for (int i = 0; i < REPS; i++)
		for (int j = i + 1; j < REPS; j++)
			if (v[j] < v[i]) {
				double t = v[i];
				v[i] = v[j];
				v[j] = t;
			}
	return v[REPS / 2];
}

int main(int argc, char **argv) {
	if (argc != 3 || (strcmp(argv[1], "read") && strcmp(argv[1], "fma"))) {
		fprintf(stderr, "usage: roofs read|fma THREADS\n");
		return 2;
	}
	nthreads = atoi(argv[2]);
	if (nthreads < 1 || nthreads > MAXT) {
		fprintf(stderr, "roofs: threads must be 1..%d\n", MAXT);
		return 2;
	}
	double rates[REPS];
	if (!strcmp(argv[1], "fma")) {
		for (int r = 0; r < REPS; r++)
			rates[r] = (double)nthreads * FMA_ITERS * 12 * LANES * 2 / pass(fmaChains);
		printf("roofs: threads=%d fma_gflops=%.2f lanes=%d\n", nthreads, median(rates) / 1e9, LANES);
		return 0;
	}
	buf = aligned_alloc(4096, BYTES);
	if (!buf) {
		fprintf(stderr, "roofs: out of memory\n");
		return 1;
	}
	memset(buf, 1, BYTES); // fault the pages in
	for (int r = 0; r < REPS; r++)
		rates[r] = BYTES / pass(readShare);
	uint64_t check = 0; // every word is 0x0101010101010101 (mod 2^64)
	for (int i = 0; i < nthreads; i++)
		check += sums[i * 8];
	if (check != (uint64_t)(BYTES / 8) * 0x0101010101010101ull) {
		fprintf(stderr, "roofs: wrong sum %llu\n", (unsigned long long)check);
		return 1;
	}
	printf("roofs: threads=%d read_bw_gbs=%.2f\n", nthreads, median(rates) / 1e9);
	return 0;
}
