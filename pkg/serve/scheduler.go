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

// slot is an active sequence.
type slot struct {
	req     *genRequest
	seq     Seq
	sampler *model.Sampler
	dec     *tokenizer.StreamDecoder
	filter  stopFilter
	next    int32 // the token to feed at the next step
	gen     int   // tokens generated
	last    time.Time
}

// submit queues r, or refuses it (429 when the queue is full, 503 when
// shutting down).
func (s *Server) submit(r *genRequest) *apiError {
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

// admit takes queued requests for up to free slots, within the prefill
// budget (the first always fits).
func (s *Server) admit(free int) []*genRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	var out []*genRequest
	budget := s.cfg.MaxPrefillTokens
	for len(out) < free && len(s.waiting) > 0 {
		r := s.waiting[0]
		if len(out) > 0 && len(r.job.prompt) > budget {
			break
		}
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
// step drops sequences whose client went away, admits queued requests,
// and runs one Forward over every active sequence (one token for each
// decoding sequence, the whole prompt for each admitted one).
func (s *Server) run() {
	defer close(s.done)
	var active []*slot
	V := s.model.Vocab()
	for s.ctx.Err() == nil {
		if len(active) == 0 && !s.waitWork() {
			break
		}
		kept := active[:0]
		for _, sl := range active {
			if err := sl.req.ctx.Err(); err != nil {
				s.end(sl.req, event{Err: err}) // the client is gone; the KV cache goes with sl
				continue
			}
			kept = append(kept, sl)
		}
		clear(active[len(kept):])
		active = kept
		seqs := make([]Seq, 0, s.cfg.MaxSeqs)
		toks := make([][]int32, 0, s.cfg.MaxSeqs)
		for _, sl := range active {
			seqs = append(seqs, sl.seq)
			toks = append(toks, []int32{sl.next})
		}
		for _, r := range s.admit(s.cfg.MaxSeqs - len(active)) {
			sl := &slot{req: r, seq: s.model.NewSeq(), sampler: model.NewSampler(r.job.sampler),
				dec: s.tok.NewStreamDecoder(true), filter: stopFilter{stops: r.job.stops}}
			active = append(active, sl)
			seqs = append(seqs, sl.seq)
			toks = append(toks, r.job.prompt)
			s.met.promptToks.Add(float64(len(r.job.prompt)))
		}
		s.publish(active)
		if len(active) == 0 {
			continue
		}
		logits, err := s.model.Forward(s.ctx, seqs, toks)
		if err != nil {
			if s.ctx.Err() != nil {
				break
			}
			for _, sl := range active {
				s.end(sl.req, event{Err: fmt.Errorf("model step over %d sequences: %w", len(active), err)})
			}
			clear(active)
			active = active[:0]
			s.publish(active)
			continue
		}
		s.steps.Add(1)
		s.met.batch.Observe(float64(len(active)))
		if n := int64(len(active)); n > s.maxBatch.Load() {
			s.maxBatch.Store(n)
		}
		now := time.Now()
		kept = active[:0]
		for b, sl := range active {
			if s.emit(sl, sl.sampler.Sample(logits[b*V:(b+1)*V]), now) {
				kept = append(kept, sl)
			}
		}
		clear(active[len(kept):])
		active = kept
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
	case sl.gen >= j.maxTokens:
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
