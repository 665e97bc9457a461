package model

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
)

// decodeWindow is the context length decode benchmarks cycle through: each
// sequence decodes positions 0..decodeWindow-1, is Reset, and starts again,
// so a step's cost is that of an average context of decodeWindow/2 tokens
// and the KV cache never outgrows its reserved capacity.
const decodeWindow = 256

// benchModels are small random-weight models of the two attention kinds,
// large enough that the lm_head, attention heads and experts run split
// over goroutines (and so exercise the allocation-free parallel paths).
var benchModels = []struct {
	name string
	hf   map[string]any
}{
	{"mixtral", with(hfBase("mixtral", 256, 8, 2, 1024, 4), "intermediate_size", 256,
		"num_local_experts", 8, "num_experts_per_tok", 2, "max_position_embeddings", 1024,
		"rope_parameters", ropeDefault(1e6))},
	{"deepseek_v3", with(hfBase("deepseek_v3", 256, 8, 8, 1024, 4), "intermediate_size", 512,
		"moe_intermediate_size", 128, "n_routed_experts", 16, "num_experts_per_tok", 4, "n_group", 4,
		"topk_group", 2, "norm_topk_prob", true, "routed_scaling_factor", 2.5, "n_shared_experts", 1,
		"first_k_dense_replace", 1, "q_lora_rank", 64, "kv_lora_rank", 64, "qk_nope_head_dim", 32,
		"qk_rope_head_dim", 16, "v_head_dim", 32, "rope_interleave", true, "max_position_embeddings", 1024,
		"rope_parameters", ropeDefault(10000))},
}

// benchModel builds benchModels[i] with all its experts in this process.
func benchModel(tb testing.TB, i int) *Model {
	tb.Helper()
	data, err := json.Marshal(benchModels[i].hf)
	if err != nil {
		tb.Fatal(err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		tb.Fatal(err)
	}
	src := randomCheckpoint(cfg, rand.New(rand.NewPCG(uint64(i), 7)), false)
	m, _, err := Load(cfg, src, LoadOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// decoder steps B sequences one token at a time through the window, with
// every cache reserved for the whole window.
type decoder struct {
	m    *Model
	seqs []*Seq
	toks [][]int32
	opt  Options
}

// newDecoder returns a decoder of B sequences; ws may be nil (Forward then
// allocates its temporaries every step).
func newDecoder(m *Model, B int, ws *Workspace) *decoder {
	d := &decoder{m: m, seqs: make([]*Seq, B), toks: make([][]int32, B), opt: Options{Workspace: ws}}
	for b := range d.seqs {
		d.seqs[b] = m.NewSeq()
		d.seqs[b].Reserve(decodeWindow)
		d.toks[b] = []int32{int32(1 + b)}
	}
	return d
}

func (d *decoder) step(ctx context.Context) error {
	if d.seqs[0].Len == decodeWindow {
		for _, s := range d.seqs {
			s.Reset()
		}
	}
	_, err := d.m.Forward(ctx, d.seqs, d.toks, d.opt)
	return err
}

// BenchmarkDecodeStep times one decode step (one new token for each of B
// sequences) after a warm-up window, with a Workspace ("ws") and without
// one ("nows": every temporary allocated per step, as before Workspace).
// Contexts cycle through 0..decodeWindow-1 over reserved caches, so with a
// Workspace a step allocates nothing at all (0 allocs/op exactly, not an
// average rounded down).
func BenchmarkDecodeStep(b *testing.B) {
	ctx := context.Background()
	for i, bm := range benchModels {
		m := benchModel(b, i)
		runtime.GC() // the checkpoint's garbage, not the steps', is collected here
		for _, B := range []int{1, 4} {
			for _, withWS := range []bool{true, false} {
				var ws *Workspace
				name := fmt.Sprintf("%s/B=%d/nows", bm.name, B)
				if withWS {
					ws = new(Workspace)
					name = fmt.Sprintf("%s/B=%d/ws", bm.name, B)
				}
				b.Run(name, func(b *testing.B) {
					d := newDecoder(m, B, ws)
					for range decodeWindow {
						if err := d.step(ctx); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportAllocs()
					for b.Loop() {
						if err := d.step(ctx); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// TestDecodeStepAllocatesNothing checks the point of Workspace: after a
// prefill and a few decode steps (which grow its buffers), a decode step of
// the in-process model (experts in an expert.Store) with a Workspace and
// reserved caches makes no heap allocation, profiled or not, GQA and MLA
// (absorbed and naive), with the kernels split over goroutines.
func TestDecodeStepAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4)) // split even on a small machine
	ctx := context.Background()
	for i, bm := range benchModels {
		m := benchModel(t, i)
		modes := []MLAMode{MLAAuto}
		if m.Cfg.MLA != nil {
			modes = append(modes, MLANaive)
		}
		for _, mode := range modes {
			var prof Profile
			ws := new(Workspace)
			d := newDecoder(m, 3, ws)
			d.opt.MLA, d.opt.Prof = mode, &prof
			prompts := [][]int32{{5, 6, 7, 8, 9}, {10, 11}, {12, 13, 14, 15, 16, 17, 18}}
			if _, err := m.Forward(ctx, d.seqs, prompts, d.opt); err != nil {
				t.Fatal(err)
			}
			for range 8 {
				if err := d.step(ctx); err != nil {
					t.Fatal(err)
				}
			}
			var err error
			allocs := testing.AllocsPerRun(40, func() {
				if e := d.step(ctx); e != nil {
					err = e
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			if allocs != 0 {
				t.Errorf("%s mode %d: a warm decode step makes %v allocations, want 0", bm.name, mode, allocs)
			}
			if prof.Total <= 0 || prof.Experts <= 0 || prof.Attention <= 0 {
				t.Errorf("%s mode %d: profile not filled: %+v", bm.name, mode, prof)
			}
		}
	}
}

// TestPrefillSameBitsAnyThreads: a prefill long enough that the routed
// experts run side by side (drawn by free threads) and the attention heads
// are drawn one at a time gives the same logits and hidden states, bit for
// bit, with 1, 2 and 4 threads, GQA and MLA (naive and absorbed): which
// thread runs a head or an expert never changes its arithmetic.
func TestPrefillSameBitsAnyThreads(t *testing.T) {
	ctx := context.Background()
	for i, bm := range benchModels {
		m := benchModel(t, i)
		prompt := make([]int32, 96) // 96 tokens x top-k rows > 4 x experts: the prefill regime
		for j := range prompt {
			prompt[j] = int32(1 + (j*37)%200)
		}
		modes := []MLAMode{MLAAuto}
		if m.Cfg.MLA != nil {
			modes = append(modes, MLAAbsorbed)
		}
		for _, mode := range modes {
			var ref *Output
			for _, procs := range []int{1, 2, 4} {
				prev := runtime.GOMAXPROCS(procs)
				out, err := m.Forward(ctx, []*Seq{m.NewSeq()}, [][]int32{prompt}, Options{MLA: mode, Hidden: true, AllLogits: true})
				runtime.GOMAXPROCS(prev)
				if err != nil {
					t.Fatal(err)
				}
				if ref == nil {
					ref = out
					continue
				}
				sameBits(t, fmt.Sprintf("%s mode %d, logits on %d threads against 1", bm.name, mode, procs), out.Logits, ref.Logits)
				for l := range ref.Hidden {
					sameBits(t, fmt.Sprintf("%s mode %d, hidden state %d on %d threads against 1", bm.name, mode, l, procs), out.Hidden[l], ref.Hidden[l])
				}
			}
		}
	}
}
