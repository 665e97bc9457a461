package model

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// SamplerConfig configures token sampling. The zero value is greedy.
type SamplerConfig struct {
	// Temperature divides the logits; 0 means greedy (argmax, ties to the
	// lowest id). Must be >= 0 and finite.
	Temperature float64
	// TopP keeps the smallest set of most likely tokens whose probability
	// reaches TopP (nucleus sampling). 0 or 1 disables it.
	TopP float64
	// Seed makes sampling reproducible: the same seed, model and prompt give
	// the same tokens.
	Seed uint64
}

// Validate checks the sampler settings.
func (s SamplerConfig) Validate() error {
	var errs []error
	if s.Temperature < 0 || math.IsNaN(s.Temperature) || math.IsInf(s.Temperature, 0) {
		errs = append(errs, fmt.Errorf("temperature %g must be a finite number >= 0", s.Temperature))
	}
	if s.TopP < 0 || s.TopP > 1 || math.IsNaN(s.TopP) {
		errs = append(errs, fmt.Errorf("top-p %g must be in [0, 1]", s.TopP))
	}
	return errors.Join(errs...)
}

// Sampler draws tokens from logits.
type Sampler struct {
	cfg  SamplerConfig
	rng  *rand.Rand
	prob []float32
	idx  []int
}

// NewSampler returns a sampler; cfg must be valid.
func NewSampler(cfg SamplerConfig) *Sampler {
	return &Sampler{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x9e3779b97f4a7c15))}
}

// Sample picks a token id from logits [V].
func (s *Sampler) Sample(logits []float32) int32 {
	if s.cfg.Temperature == 0 {
		return Argmax(logits)
	}
	V := len(logits)
	if cap(s.prob) < V {
		s.prob, s.idx = make([]float32, V), make([]int, V)
	}
	p := s.prob[:V]
	inv := float32(1 / s.cfg.Temperature)
	for i, l := range logits {
		p[i] = l * inv
	}
	tensor.Softmax(p)
	idx := s.idx[:V]
	for i := range idx {
		idx[i] = i
	}
	n := V
	if tp := s.cfg.TopP; tp > 0 && tp < 1 {
		sort.SliceStable(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] })
		var cum float64
		for i, id := range idx {
			cum += float64(p[id])
			if cum >= tp {
				n = i + 1
				break
			}
		}
	}
	var total float64
	for _, id := range idx[:n] {
		total += float64(p[id])
	}
	u := s.rng.Float64() * total
	for _, id := range idx[:n] {
		u -= float64(p[id])
		if u < 0 {
			return int32(id)
		}
	}
	return int32(idx[n-1])
}

// Argmax returns the index of the largest value (the lowest index on ties).
func Argmax(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

// GenerateConfig controls Generate.
type GenerateConfig struct {
	MaxTokens int           // new tokens per sequence (> 0)
	Sampler   SamplerConfig // per-sequence samplers use Seed+b
	StopIDs   []int32       // a sequence stops after emitting one of these
	// Recompute disables the KV cache: every step reruns the whole sequence
	// from scratch. Only for testing the cache.
	Recompute bool
	MLA       MLAMode
}

// Generate continues each prompt, running all sequences as one batch, and
// calls emit(b, id) for every new token of sequence b as soon as it is
// chosen (emit may be nil). It returns the new tokens per sequence. The
// steps share one Workspace and each cache is reserved for its prompt and
// MaxTokens (at most the model's context) up front, so a decode step
// allocates nothing in the model.
func (m *Model) Generate(ctx context.Context, prompts [][]int32, cfg GenerateConfig, emit func(b int, id int32)) ([][]int32, error) {
	if cfg.MaxTokens <= 0 {
		return nil, fmt.Errorf("model: max tokens %d must be > 0", cfg.MaxTokens)
	}
	if err := cfg.Sampler.Validate(); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	B := len(prompts)
	samplers := make([]*Sampler, B)
	seqs := make([]*Seq, B)
	for b := range prompts {
		sc := cfg.Sampler
		sc.Seed += uint64(b)
		samplers[b] = NewSampler(sc)
		seqs[b] = m.NewSeq()
		seqs[b].Reserve(min(len(prompts[b])+cfg.MaxTokens, max(len(prompts[b]), m.Cfg.MaxPos)))
	}
	out := make([][]int32, B)
	done := make([]bool, B)
	last := make([]int32, B) // each sequence's latest token, fed at the next step
	var ws Workspace
	active := make([]int, 0, B)
	ss := make([]*Seq, 0, B)
	toks := make([][]int32, 0, B)
	for step := 0; step < cfg.MaxTokens; step++ {
		active, ss, toks = active[:0], ss[:0], toks[:0]
		for b := range prompts {
			if done[b] {
				continue
			}
			t := prompts[b]
			switch {
			case cfg.Recompute:
				seqs[b].Reset()
				t = append(append([]int32(nil), prompts[b]...), out[b]...)
			case step > 0:
				t = last[b : b+1]
			}
			active, ss, toks = append(active, b), append(ss, seqs[b]), append(toks, t)
		}
		if len(active) == 0 {
			break
		}
		res, err := m.Forward(ctx, ss, toks, Options{MLA: cfg.MLA, Workspace: &ws})
		if err != nil {
			return out, err
		}
		V := m.Cfg.Vocab
		for i, b := range active {
			id := samplers[b].Sample(res.Logits[i*V : (i+1)*V])
			out[b] = append(out[b], id)
			last[b] = id
			if emit != nil {
				emit(b, id)
			}
			for _, s := range cfg.StopIDs {
				if id == s {
					done[b] = true
				}
			}
		}
	}
	return out, nil
}

// CrossEntropy is the mean next-token cross-entropy of logits [B*T, V]
// (B sequences of T tokens each, in order) against ids [B][T]: position t
// predicts ids[b][t+1]; the last position has no target. Computed in
// float64.
func CrossEntropy(logits []float32, ids [][]int32, V int) float64 {
	var sum float64
	var n int
	row := 0
	for _, seq := range ids {
		for t := range seq {
			if t+1 < len(seq) {
				l := logits[row*V : (row+1)*V]
				sum += tensor.LogSumExp(l) - float64(l[seq[t+1]])
				n++
			}
			row++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}
