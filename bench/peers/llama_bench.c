// llama_bench.c: prefill and decode throughput of one GGUF model with
// llama.cpp's library (libllama), the llama.cpp side of
// scripts/bench-peers.sh. It measures what bench/decode -brief measures on
// Switchyard's side, the same way:
//
//   prefill: one llama_decode of a P-token prompt (pseudo-random ids from
//            the LCG bench/decode uses) on an empty cache, logits of the
//            last token only; tokens/s = P / time.
//   decode:  a 4-token prompt (ids 1 2 3 4), one untimed step, then T
//            steps of one token each, greedy (argmax of the logits);
//            tokens/s = T / time.
//
// Before timing: one untimed warm-up (a short prompt with llama_set_warmup,
// which runs every expert, so every weight page is touched, then one
// prefill of the timed prompt's length, as llama.cpp's llama-bench warms
// up with the test itself, and a few decode steps; bench/decode does the
// same). CPU only (n_gpu_layers 0), mmap on, n_threads and
// n_threads_batch both = -t. Each timed measurement is repeated -r times
// (default 1) and printed on its own line:
//
//   llama: threads=2 round=1 prefill_tokens=512 prefill_tok_s=123.4
//   llama: threads=2 round=1 decode_tokens=32 decode_tok_s=30.1
//
// Build (scripts/bench-peers.sh does this; node-llama-cpp 3.22.1 ships
// libllama.v0.5.0.so, libggml.v0.5.0.so, libggml-base.so and the CPU
// variants libggml-cpu-*.so, loaded at run time from -B DIR):
//   gcc -O2 -std=c11 -I LLAMA/include -I LLAMA/ggml/include -o llama_bench
//       llama_bench.c LIBDIR/libllama*.so LIBDIR/libggml*.so -Wl,-rpath,LIBDIR
// Usage: llama_bench -m MODEL.gguf [-t THREADS] [-p PROMPT] [-n TOKENS]
//                    [-r REPS] [-B BACKEND_DIR] [-v]
#define _POSIX_C_SOURCE 199309L // clock_gettime
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

static bool verbose = false;

// log_cb passes on llama.cpp's errors (everything with -v); a CONT piece
// belongs to the message before it.
static void log_cb(enum ggml_log_level level, const char *text, void *ud) {
	static enum ggml_log_level last = GGML_LOG_LEVEL_INFO;
	(void)ud;
	if (level == GGML_LOG_LEVEL_CONT) {
		level = last;
	}
	last = level;
	if (verbose || level == GGML_LOG_LEVEL_ERROR) {
		fputs(text, stderr);
	} else if (strstr(text, "loaded CPU backend from")) {
		fputs(text, stderr); // which libggml-cpu-<variant>.so serves this CPU
	}
}

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, int rc) {
	fprintf(stderr, "llama_bench: %s (rc %d)\n", what, rc);
	exit(1);
}

static llama_token argmax(const float *x, int n) {
	int best = 0;
	for (int i = 1; i < n; i++) {
		if (x[i] > x[best]) {
			best = i;
		}
	}
	return (llama_token)best;
}

// prompt fills ids with n pseudo-random token ids in [1, vocab): the LCG of
// bench/decode (x = x*1103515245 + 12345 mod 2^32, id = 1 + (x>>8) % (vocab-1)).
static void prompt(llama_token *ids, int n, int vocab) {
	uint32_t x = 12345;
	for (int i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		ids[i] = (llama_token)(1 + (x >> 8) % (uint32_t)(vocab - 1));
	}
}

static void clear(struct llama_context *ctx) {
	llama_memory_clear(llama_get_memory(ctx), true);
}

static void eval(struct llama_context *ctx, llama_token *ids, int n) {
	int rc = llama_decode(ctx, llama_batch_get_one(ids, n));
	if (rc != 0) {
		die("llama_decode failed", rc);
	}
	llama_synchronize(ctx);
}

// greedy holds the last decode_rate's first tokens (the prompt's argmax,
// the untimed step's, then the timed ones), as bench/decode prints them.
#define NGREEDY 16
static llama_token greedy[NGREEDY];
static int ngreedy;

static void keep(llama_token t) {
	if (ngreedy < NGREEDY) {
		greedy[ngreedy++] = t;
	}
}

// decode_rate: a fresh sequence, the 4-token prompt, one untimed step, then
// n timed greedy steps; returns tokens/s.
static double decode_rate(struct llama_context *ctx, int vocab, int n) {
	clear(ctx);
	ngreedy = 0;
	llama_token ids[4] = {1, 2, 3, 4};
	eval(ctx, ids, 4);
	llama_token next = argmax(llama_get_logits_ith(ctx, -1), vocab);
	keep(next);
	eval(ctx, &next, 1);
	next = argmax(llama_get_logits_ith(ctx, -1), vocab);
	keep(next);
	double t0 = now();
	for (int i = 0; i < n; i++) {
		eval(ctx, &next, 1);
		next = argmax(llama_get_logits_ith(ctx, -1), vocab);
		keep(next);
	}
	return (double)n / (now() - t0);
}

// prefill_rate: one llama_decode of the n-token prompt on an empty cache.
static double prefill_rate(struct llama_context *ctx, int vocab, int n) {
	llama_token *ids = malloc(sizeof(llama_token) * (size_t)n);
	prompt(ids, n, vocab);
	clear(ctx);
	double t0 = now();
	eval(ctx, ids, n);
	(void)argmax(llama_get_logits_ith(ctx, -1), vocab);
	double el = now() - t0;
	free(ids);
	return (double)n / el;
}

// weights prints, from the GGUF's tensor table, the types of each kind of
// weight and the bytes a decode token reads (as bench/decode counts them:
// every tensor but the embedding table, one row of it, and n_used of
// n_expert experts of each stacked expert tensor):
//   llama: weights embd=BF16 attn=BF16 experts=Q8_0 router=F32 norms=F32 output=BF16 bytes_per_token=...
static void weights(const char *path, int n_vocab, int n_expert, int n_used) {
	struct gguf_init_params gp = {.no_alloc = true, .ctx = NULL};
	struct gguf_context *g = gguf_init_from_file(path, gp);
	if (!g) {
		return;
	}
	static const char *kinds[] = {"embd", "attn", "experts", "router", "norms", "output", "other"};
	enum { NK = 7 };
	char types[NK][64] = {{0}};
	double bytes = 0;
	for (int64_t i = 0; i < gguf_get_n_tensors(g); i++) {
		const char *name = gguf_get_tensor_name(g, i);
		double size = (double)gguf_get_tensor_size(g, i);
		int k = 6;
		if (!strcmp(name, "token_embd.weight")) {
			k = 0;
			size /= n_vocab;
		} else if (!strcmp(name, "output.weight")) {
			k = 5;
		} else if (strstr(name, "_exps.")) {
			k = 2;
			if (n_expert > 0) {
				size = size * n_used / n_expert;
			}
		} else if (strstr(name, "ffn_gate_inp")) {
			k = 3;
		} else if (strstr(name, "norm")) {
			k = 4;
		} else if (strstr(name, "attn_")) {
			k = 1;
		}
		bytes += size;
		const char *tn = ggml_type_name(gguf_get_tensor_type(g, i));
		if (!strstr(types[k], tn) && strlen(types[k]) + strlen(tn) + 2 < sizeof types[k]) {
			if (types[k][0]) {
				strcat(types[k], "+");
			}
			strcat(types[k], tn);
		}
	}
	printf("llama: weights");
	for (int k = 0; k < NK; k++) {
		if (types[k][0]) {
			printf(" %s=%s", kinds[k], types[k]);
		}
	}
	printf(" bytes_per_token=%.0f\n", bytes);
	gguf_free(g);
}

// meta_int reads an integer of the model's metadata ("<arch>.<key>").
static int meta_int(const struct llama_model *model, const char *key) {
	char arch[64], k[128], v[64];
	if (llama_model_meta_val_str(model, "general.architecture", arch, sizeof arch) < 0) {
		return 0;
	}
	snprintf(k, sizeof k, "%s.%s", arch, key);
	if (llama_model_meta_val_str(model, k, v, sizeof v) < 0) {
		return 0;
	}
	return atoi(v);
}

int main(int argc, char **argv) {
	const char *path = NULL, *backend_dir = NULL;
	int threads = 1, P = 512, T = 32, reps = 1;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "-v")) {
			verbose = true;
			continue;
		}
		if (!v) {
			fprintf(stderr, "llama_bench: %s needs a value\n", a);
			return 2;
		}
		if (!strcmp(a, "-m")) {
			path = v;
		} else if (!strcmp(a, "-t")) {
			threads = atoi(v);
		} else if (!strcmp(a, "-p")) {
			P = atoi(v);
		} else if (!strcmp(a, "-n")) {
			T = atoi(v);
		} else if (!strcmp(a, "-r")) {
			reps = atoi(v);
		} else if (!strcmp(a, "-B")) {
			backend_dir = v;
		} else {
			fprintf(stderr, "llama_bench: unknown flag %s\n", a);
			return 2;
		}
		i++;
	}
	if (!path || threads < 1 || P < 0 || T < 0 || reps < 1) {
		fprintf(stderr, "usage: llama_bench -m MODEL.gguf [-t THREADS] [-p PROMPT] [-n TOKENS] [-r REPS] [-B BACKEND_DIR] [-v]\n");
		return 2;
	}

	llama_log_set(log_cb, NULL);
	// Builds with dynamically loaded backends (GGML_BACKEND_DL, as the
	// prebuilt node-llama-cpp binaries may be) register none until loaded.
	if (backend_dir) {
		ggml_backend_load_all_from_path(backend_dir);
	} else {
		ggml_backend_load_all();
	}
	llama_backend_init();

	struct llama_model_params mp = llama_model_default_params();
	mp.n_gpu_layers = 0;
	mp.load_mode = LLAMA_LOAD_MODE_MMAP;
	double tl = now();
	struct llama_model *model = llama_model_load_from_file(path, mp);
	if (!model) {
		die("cannot load the model (run with -v for llama.cpp's log)", 0);
	}
	double load_s = now() - tl;
	const struct llama_vocab *vocab = llama_model_get_vocab(model);
	int nv = llama_vocab_n_tokens(vocab);

	struct llama_context_params cp = llama_context_default_params();
	int nctx = (P > 64 ? P : 64) + T + 16;
	cp.n_ctx = (uint32_t)((nctx + 255) / 256 * 256);
	cp.n_batch = (uint32_t)(P > 64 ? P : 64);
	cp.n_ubatch = cp.n_batch;
	cp.n_seq_max = 1;
	cp.n_threads = threads;
	cp.n_threads_batch = threads;
	cp.no_perf = true;
	struct llama_context *ctx = llama_init_from_model(model, cp);
	if (!ctx) {
		die("cannot create a context", 0);
	}
	char desc[256];
	llama_model_desc(model, desc, sizeof desc);
	printf("llama: model=%s desc=\"%s\" size_bytes=%llu params=%llu vocab=%d load_s=%.2f\n", path, desc,
	       (unsigned long long)llama_model_size(model), (unsigned long long)llama_model_n_params(model), nv, load_s);
	weights(path, nv, meta_int(model, "expert_count"), meta_int(model, "expert_used_count"));
	printf("llama: system_info=\"%s\"\n", llama_print_system_info());
	fflush(stdout);

	// Warm-up: every expert over a short prompt, a prefill of the timed
	// length, then a few decode steps.
	{
		int n = P > 0 && P < 16 ? P : 16;
		llama_token *ids = malloc(sizeof(llama_token) * (size_t)n);
		prompt(ids, n, nv);
		clear(ctx);
		// Deprecated in this llama.cpp ("do warmup runs manually") but
		// still routes every token to every expert during the call.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
		llama_set_warmup(ctx, true);
		eval(ctx, ids, n);
		llama_set_warmup(ctx, false);
#pragma GCC diagnostic pop
		free(ids);
		if (P > 0) {
			prefill_rate(ctx, nv, P); // the timed prompt's length, as llama-bench warms up
		}
		if (T > 0) {
			decode_rate(ctx, nv, T < 4 ? T : 4);
		}
	}

	for (int r = 1; r <= reps; r++) {
		if (P > 0) {
			printf("llama: threads=%d round=%d prefill_tokens=%d prefill_tok_s=%.3f\n", threads, r, P,
			       prefill_rate(ctx, nv, P));
			fflush(stdout);
		}
		if (T > 0) {
			printf("llama: threads=%d round=%d decode_tokens=%d decode_tok_s=%.3f\n", threads, r, T,
			       decode_rate(ctx, nv, T));
			if (r == 1) {
				printf("llama: greedy=");
				for (int i = 0; i < ngreedy; i++) {
					printf(i ? ",%d" : "%d", greedy[i]);
				}
				printf("\n");
			}
			fflush(stdout);
		}
	}
	llama_free(ctx);
	llama_model_free(model);
	llama_backend_free();
	return 0;
}
