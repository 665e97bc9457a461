package model

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"testing"
)

// Finite-difference gradient checks: the analytic gradients of our float32
// backward against central differences of the float64 reference's mean
// next-token cross-entropy (reference_test.go), for one variant of every
// family, covering every layer type: embeddings, RMSNorm, GQA with q/k
// norms (per head and full), biases and clip_qkv, MLA with and without
// q_lora, RoPE/YaRN, sliding windows, dense MLPs, softmax and sigmoid
// routers with groups, renormalization and scaling, routed experts, shared
// experts and Qwen2's shared_expert_gate, the final norm and lm_head.

// refCE is the float64 reference's mean next-token cross-entropy of ids.
func refCE(m *refModel, ids [][]int32) float64 {
	var sum float64
	n := 0
	st := &refStats{minMargin: math.Inf(1)}
	for _, seq := range ids {
		logits, _ := m.forward(seq, st)
		V := m.V
		for t := 0; t+1 < len(seq); t++ {
			l := logits[t*V : (t+1)*V]
			mx := math.Inf(-1)
			for _, v := range l {
				mx = math.Max(mx, v)
			}
			var z float64
			for _, v := range l {
				z += math.Exp(v - mx)
			}
			sum += math.Log(z) + mx - l[seq[t+1]]
			n++
		}
	}
	return sum / float64(n)
}

var fdVariants = []string{
	"mixtral/mqa-headdim24-sliding5-linear-tied-bf16",
	"qwen2_moe/sparse-step2-norm_topk-qkv_bias",
	"qwen3_moe/headdim20-attention_bias-theta1e6",
	"olmoe/gqa2-clip_qkv0.8",
	"deepseek_v2/group_limited_greedy-yarn-factor-ne-ratio",
	"deepseek_v2/attention_bias-qlora-linear",
	"deepseek_v3/groups4-top2-qlora-interleave",
}

func TestFiniteDifferenceGradients(t *testing.T) {
	for _, name := range fdVariants {
		t.Run(name, func(t *testing.T) {
			bv := variantByName(t, name).build(t)
			// Equal-length rows (training batches are rectangular): the
			// prefix of each sequence, whose routing the seed search vetted.
			T := len(bv.ids[0])
			for _, s := range bv.ids {
				T = min(T, len(s))
			}
			T = min(T, 8)
			ids := make([][]int32, len(bv.ids))
			for b := range ids {
				ids[b] = bv.ids[b][:T]
			}
			m, store, err := Load(bv.cfg, bv.src, LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			g, err := m.NewGrads()
			if err != nil {
				t.Fatal(err)
			}
			st := m.NewTrainState()
			if _, err := m.TrainForward(context.Background(), st, ids, LossConfig{}); err != nil {
				t.Fatal(err)
			}
			if err := m.TrainBackward(context.Background(), st, g); err != nil {
				t.Fatal(err)
			}
			analytic := map[string][]float32{}
			for _, p := range g.Params {
				analytic[p.Name] = *p.Data
			}
			for _, id := range store.IDs() {
				if gr := store.Grad(id); gr != nil {
					n := ExpertTensorNames(bv.cfg.Family, id.Layer, id.Expert)
					analytic[n[0]], analytic[n[1]], analytic[n[2]] = gr.Gate.F32, gr.Up.F32, gr.Down.F32
				}
			}

			var c hfConfig
			if err := json.Unmarshal(bv.cfgJSON, &c); err != nil {
				t.Fatal(err)
			}
			ref := newRefModel(c, bv.src)
			base := refCE(ref, ids) // fills the weight cache
			r := rand.New(rand.NewPCG(1, 2))
			names := make([]string, 0, len(ref.w))
			for n := range ref.w {
				names = append(names, n)
			}
			sort.Strings(names)
			const eps = 1e-5
			checked, worst := 0, 0.0
			for _, n := range names {
				if n == "lm_head.weight" && bv.cfg.TieEmbed {
					continue
				}
				w := ref.w[n]
				an := analytic[n]
				if an == nil {
					if isScoreBias(n) {
						continue // a buffer, not a parameter
					}
					an = make([]float32, len(w)) // an expert no token reached
				}
				// Sample entries: the largest analytic gradient and random ones
				// (fewer for the many routed-expert tensors, to stay fast).
				idx := []int{argmaxAbs(an)}
				extra := 3
				if isExpertWeight(n) {
					extra = 1
				}
				for range extra {
					idx = append(idx, r.IntN(len(w)))
				}
				var num, den float64
				for _, i := range idx {
					orig := w[i]
					w[i] = orig + eps
					lp := refCE(ref, ids)
					w[i] = orig - eps
					lm := refCE(ref, ids)
					w[i] = orig
					fd := (lp - lm) / (2 * eps)
					d := fd - float64(an[i])
					num += d * d
					den += fd * fd
				}
				scale := math.Sqrt(den)
				if scale < 1e-7 {
					// gradient essentially zero: compare absolutely
					if math.Sqrt(num) > 1e-6 {
						t.Errorf("%s: analytic gradient %v where finite differences are ~0 (|diff| %.2g)", n, sample(an, idx), math.Sqrt(num))
					}
					continue
				}
				rel := math.Sqrt(num) / scale
				worst = math.Max(worst, rel)
				if rel > 1e-3 {
					t.Errorf("%s: analytic vs finite-difference rel error %.3g (entries %v)", n, rel, idx)
				}
				checked++
			}
			t.Logf("loss %.6f, %d tensors checked against float64 finite differences, worst rel error %.2e", base, checked, worst)
		})
	}
}

func argmaxAbs(v []float32) int {
	best := 0
	for i, x := range v {
		if math.Abs(float64(x)) > math.Abs(float64(v[best])) {
			best = i
		}
	}
	return best
}

func sample(v []float32, idx []int) string {
	s := ""
	for _, i := range idx {
		s += fmt.Sprintf(" [%d]=%.3g", i, v[i])
	}
	return s
}

func isScoreBias(name string) bool {
	const suf = "e_score_correction_bias"
	return len(name) >= len(suf) && name[len(name)-len(suf):] == suf
}

func isExpertWeight(name string) bool {
	for i := 0; i+len(".experts.") <= len(name); i++ {
		if name[i:i+len(".experts.")] == ".experts." {
			return true
		}
	}
	return false
}
