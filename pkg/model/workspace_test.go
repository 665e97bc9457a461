package model

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// TestWorkspaceMatchesFresh runs every golden model twice over the same
// script, once allocating every call's temporaries (no Workspace) and once
// through one Workspace reused for the whole script (first dirtied by a
// bigger, unrelated batch), and requires bit-identical logits, hidden
// states and routing at every call: a prefill of three sequences of
// different lengths, then decode steps, one of them feeding one sequence a
// chunk of three tokens, one of them leaving a sequence out. MLA models run
// the script in every MLA mode.
func TestWorkspaceMatchesFresh(t *testing.T) {
	ctx := context.Background()
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			m, _ := loadGolden(t, name, true)
			V := m.Cfg.Vocab
			modes := []MLAMode{MLAAuto}
			if m.Cfg.MLA != nil {
				modes = append(modes, MLANaive, MLAAbsorbed)
			}
			for _, mode := range modes {
				r := rand.New(rand.NewPCG(3, 4))
				ids := func(n int) []int32 {
					v := make([]int32, n)
					for i := range v {
						v[i] = int32(r.IntN(V))
					}
					return v
				}
				ws := new(Workspace)
				dirty := []*Seq{m.NewSeq(), m.NewSeq(), m.NewSeq()}
				if _, err := m.Forward(ctx, dirty, [][]int32{ids(12), ids(12), ids(12)}, Options{AllLogits: true, Hidden: true, Routing: true, MLA: mode, Workspace: ws}); err != nil {
					t.Fatal(err)
				}
				fresh := []*Seq{m.NewSeq(), m.NewSeq(), m.NewSeq()}
				reused := []*Seq{m.NewSeq(), m.NewSeq(), m.NewSeq()}
				toks := [][]int32{ids(5), ids(2), ids(9)}
				for step := 0; step < 7; step++ {
					opt := Options{MLA: mode}
					if step == 0 {
						opt.AllLogits, opt.Hidden, opt.Routing = true, true, true
					}
					fs, rs, tk := fresh, reused, toks
					if step == 4 { // the middle sequence sits this step out
						fs, rs, tk = []*Seq{fresh[0], fresh[2]}, []*Seq{reused[0], reused[2]}, [][]int32{toks[0], toks[2]}
					}
					want, err := m.Forward(ctx, fs, tk, opt)
					if err != nil {
						t.Fatal(err)
					}
					opt.Workspace = ws
					got, err := m.Forward(ctx, rs, tk, opt)
					if err != nil {
						t.Fatal(err)
					}
					where := fmt.Sprintf("mode %d step %d", mode, step)
					sameBits(t, where+" logits", got.Logits, want.Logits)
					if len(got.Hidden) != len(want.Hidden) || len(got.Routing) != len(want.Routing) {
						t.Fatalf("%s: %d hidden, %d routings; want %d, %d", where, len(got.Hidden), len(got.Routing), len(want.Hidden), len(want.Routing))
					}
					for l := range want.Hidden {
						sameBits(t, fmt.Sprintf("%s hidden %d", where, l), got.Hidden[l], want.Hidden[l])
					}
					for l, w := range want.Routing {
						if g := got.Routing[l]; (g == nil) != (w == nil) {
							t.Fatalf("%s: layer %d routing %v, want %v", where, l, g, w)
						} else if w != nil {
							sameBits(t, fmt.Sprintf("%s layer %d routing weights", where, l), g.Weights, w.Weights)
							for i := range w.IDs {
								if g.IDs[i] != w.IDs[i] {
									t.Fatalf("%s: layer %d routing ids %v, want %v", where, l, g.IDs, w.IDs)
								}
							}
						}
					}
					for b := range fresh {
						if fresh[b].Len != reused[b].Len {
							t.Fatalf("%s: sequence %d Len %d, want %d", where, b, reused[b].Len, fresh[b].Len)
						}
					}
					toks = [][]int32{ids(1), ids(1), ids(1)}
					if step == 2 {
						toks[1] = ids(3)
					}
				}
			}
		})
	}
}

func sameBits(t *testing.T, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s: value %d is %v, want %v (bit for bit)", what, i, got[i], want[i])
		}
	}
}

// TestWorkspaceOutputAliasing pins down the documented ownership: without
// a Workspace the Output belongs to the caller; with one, the next call
// overwrites it, and appending to Logits copies rather than writing into
// the Workspace.
func TestWorkspaceOutputAliasing(t *testing.T) {
	ctx := context.Background()
	m, _ := loadGolden(t, "mixtral", true)
	ws := new(Workspace)
	s := []*Seq{m.NewSeq()}
	a, err := m.Forward(ctx, s, [][]int32{{1, 2, 3}}, Options{Workspace: ws})
	if err != nil {
		t.Fatal(err)
	}
	first := append([]float32(nil), a.Logits...)
	grown := append(a.Logits, 42)
	if &grown[0] == &a.Logits[0] {
		t.Error("appending to Output.Logits wrote into the Workspace")
	}
	b, err := m.Forward(ctx, s, [][]int32{{4}}, Options{Workspace: ws})
	if err != nil {
		t.Fatal(err)
	}
	if a != b || &a.Logits[0] != &b.Logits[0] {
		t.Error("a Workspace's second Output does not reuse the first's memory")
	}
	c, err := m.Forward(ctx, []*Seq{m.NewSeq()}, [][]int32{{1, 2, 3}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	sameBits(t, "fresh logits", c.Logits, first)
	if _, err := m.Forward(ctx, []*Seq{m.NewSeq()}, [][]int32{{9}}, Options{}); err != nil {
		t.Fatal(err)
	}
	sameBits(t, "a caller-owned Output after another call", c.Logits, first)
}

// TestWorkspacesConcurrent decodes on one model from several goroutines at
// once, each with its own sequences and Workspace (run it under -race):
// every goroutine must get the logits of a lone run.
func TestWorkspacesConcurrent(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"qwen3_moe", "deepseek_v3_bf16"} {
		m, _ := loadGolden(t, name, true)
		run := func(ws *Workspace) ([]float32, error) {
			seqs := []*Seq{m.NewSeq(), m.NewSeq()}
			toks := [][]int32{{1, 2, 3, 4}, {5, 6}}
			var all []float32
			for step := 0; step < 6; step++ {
				out, err := m.Forward(ctx, seqs, toks, Options{Workspace: ws})
				if err != nil {
					return nil, err
				}
				all = append(all, out.Logits...)
				toks = [][]int32{{int32(7 + step)}, {int32(20 + step)}}
			}
			return all, nil
		}
		want, err := run(nil)
		if err != nil {
			t.Fatal(err)
		}
		const G = 4
		got := make([][]float32, G)
		errs := make([]error, G)
		done := make(chan int)
		for g := range G {
			go func() {
				got[g], errs[g] = run(new(Workspace))
				done <- g
			}()
		}
		for range G {
			<-done
		}
		for g := range G {
			if errs[g] != nil {
				t.Fatal(errs[g])
			}
			sameBits(t, fmt.Sprintf("%s goroutine %d", name, g), got[g], want)
		}
	}
}
