package model

import (
	"context"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"testing"
)

func TestZZBaseline(t *testing.T) {
	mode := os.Getenv("ZZ_MODE") // "write" or "check"
	if mode == "" {
		t.Skip()
	}
	os.MkdirAll("/tmp/ws_baseline", 0o755)
	for _, name := range goldenModels {
		for _, keep := range []bool{true, false} {
			m, _ := loadGolden(t, name, keep)
			var vals []float32
			for _, mla := range []MLAMode{MLAAuto, MLANaive, MLAAbsorbed} {
				r := rand.New(rand.NewPCG(1, 2))
				lens := []int{5, 2, 9}
				seqs := make([]*Seq, 3)
				toks := make([][]int32, 3)
				for b := range seqs {
					seqs[b] = m.NewSeq()
					for range lens[b] {
						toks[b] = append(toks[b], int32(r.IntN(m.Cfg.Vocab)))
					}
				}
				out, err := m.Forward(context.Background(), seqs, toks, Options{AllLogits: true, Hidden: true, Routing: true, MLA: mla})
				if err != nil {
					t.Fatal(err)
				}
				vals = append(vals, out.Logits...)
				for _, h := range out.Hidden {
					vals = append(vals, h...)
				}
				for _, rt := range out.Routing {
					if rt != nil {
						vals = append(vals, rt.Weights...)
						for _, id := range rt.IDs {
							vals = append(vals, float32(id))
						}
					}
				}
				for step := 0; step < 5; step++ {
					for b := range toks {
						toks[b] = []int32{int32(r.IntN(m.Cfg.Vocab))}
					}
					if step == 2 {
						toks[1] = []int32{3, 4, 5}
					}
					out, err := m.Forward(context.Background(), seqs, toks, Options{MLA: mla})
					if err != nil {
						t.Fatal(err)
					}
					vals = append(vals, out.Logits...)
				}
			}
			buf := make([]byte, 4*len(vals))
			for i, v := range vals {
				binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
			}
			fn := "/tmp/ws_baseline/" + name
			if keep {
				fn += "_bf16"
			}
			if mode == "write" {
				os.WriteFile(fn, buf, 0o644)
				continue
			}
			old, _ := os.ReadFile(fn)
			if string(old) != string(buf) {
				t.Errorf("%s keep=%v: differs from baseline (%d vs %d bytes)", name, keep, len(old), len(buf))
			} else {
				t.Logf("%s keep=%v: identical (%d values)", name, keep, len(vals))
			}
		}
	}
}
