#!/usr/bin/env bash
# bench-scaling.sh: how Switchyard's single-sequence decode and prefill
# scale from 1 to 2 threads, next to how far the machine itself scales.
#
# Per round, for each thread count (the order reversed every other round):
#   - the machine's own roofs (bench/scaling/roofs.c, compiled here with
#     gcc; no Switchyard code): the read bandwidth (T threads summing their
#     share of 1 GiB), the roof of a decode that reads every weight from
#     memory once per token; and register-only FMA chains, the cores'
#     arithmetic (on a VM, what the other tenants leave of a second core),
#     as wide as the GEMM kernels' vectors (16 floats with AVX-512, else 8);
#   - bench/decode's 4.6 GB bf16 model (scripts/bench-peers.sh's): decode
#     of TOKENS tokens and one forward of a PREFILL-token prompt;
#   - a model whose weights fit in the last-level cache (2 layers, hidden
#     512, 4 experts top-2, inter 768, vocabulary 2048: 24 MB; the Zen 3's
#     L3 is 32 MB, which a VM shares with other tenants): decode of
#     SMALL_TOKENS tokens, where the memory roof binds less and the
#     parallel split's own cost (the persistent workers, the GEMV split)
#     shows more.
# Each is its own process. Cells are medians over ROUNDS rounds; a
# scaling is the median of the per-round ratios (2 threads / 1 thread).
# A second table splits the second thread's yield from bench/decode's
# process CPU time (getrusage) of each Switchyard measurement: how busy
# its threads were, and how much more CPU the same tokens took at 2
# threads than at 1 (the pool's spinning between parallel calls counts as
# busy, so decode's small products show up as extra work).
#
#   scripts/bench-scaling.sh                    # results to OUT
#   ROUNDS=5 TOKENS=32 PREFILL=512 SMALL_TOKENS=512 OUT=FILE scripts/bench-scaling.sh
#
# Needs Go and gcc; about 5 minutes at ROUNDS=5 (the big model is
# generated first if missing, into ${TMPDIR:-/tmp}/switchyard-bench-decode).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
TOKENS=${TOKENS:-32}
PREFILL=${PREFILL:-512}
SMALL_TOKENS=${SMALL_TOKENS:-512}
OUT=${OUT:-bench/results/scaling.txt}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

go build -o "$tmp/decode" ./bench/decode
gcc -O3 -march=native -pthread bench/scaling/roofs.c -o "$tmp/roofs"
big_dir=${MODEL_DIR:-${TMPDIR:-/tmp}/switchyard-bench-decode}
small_dir=${TMPDIR:-/tmp}/switchyard-bench-scaling-small
small=(-layers 2 -hidden 512 -experts 4 -topk 2 -inter 768 -vocab 2048)

cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
flags=$(grep -m1 '^flags' /proc/cpuinfo)
isa="avx2=$([[ $flags == *" avx2"* ]] && echo yes || echo no) avx512f=$([[ $flags == *avx512f* ]] && echo yes || echo no)"
lanes=$("$tmp/roofs" fma 1 | sed -n 's/.*lanes=\([0-9]*\).*/\1/p')
stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }
load() { cut -d' ' -f1 /proc/loadavg; }
raw=$tmp/raw.txt
: >"$raw"
log() { echo "$(stamp) load=$(load) $*" | tee -a "$raw" >&2; }

# Generate both models (untimed) before the rounds.
"$tmp/decode" -dir "$big_dir" -brief -rounds 1 -formats bf16 -tokens 0 >/dev/null
"$tmp/decode" -dir "$small_dir" "${small[@]}" -brief -rounds 1 -formats bf16 -tokens 0 >/dev/null

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" | head -1; }
for r in $(seq 1 "$ROUNDS"); do
	order="1 2"
	if ((r % 2 == 0)); then order="2 1"; fi
	for t in $order; do
		log "round=$r threads=$t what=read_bw_gbs value=$("$tmp/roofs" read "$t" | field read_bw_gbs)"
		log "round=$r threads=$t what=fma_gflops value=$("$tmp/roofs" fma "$t" | field fma_gflops)"
		out=$(GOMAXPROCS=$t "$tmp/decode" -dir "$big_dir" -brief -rounds 1 -threads "$t" -formats bf16 -tokens "$TOKENS" -prefill "$PREFILL")
		for k in decode prefill; do
			l=$(echo "$out" | grep "${k}_tok_s")
			log "round=$r threads=$t what=${k}_tok_s value=$(field "${k}_tok_s" <<<"$l") cpu=$(field "${k}_cpu_s" <<<"$l") wall=$(field "${k}_wall_s" <<<"$l")"
		done
		l=$(GOMAXPROCS=$t "$tmp/decode" -dir "$small_dir" "${small[@]}" -brief -rounds 1 -threads "$t" -formats bf16 -tokens "$SMALL_TOKENS" | grep decode_tok_s)
		log "round=$r threads=$t what=small_decode_tok_s value=$(field decode_tok_s <<<"$l") cpu=$(field decode_cpu_s <<<"$l") wall=$(field decode_wall_s <<<"$l")"
	done
done

{
	echo "# scripts/bench-scaling.sh on $(stamp); CPU: $cpu ($(nproc) CPUs; $isa); load before the summary $(load)"
	echo "# ROUNDS=$ROUNDS TOKENS=$TOKENS PREFILL=$PREFILL SMALL_TOKENS=$SMALL_TOKENS; cells: medians over the rounds;"
	echo "# scaling: the median of the per-round ratios, 2 threads / 1 thread"
	echo "# machine roofs: bench/scaling/roofs.c (C, no Switchyard code; the median of 5 passes): read = bytes read / s of 1 GiB; fma = register-only FMA chains of $lanes-float vectors"
	echo "# big model: bench/decode's 4.6 GB bf16 Mixtral-style model (reads every weight once per decode token)"
	echo "# cache-resident model: 2 layers, hidden 512, 4 experts top-2, inter 768, vocab 2048 (24 MB of weights)"
	echo
	awk '
	{ delete f; for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
	  v[f["what"], f["threads"], f["round"]] = f["value"]; whats[f["what"]] = 1; rounds[f["round"]] = 1
	  if (f["cpu"] != "") { cpu[f["what"], f["threads"], f["round"]] = f["cpu"]; wall[f["what"], f["threads"], f["round"]] = f["wall"] } }
	function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	  return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
	END {
	  split("read_bw_gbs fma_gflops decode_tok_s prefill_tok_s small_decode_tok_s", order, " ")
	  label["read_bw_gbs"] = "read bandwidth, GB/s (the machine)"
	  label["fma_gflops"] = "register FMA, GFLOP/s (the machine)"
	  label["decode_tok_s"] = "decode, big model, tokens/s"
	  label["prefill_tok_s"] = "prefill, big model, tokens/s"
	  label["small_decode_tok_s"] = "decode, cache-resident model, tokens/s"
	  print "| what | 1 thread | 2 threads | scaling (per-round ratios) | median scaling |"
	  print "|---|---:|---:|---|---:|"
	  for (o = 1; o <= 5; o++) {
	    w = order[o]; n = 0; list = ""
	    for (r in rounds) { n++; a1[n] = v[w, 1, r]; a2[n] = v[w, 2, r]; s[n] = v[w, 2, r] / v[w, 1, r] }
	    for (r = 1; r <= n; r++) list = list (r > 1 ? ", " : "") sprintf("%.2f", v[w, 2, r] / v[w, 1, r])
	    ms[w] = med(s, n)
	    printf "| %s | %.2f | %.2f | %s | **%.2fx** |\n", label[w], med(a1, n), med(a2, n), list, ms[w]
	  }
	  printf "\ndecode (big model) scaling / read-bandwidth scaling: %.2f\n", ms["decode_tok_s"] / ms["read_bw_gbs"]
	  printf "prefill scaling / FMA scaling: %.2f; cache-resident decode scaling / FMA scaling: %.2f\n", ms["prefill_tok_s"] / ms["fma_gflops"], ms["small_decode_tok_s"] / ms["fma_gflops"]
	  print "\nWhere the second thread goes (process CPU time from getrusage over the timed part, every thread, the kernel pool'"'"'s spinning included):"
	  print "busy = CPU / (wall x threads); extra work = CPU at 2 threads / CPU at 1 (medians over the rounds)\n"
	  print "| what | busy, 1 thread | busy, 2 threads | extra work at 2 threads |"
	  print "|---|---:|---:|---:|"
	  for (o = 3; o <= 5; o++) {
	    w = order[o]; n = 0
	    for (r in rounds) { n++; b1[n] = cpu[w, 1, r] / wall[w, 1, r]; b2[n] = cpu[w, 2, r] / (2 * wall[w, 2, r]); x[n] = cpu[w, 2, r] / cpu[w, 1, r] }
	    printf "| %s | %.2f | %.2f | %.2fx |\n", label[w], med(b1, n), med(b2, n), med(x, n)
	  }
	}' "$raw"
	echo
	echo "raw measurements:"
	sed 's/^/  /' "$raw"
} >"$OUT"
cat "$OUT"
