// Package router implements the gating functions of the MoE families
// Switchyard runs, as pure functions from router logits to expert choices,
// and the dispatch layout (which rows go to which expert, in what order) that
// the expert exchange moves between machines.
//
// Shapes: T tokens, E routed experts, K experts per token, G expert groups.
//
// Semantics follow Hugging Face transformers 5.17 (its modeling_*.py of
// each family; the golden files in testdata/golden check them):
//   - Mixtral: softmax over E, top-K, always renormalized.
//   - Qwen2-MoE, Qwen3-MoE, OLMoE: softmax, top-K, renormalized iff
//     norm_topk_prob.
//   - DeepSeek-V2: softmax; greedy top-K, or group-limited (group score =
//     max in group, keep TopKGroups groups); weights x routed_scaling_factor.
//   - DeepSeek-V3: sigmoid scores; e_score_correction_bias added for
//     selection only; group score = sum of the top 2 biased scores in the
//     group; weights are the unbiased scores, renormalized iff norm_topk_prob
//     (denominator + 1e-20), x routed_scaling_factor.
//
// Experts of groups that are not kept are masked with -Inf before the final
// top-K (DeepSeek's reference code); transformers masks with 0.0, which gives
// the same choice unless biased scores are negative.
package router

import (
	"errors"
	"fmt"
	"math"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// Scoring turns router logits into per-expert scores.
type Scoring uint8

const (
	// Softmax scores: probabilities over all E experts (Mixtral, Qwen, OLMoE,
	// DeepSeek-V2).
	Softmax Scoring = iota
	// Sigmoid scores: independent sigmoid per expert (DeepSeek-V3).
	Sigmoid
)

// GroupScore says how a group of experts is scored for group-limited routing.
type GroupScore uint8

const (
	// GroupMax scores a group by its best expert (DeepSeek-V2
	// group_limited_greedy).
	GroupMax GroupScore = iota
	// GroupTop2Sum scores a group by the sum of its two best biased scores
	// (DeepSeek-V3 noaux_tc).
	GroupTop2Sum
)

// Config describes one gate. The zero value is not valid; use a family
// constructor or fill every field. Validate reports every problem at once.
type Config struct {
	NumExperts int     // E, routed experts (> 0)
	TopK       int     // K, experts per token (1..E)
	Scoring    Scoring // softmax or sigmoid
	// NumGroups G > 1 enables group-limited routing: experts are split into G
	// contiguous groups of E/G, the TopKGroups best groups are kept and the
	// final top-K is taken among their experts only. 0 or 1: no grouping.
	NumGroups  int
	TopKGroups int
	GroupScore GroupScore
	// Renormalize makes the K selected weights sum to 1 (before scaling).
	Renormalize bool
	// RenormEpsilon is added to the denominator when renormalizing
	// (DeepSeek-V3 uses 1e-20; others 0).
	RenormEpsilon float32
	// ScalingFactor multiplies the final weights (routed_scaling_factor).
	// 0 means 1.
	ScalingFactor float32
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.NumExperts <= 0 {
		errs = append(errs, fmt.Errorf("router: NumExperts = %d, must be > 0", c.NumExperts))
	}
	if c.TopK <= 0 || c.TopK > c.NumExperts {
		errs = append(errs, fmt.Errorf("router: TopK = %d, must be in [1, NumExperts=%d]", c.TopK, c.NumExperts))
	}
	if c.NumGroups > 1 {
		if c.NumExperts%c.NumGroups != 0 {
			errs = append(errs, fmt.Errorf("router: NumExperts = %d is not divisible by NumGroups = %d", c.NumExperts, c.NumGroups))
		}
		if c.TopKGroups <= 0 || c.TopKGroups > c.NumGroups {
			errs = append(errs, fmt.Errorf("router: TopKGroups = %d, must be in [1, NumGroups=%d]", c.TopKGroups, c.NumGroups))
		} else if c.NumExperts%c.NumGroups == 0 && c.TopKGroups*(c.NumExperts/c.NumGroups) < c.TopK {
			errs = append(errs, fmt.Errorf("router: TopKGroups=%d groups of %d experts cannot hold TopK=%d", c.TopKGroups, c.NumExperts/c.NumGroups, c.TopK))
		}
		if c.GroupScore == GroupTop2Sum && c.NumExperts/max(c.NumGroups, 1) < 2 {
			errs = append(errs, errors.New("router: GroupTop2Sum needs at least 2 experts per group"))
		}
	}
	if f := c.ScalingFactor; f < 0 || math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		errs = append(errs, fmt.Errorf("router: ScalingFactor = %g is not a finite non-negative number", f))
	}
	return errors.Join(errs...)
}

// Routing is the gate's decision for T tokens. Buffers are reused across
// calls to Route when large enough.
type Routing struct {
	T, K, E int
	IDs     []int32   // [T, K] chosen experts, best first
	Weights []float32 // [T, K] combine weights
	Scores  []float32 // [T, E] unbiased scores (softmax probabilities or sigmoids)

	// Route's scratch, kept so that routing into a reused Routing
	// allocates nothing.
	choice      []float32 // [E] selection scores of one token
	groupScores []float32 // [G]
	groupIdx    []int32   // [TopKGroups]
}

// Route computes expert choices for T tokens from router logits [T, E].
// bias ([E] or nil) is the DeepSeek-V3 e_score_correction_bias, added to the
// scores for selection only. The result is written into r (grown as needed).
func (c *Config) Route(logits []float32, tokens int, bias []float32, r *Routing) {
	E, K := c.NumExperts, c.TopK
	if len(logits) < tokens*E {
		panic(fmt.Sprintf("router: logits has %d values, want %d x %d", len(logits), tokens, E))
	}
	if bias != nil && len(bias) != E {
		panic(fmt.Sprintf("router: bias has %d values, want %d", len(bias), E))
	}
	r.T, r.K, r.E = tokens, K, E
	r.IDs = grow(r.IDs, tokens*K)
	r.Weights = grow(r.Weights, tokens*K)
	r.Scores = grow(r.Scores, tokens*E)
	scale := c.ScalingFactor
	if scale == 0 {
		scale = 1
	}
	r.choice = grow(r.choice, E) // selection scores (biased, masked)
	choice := r.choice
	var groupScores []float32
	var groupIdx []int32
	if c.NumGroups > 1 {
		r.groupScores = grow(r.groupScores, c.NumGroups)
		r.groupIdx = grow(r.groupIdx, c.TopKGroups)
		groupScores, groupIdx = r.groupScores, r.groupIdx
	}
	for t := 0; t < tokens; t++ {
		s := r.Scores[t*E : (t+1)*E]
		copy(s, logits[t*E:(t+1)*E])
		switch c.Scoring {
		case Softmax:
			tensor.Softmax(s)
		case Sigmoid:
			for i, v := range s {
				s[i] = tensor.Sigmoid(v)
			}
		}
		copy(choice, s)
		if bias != nil {
			for i := range choice {
				choice[i] += bias[i]
			}
		}
		if c.NumGroups > 1 {
			c.maskGroups(choice, groupScores, groupIdx)
		}
		ids := r.IDs[t*K : (t+1)*K]
		w := r.Weights[t*K : (t+1)*K]
		tensor.TopK(ids, choice, K)
		var sum float32
		for j, id := range ids {
			w[j] = s[id]
			sum += w[j]
		}
		if c.Renormalize {
			inv := 1 / (sum + c.RenormEpsilon)
			for j := range w {
				w[j] *= inv
			}
		}
		if scale != 1 {
			for j := range w {
				w[j] *= scale
			}
		}
	}
}

// maskGroups sets the selection scores of experts outside the TopKGroups
// best groups to -Inf.
func (c *Config) maskGroups(choice, groupScores []float32, groupIdx []int32) {
	per := c.NumExperts / c.NumGroups
	for g := range groupScores {
		grp := choice[g*per : (g+1)*per]
		switch c.GroupScore {
		case GroupMax:
			m := grp[0]
			for _, v := range grp[1:] {
				m = max(m, v)
			}
			groupScores[g] = m
		case GroupTop2Sum:
			a, b := float32(math.Inf(-1)), float32(math.Inf(-1))
			for _, v := range grp {
				if v > a {
					a, b = v, a
				} else if v > b {
					b = v
				}
			}
			groupScores[g] = a + b
		}
	}
	tensor.TopK(groupIdx, groupScores, c.TopKGroups)
	ninf := float32(math.Inf(-1))
	for g := 0; g < c.NumGroups; g++ {
		kept := false
		for _, k := range groupIdx {
			if int(k) == g {
				kept = true
				break
			}
		}
		if !kept {
			for i := g * per; i < (g+1)*per; i++ {
				choice[i] = ninf
			}
		}
	}
}

func grow[T any](s []T, n int) []T {
	if cap(s) >= n {
		return s[:n]
	}
	return make([]T, n)
}
