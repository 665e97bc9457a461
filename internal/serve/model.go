package serve

import (
	"context"
	"time"

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
	// FreeSeq takes back a sequence that has ended, which the caller no
	// longer uses, so that a later NewSeq may reuse its memory.
	FreeSeq(Seq)
	// Forward appends tokens[b] (non-empty) to seqs[b] for every b, as one
	// batch, and returns the logits of each sequence's last new token:
	// [B, V] row-major, valid until the next Forward call (they may alias
	// the model's workspace). On error the sequences are left unchanged.
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

// seqPooled is implemented by Models that keep ended sequences' KV caches
// (FromModel's); the scheduler exports PoolBytes as
// switchyard_serve_kv_pool_bytes.
type seqPooled interface {
	// PoolBytes is the KV cache memory kept for new sequences.
	PoolBytes() int64
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
func FromModel(m *model.Model) Model { return &loaded{m: m, pool: m.NewSeqPool()} }

// FromModelOverlapped is FromModel with two-micro-batch overlap (as
// DeepSeek's inference and SGLang do it): a step of two or more sequences
// is split into two halves of about equal token counts that run as two
// concurrent forward passes, so while one half waits for its experts'
// owners (the exchange), the other computes attention. Worth it when the
// experts are remote and the exchange waits on the network; the halves
// compute the same tokens, but with matrix shapes of half the rows (the
// last bits of a logit may differ from the whole batch's).
func FromModelOverlapped(m *model.Model) Model {
	return &loaded{m: m, pool: m.NewSeqPool(), overlap: true}
}

type loaded struct {
	m       *model.Model
	pool    *model.SeqPool // the KV caches of ended sequences (NewSeq, FreeSeq)
	seqs    uint64         // NewSeq calls: each Seq value is distinct, even on reused memory
	overlap bool
	last    model.Profile
	ws, wsB model.Workspace // one per micro-batch: logits alias them until the next Forward
}

func (l *loaded) LastProfile() model.Profile { return l.last }

// loadedSeq is one request's sequence: its n (the loaded model's NewSeq
// count) tells two requests apart whose caches share pooled memory.
type loadedSeq struct {
	s *model.Seq
	n uint64
}

func (s loadedSeq) Len() int          { return s.s.Len }
func (s loadedSeq) CacheBytes() int64 { return s.s.CacheBytes() }

func (l *loaded) Vocab() int      { return l.m.Cfg.Vocab }
func (l *loaded) MaxContext() int { return l.m.Cfg.MaxPos }
func (l *loaded) NewSeq() Seq {
	l.seqs++
	return loadedSeq{l.pool.Get(), l.seqs}
}

// FreeSeq gives s's KV cache to the model's pool (model.SeqPool: up to
// model.DefaultSeqPoolBytes kept), so that the next prefill writes into
// memory the process already holds.
func (l *loaded) PoolBytes() int64 {
	_, b, _, _ := l.pool.Stats()
	return b
}

func (l *loaded) FreeSeq(s Seq) {
	if ls, ok := s.(loadedSeq); ok {
		l.pool.Put(ls.s)
	}
}

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
	if l.overlap && len(ss) >= 2 {
		return l.forwardOverlapped(ctx, ss, tokens)
	}
	out, err := l.m.Forward(ctx, ss, tokens, model.Options{Prof: &l.last, Workspace: &l.ws})
	if err != nil {
		return nil, err
	}
	return out.Logits, nil
}

// forwardOverlapped runs the step as two concurrent halves (see
// FromModelOverlapped) and returns the logits in sequence order. The
// profile's parts add up both halves; its Total is the step's wall time.
func (l *loaded) forwardOverlapped(ctx context.Context, ss []*model.Seq, tokens [][]int32) ([]float32, error) {
	total := 0
	for _, t := range tokens {
		total += len(t)
	}
	k, acc := 1, len(tokens[0])
	for k < len(tokens)-1 && 2*(acc+len(tokens[k])) <= total {
		acc += len(tokens[k])
		k++
	}
	start := time.Now()
	var pb model.Profile
	var ob *model.Output
	var eb error
	done := make(chan struct{})
	go func() {
		defer close(done)
		ob, eb = l.m.Forward(ctx, ss[k:], tokens[k:], model.Options{Prof: &pb, Workspace: &l.wsB})
	}()
	oa, ea := l.m.Forward(ctx, ss[:k], tokens[:k], model.Options{Prof: &l.last, Workspace: &l.ws})
	<-done
	l.last.Attention += pb.Attention
	l.last.Router += pb.Router
	l.last.Experts += pb.Experts
	l.last.SharedExperts += pb.SharedExperts
	l.last.DenseMLP += pb.DenseMLP
	l.last.Head += pb.Head
	l.last.Total = time.Since(start)
	if ea != nil {
		return nil, ea
	}
	if eb != nil {
		return nil, eb
	}
	return append(oa.Logits, ob.Logits...), nil
}
