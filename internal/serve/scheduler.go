package serve

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// errShutdown ends requests the server stopped before they finished.
var errShutdown = errors.New("serve: the server is shutting down")

// genRequest is one accepted request on its way through the scheduler.
type genRequest struct {
	ctx     context.Context // the client's; when it ends the sequence is dropped
	job     *job
	arrived time.Time
	out     *mailbox
}

// event is what the scheduler reports to a request's handler: one per
// generated token, and a last one with Finish or Err set (possibly the
// same event as the last token's).
type event struct {
	Text   string  // text released by this token (may be ""; see stopFilter)
	IDs    []int32 // generated token ids
	Finish string  // "stop" or "length" on the last event
	Err    error   // the request failed (the last event)
	Usage  usageJSON
}

func (e event) last() bool { return e.Finish != "" || e.Err != nil }

// mailbox carries events from the scheduler to a handler without ever
// blocking the scheduler: events queue in a slice and notify wakes the
// reader.
type mailbox struct {
	mu     sync.Mutex
	evs    []event
	notify chan struct{} // capacity 1
}

func newMailbox() *mailbox { return &mailbox{notify: make(chan struct{}, 1)} }

func (m *mailbox) push(e event) {
	m.mu.Lock()
	m.evs = append(m.evs, e)
	m.mu.Unlock()
	select {
	case m.notify <- struct{}{}:
	default:
	}
}

// take returns the queued events, oldest first.
func (m *mailbox) take() []event {
	m.mu.Lock()
	defer m.mu.Unlock()
	evs := m.evs
	m.evs = nil
	return evs
}

// slot is an active sequence: prefilling while fed < len(req.job.prompt),
// then decoding.
type slot struct {
	req     *genRequest
	seq     Seq
	sampler *model.Sampler
	dec     *tokenizer.StreamDecoder
	filter  stopFilter
	fed     int   // prompt tokens in the KV cache
	next    int32 // the token to feed at the next step (decoding)
	gen     int   // tokens generated
	last    time.Time
	ended   bool // its last event was sent in this step
}

func (sl *slot) prefilling() bool { return sl.fed < len(sl.req.job.prompt) }

// submit queues r, or refuses it (400 when its prompt is empty or leaves
// no room in the context, 429 when the queue is full, 503 when shutting
// down). The prompt is checked here as well as by prepare so that no
// sequence outgrows the model whatever its caller checked; emit ends one
// whose prompt and generated tokens fill the context.
func (s *Server) submit(r *genRequest) *apiError {
	if P := len(r.job.prompt); P == 0 || P >= s.lim.context {
		return &apiError{Status: 400, Type: "invalid_request_error", Code: "context_length_exceeded",
			Message: fmt.Sprintf("a prompt of %d tokens does not fit: the model's context is %d tokens, at least one of them left to generate", P, s.lim.context)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return &apiError{Status: 503, Type: "server_error", Code: "service_unavailable", Message: "the server is shutting down"}
	}
	if len(s.waiting) >= s.cfg.MaxQueue {
		s.pruneLocked()
	}
	if len(s.waiting) >= s.cfg.MaxQueue {
		return &apiError{Status: 429, Type: "rate_limit_error", Code: "rate_limit_exceeded",
			Message: fmt.Sprintf("the server is busy: %d sequences are generating and %d requests are queued; retry later", s.active.Load(), len(s.waiting))}
	}
	s.inflight.Add(1)
	s.waiting = append(s.waiting, r)
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// pruneLocked drops queued requests whose client went away.
func (s *Server) pruneLocked() {
	kept := s.waiting[:0]
	for _, r := range s.waiting {
		if r.ctx.Err() != nil {
			s.end(r, event{Err: r.ctx.Err()})
			continue
		}
		kept = append(kept, r)
	}
	clear(s.waiting[len(kept):])
	s.waiting = kept
}

// queued is the number of requests waiting for a slot.
func (s *Server) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiting)
}

// end delivers a request's last event.
func (s *Server) end(r *genRequest, e event) {
	r.out.push(e)
	s.inflight.Done()
}

// admit takes queued requests, oldest first, for up to free slots while
// budget (the step's tokens left) lasts; the last one taken may get only
// part of its prompt in this step.
func (s *Server) admit(free, budget int) []*genRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	var out []*genRequest
	for len(out) < free && budget > 0 && len(s.waiting) > 0 {
		r := s.waiting[0]
		budget -= len(r.job.prompt)
		out = append(out, r)
		s.waiting[0] = nil
		s.waiting = s.waiting[1:]
	}
	return out
}

// waitWork blocks until a request is queued (true) or the server stops
// (false).
func (s *Server) waitWork() bool {
	for {
		if s.queued() > 0 {
			return true
		}
		select {
		case <-s.wake:
		case <-s.ctx.Done():
			return false
		}
	}
}

// run is the scheduler: the only goroutine that touches the model. Each
// step drops sequences whose client went away, shares the step's token
// budget (Config.MaxStepTokens) out, and runs one Forward over the
// sequences that got tokens: one token for each decoding sequence first,
// then a chunk of each prompt still being prefilled, oldest first, then a
// chunk of each request admitted from the queue into a free slot, while
// the budget lasts. A sequence samples its first token in the step that
// feeds the rest of its prompt.
func (s *Server) run() {
	defer close(s.done)
	var active []*slot // oldest first
	V := s.model.Vocab()
	for s.ctx.Err() == nil {
		if len(active) == 0 && !s.waitWork() {
			break
		}
		for _, sl := range active {
			if err := sl.req.ctx.Err(); err != nil {
				s.end(sl.req, event{Err: err}) // the client is gone; its KV cache goes back to the model
				sl.ended = true
			}
		}
		active = s.dropEnded(active)
		batch := make([]*slot, 0, s.cfg.MaxSeqs)
		seqs := make([]Seq, 0, s.cfg.MaxSeqs)
		toks := make([][]int32, 0, s.cfg.MaxSeqs)
		budget := s.cfg.MaxStepTokens
		feed := func(sl *slot, t []int32) {
			batch = append(batch, sl)
			seqs = append(seqs, sl.seq)
			toks = append(toks, t)
			budget -= len(t)
		}
		for _, sl := range active {
			if !sl.prefilling() {
				feed(sl, []int32{sl.next})
			}
		}
		for _, sl := range active {
			if p := sl.req.job.prompt; sl.prefilling() && budget > 0 {
				feed(sl, p[sl.fed:sl.fed+min(len(p)-sl.fed, budget)])
			}
		}
		for _, r := range s.admit(s.cfg.MaxSeqs-len(active), budget) {
			sl := &slot{req: r, seq: s.model.NewSeq(), sampler: model.NewSampler(r.job.sampler),
				dec: s.tok.NewStreamDecoder(true), filter: stopFilter{stops: r.job.stops}}
			active = append(active, sl)
			feed(sl, r.job.prompt[:min(len(r.job.prompt), budget)])
		}
		s.publish(active)
		if len(batch) == 0 {
			continue // nothing is active: MaxStepTokens >= MaxSeqs leaves tokens for a prefilling sequence
		}
		fctx, span := stepSpan(s.ctx, batch, toks)
		logits, err := s.model.Forward(fctx, seqs, toks)
		if span != nil {
			if err != nil {
				span.RecordError(err)
			}
			span.End()
		}
		if err != nil {
			if s.ctx.Err() != nil {
				break
			}
			for _, sl := range batch {
				s.end(sl.req, event{Err: fmt.Errorf("model step over %d sequences: %w", len(batch), err)})
				sl.ended = true
			}
			active = s.dropEnded(active)
			s.publish(active)
			continue
		}
		s.steps.Add(1)
		s.met.batch.Observe(float64(len(batch)))
		if pm, ok := s.model.(Profiled); ok {
			s.met.observeProfile(pm.LastProfile())
		}
		if n := int64(len(batch)); n > s.maxBatch.Load() {
			s.maxBatch.Store(n)
		}
		now := time.Now()
		for b, sl := range batch {
			if sl.prefilling() {
				sl.fed += len(toks[b])
				s.met.promptToks.Add(float64(len(toks[b])))
				if sl.prefilling() {
					continue // these logits are of a position inside the prompt
				}
			}
			sl.ended = !s.emit(sl, sl.sampler.Sample(logits[b*V:(b+1)*V]), now)
		}
		active = s.dropEnded(active)
		s.publish(active)
	}
	// Stopped: everything still running or queued ends with errShutdown.
	s.mu.Lock()
	s.draining = true
	waiting := s.waiting
	s.waiting = nil
	s.mu.Unlock()
	for _, sl := range active {
		s.end(sl.req, event{Err: errShutdown})
	}
	for _, r := range waiting {
		s.end(r, event{Err: errShutdown})
	}
	s.publish(nil)
}

// dropEnded removes the slots whose request has ended, keeping the order,
// and gives their sequences back to the model (Model.FreeSeq).
func (s *Server) dropEnded(active []*slot) []*slot {
	kept := active[:0]
	for _, sl := range active {
		if !sl.ended {
			kept = append(kept, sl)
			continue
		}
		s.model.FreeSeq(sl.seq)
		sl.seq = nil
	}
	clear(active[len(kept):])
	return kept
}

// publish records the active sequences and their KV cache bytes for Stats
// and the gauges.
func (s *Server) publish(active []*slot) {
	var kv int64
	for _, sl := range active {
		kv += sl.seq.CacheBytes()
	}
	s.active.Store(int64(len(active)))
	s.kvBytes.Store(kv)
}

// emit handles token id, just sampled for sl, and reports whether the
// sequence goes on.
func (s *Server) emit(sl *slot, id int32, now time.Time) bool {
	r, j := sl.req, sl.req.job
	sl.gen++
	s.met.genToks.Inc()
	if sl.gen == 1 {
		s.met.ttft.Observe(now.Sub(r.arrived).Seconds())
	} else {
		s.met.tpot.Observe(now.Sub(sl.last).Seconds())
	}
	sl.last = now
	ev := event{IDs: []int32{id}}
	stopID := false
	for _, st := range j.stopIDs {
		stopID = stopID || id == st
	}
	stopped := false
	if !stopID { // a stop token's text is not part of the answer
		piece, err := sl.dec.Step(int(id))
		if err != nil {
			piece = "" // an id the tokenizer has no token for (a padded vocabulary)
		}
		ev.Text, stopped = sl.filter.push(piece)
	}
	switch {
	case stopped || stopID:
		ev.Finish = "stop"
	case sl.gen >= j.maxTokens, sl.gen >= s.lim.context-len(j.prompt):
		// max_tokens, or the context is full: the prompt and the tokens
		// generated are as many as the model holds (whatever max_tokens
		// said; submit saw to it that the prompt leaves room). Compared
		// with what the prompt leaves, never added to it.
		ev.Finish = "length"
	default:
		sl.next = id
		r.out.push(ev)
		return true
	}
	if !stopped {
		tail, hit := sl.filter.push(sl.dec.Flush())
		ev.Text += tail
		if hit {
			ev.Finish = "stop"
		} else {
			ev.Text += sl.filter.flush()
		}
	}
	ev.Usage = usageJSON{PromptTokens: len(j.prompt), CompletionTokens: sl.gen, TotalTokens: len(j.prompt) + sl.gen}
	s.met.e2e.Observe(now.Sub(r.arrived).Seconds())
	s.end(r, ev)
	return false
}
