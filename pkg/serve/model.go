package serve

import (
	"context"

	"github.com/switchyard/switchyard/pkg/model"
)

// Model is what the scheduler drives: a causal language model with one KV
// cache per sequence. The scheduler calls it from one goroutine only, so
// implementations need not be safe for concurrent use.
type Model interface {
	// Vocab is V: the width of a logits row; token ids are in [0, V).
	Vocab() int
	// MaxContext is the most tokens a sequence may hold (prompt plus
	// generated tokens).
	MaxContext() int
	// EOS lists the end-of-sequence token ids (may be empty).
	EOS() []int32
	// NewSeq returns an empty sequence: no tokens, empty KV cache.
	NewSeq() Seq
	// Forward appends tokens[b] (non-empty) to seqs[b] for every b, as one
	// batch, and returns the logits of each sequence's last new token:
	// [B, V] row-major. On error the sequences are left unchanged.
	Forward(ctx context.Context, seqs []Seq, tokens [][]int32) ([]float32, error)
}

// Seq is one sequence's decoding state: the tokens processed so far and
// their KV cache. Dropping every reference to it releases the cache.
type Seq interface {
	// Len is the number of tokens in the cache.
	Len() int
	// CacheBytes is the memory the KV cache holds.
	CacheBytes() int64
}

// Profiled is implemented by Models that time the parts of their last
// Forward call; the scheduler exports the sums as
// switchyard_serve_forward_seconds_total{part}.
type Profiled interface {
	// LastProfile is the wall time of the last Forward call's parts.
	LastProfile() model.Profile
}

// FromModel adapts a loaded model, whose experts may be in this process or
// remote (m.Experts), to Model (and Profiled).
func FromModel(m *model.Model) Model { return &loaded{m: m} }

type loaded struct {
	m    *model.Model
	last model.Profile
}

func (l *loaded) LastProfile() model.Profile { return l.last }

type loadedSeq struct{ s *model.Seq }

func (s loadedSeq) Len() int          { return s.s.Len }
func (s loadedSeq) CacheBytes() int64 { return s.s.CacheBytes() }

func (l *loaded) Vocab() int      { return l.m.Cfg.Vocab }
func (l *loaded) MaxContext() int { return l.m.Cfg.MaxPos }
func (l *loaded) NewSeq() Seq     { return loadedSeq{l.m.NewSeq()} }

func (l *loaded) EOS() []int32 {
	out := make([]int32, len(l.m.Cfg.EOS))
	for i, id := range l.m.Cfg.EOS {
		out[i] = int32(id)
	}
	return out
}

func (l *loaded) Forward(ctx context.Context, seqs []Seq, tokens [][]int32) ([]float32, error) {
	ss := make([]*model.Seq, len(seqs))
	for i, s := range seqs {
		ss[i] = s.(loadedSeq).s
	}
	l.last = model.Profile{}
	out, err := l.m.Forward(ctx, ss, tokens, model.Options{Prof: &l.last})
	if err != nil {
		return nil, err
	}
	return out.Logits, nil
}
