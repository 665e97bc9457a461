package model

import "sync"

// DefaultSeqPoolBytes is SeqPool.MaxBytes' default: 1 GiB of KV cache
// kept for new sequences.
const DefaultSeqPoolBytes = 1 << 30

// SeqPool keeps the KV caches of ended sequences for new ones. A fresh
// sequence allocates its cache as its prompt arrives (slices.Grow in each
// layer: the heap allocation, its zeroing, the first touch of its pages)
// on the goroutine running Forward, between the layer's parallel
// products; a sequence from the pool writes into memory the process
// already holds, as a serving engine's preallocated KV blocks do.
// Measured with bench/decode on the 2-vCPU EPYC (its 8-layer model, the
// second 512-token prefill of each process, 3 interleaved pairs against
// a fresh sequence per prefill): attention 206-222 -> 155-186 ms on 2
// threads and 270-347 -> 245-318 ms on 1; the whole prefill on 2 threads
// 396-421 -> 406-444 tokens/s.
//
// A SeqPool is safe for concurrent use. The zero value is not usable: call
// Model.NewSeqPool.
type SeqPool struct {
	m *Model
	// MaxBytes bounds the KV cache capacity the pool keeps (the sum of
	// its free sequences' CacheCapacity); a sequence that would exceed it
	// is dropped for the garbage collector. Default DefaultSeqPoolBytes.
	MaxBytes int64

	mu    sync.Mutex
	free  []*Seq
	bytes int64 // capacity of free
	gets  int   // Get calls
	hits  int   // Get calls served from free
}

// NewSeqPool returns an empty pool of m's sequences.
func (m *Model) NewSeqPool() *SeqPool { return &SeqPool{m: m, MaxBytes: DefaultSeqPoolBytes} }

// Get returns an empty sequence: of the freed ones the one with the most
// cache memory (its cache emptied, its memory kept: a prompt of any length
// is then the likeliest to fit), or a new one.
func (p *SeqPool) Get() *Seq {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gets++
	if len(p.free) == 0 {
		return p.m.NewSeq()
	}
	best, bestCap := 0, int64(-1)
	for i, s := range p.free {
		if c := s.CacheCapacity(); c > bestCap {
			best, bestCap = i, c
		}
	}
	s := p.free[best]
	last := len(p.free) - 1
	p.free[best] = p.free[last]
	p.free[last] = nil
	p.free = p.free[:last]
	p.bytes -= bestCap
	p.hits++
	return s
}

// Put gives s back for a later Get. The caller must not use s afterwards.
// A sequence of another model's shape is not kept.
func (p *SeqPool) Put(s *Seq) {
	if s == nil || len(s.layers) != p.m.Cfg.Layers {
		return
	}
	s.Reset()
	c := s.CacheCapacity()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bytes+c > p.MaxBytes {
		return
	}
	p.free = append(p.free, s)
	p.bytes += c
}

// Stats reports the sequences and cache bytes the pool holds, and how
// many Get calls it served from them out of all.
func (p *SeqPool) Stats() (free int, bytes int64, hits, gets int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.free), p.bytes, p.hits, p.gets
}

// CacheCapacity is the memory the KV cache has allocated, in bytes
// (CacheBytes counts only what its tokens use).
func (s *Seq) CacheCapacity() int64 {
	var n int64
	for _, c := range s.layers {
		n += int64(cap(c.K)+cap(c.V)+cap(c.C)+cap(c.KPE)) * 4
	}
	return n
}
