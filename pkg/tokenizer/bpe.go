package tokenizer

import (
	"strings"
	"sync"
	"sync/atomic"
)

// bpe is the byte-level BPE model: a pre-token's bytes start as one symbol
// each (the vocabulary id of the byte's GPT-2 code point) and adjacent
// symbols are merged, lowest merge rank first, until no ranked pair is left.
type bpe struct {
	// merges maps pairKey(left id, right id) to the pair's rank (its index in
	// the merges list) and the id of the merged token.
	merges map[uint64]merge
	// byteID[b] is the vocabulary id of byteToRune[b], or -1 if the
	// vocabulary lacks it.
	byteID [256]int32
	// unk is the id of unk_token, or -1 if none: then a byte without a
	// vocabulary entry is dropped, as tokenizers does.
	unk     int32
	fuseUnk bool
	// ignoreMerges: a pre-token whose byte-level string is itself in the
	// vocabulary becomes that single token without merging (Llama-3).
	ignoreMerges bool
	vocab        map[string]int

	cache wordCache
	work  sync.Pool // *bpeWork
}

// wordCache maps a raw pre-token to its ids. Stored slices are never
// modified. It is sharded by a cheap hash of the key's ends so that
// concurrent encoders rarely share a lock; a plain map per shard hashes
// strings faster than sync.Map's interface keys.
type wordCache struct {
	shards [64]cacheShard
	n      atomic.Int64
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int
	_  [32]byte // keep shards on separate cache lines
}

func (c *wordCache) shard(key string) *cacheShard {
	h := uint(len(key)) + uint(key[0])*31 + uint(key[len(key)-1])*131
	return &c.shards[h%uint(len(c.shards))]
}

func (c *wordCache) load(key string) ([]int, bool) {
	sh := c.shard(key)
	sh.mu.RLock()
	v, ok := sh.m[key]
	sh.mu.RUnlock()
	return v, ok
}

func (c *wordCache) store(key string, ids []int) {
	if c.n.Load() >= cacheMaxEntries {
		return
	}
	sh := c.shard(key)
	sh.mu.Lock()
	if _, ok := sh.m[key]; !ok {
		if sh.m == nil {
			sh.m = make(map[string][]int)
		}
		sh.m[strings.Clone(key)] = ids // the key must not pin the caller's text
		c.n.Add(1)
	}
	sh.mu.Unlock()
}

type merge struct {
	rank int32
	id   int32
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

const (
	// cacheMaxEntries bounds the pre-token cache; once full, new words are
	// merged but no longer stored (tokenizers does the same with 10,000).
	cacheMaxEntries = 1 << 16
	// cacheMaxWordLen: longer pre-tokens (long white-space or digit runs) are
	// not worth keeping.
	cacheMaxWordLen = 256
)

// symbol is one node of the doubly linked list of a word being merged.
type symbol struct {
	id         int32 // -1 once merged into its left neighbour
	prev, next int32 // -1 at the ends
}

// candidate is a queued merge of the pair starting at symbol pos.
type candidate struct {
	rank, pos, id int32
}

// bpeWork is per-call scratch, pooled so a cache miss does not allocate.
type bpeWork struct {
	syms []symbol
	heap []candidate
}

// appendWord appends the ids of pre-token raw (raw bytes, before the
// byte-level mapping) to dst.
func (m *bpe) appendWord(dst []int, raw string) []int {
	if raw == "" {
		return dst
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[byteLevelString(raw)]; ok {
			return append(dst, id)
		}
	}
	if ids, ok := m.cache.load(raw); ok {
		return append(dst, ids...)
	}
	n := len(dst)
	dst = m.mergeWord(dst, raw)
	if len(raw) <= cacheMaxWordLen {
		m.cache.store(raw, append([]int(nil), dst[n:]...))
	}
	return dst
}

// initialSymbols returns the symbol ids of raw before any merge: one per
// byte, with bytes missing from the vocabulary replaced by unk (consecutive
// ones fused into one if fuseUnk) or dropped when there is no unk token.
func (m *bpe) initialSymbols(syms []symbol, raw string) []symbol {
	syms = syms[:0]
	prevUnk := false
	for i := 0; i < len(raw); i++ {
		id := m.byteID[raw[i]]
		if id < 0 {
			if m.unk < 0 {
				continue
			}
			if prevUnk && m.fuseUnk {
				continue
			}
			id, prevUnk = m.unk, true
		} else {
			prevUnk = false
		}
		syms = append(syms, symbol{id: id})
	}
	for i := range syms {
		syms[i].prev, syms[i].next = int32(i-1), int32(i+1)
	}
	if len(syms) > 0 {
		syms[len(syms)-1].next = -1
	}
	return syms
}

// mergeWord runs the merges on raw with a priority queue keyed on (rank,
// position), as tokenizers' Word::merge_all does: O(n log n) in the word
// length, which matters for long white-space runs. mergeWordNaive in the
// tests is the quadratic reference.
func (m *bpe) mergeWord(dst []int, raw string) []int {
	w, _ := m.work.Get().(*bpeWork)
	if w == nil {
		w = new(bpeWork)
	}
	syms := m.initialSymbols(w.syms, raw)
	h := w.heap[:0]
	for i := 0; i+1 < len(syms); i++ {
		if mg, ok := m.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			h = heapPush(h, candidate{mg.rank, int32(i), mg.id})
		}
	}
	for len(h) > 0 {
		var top candidate
		top, h = heapPop(h)
		cur := &syms[top.pos]
		if cur.id < 0 || cur.next < 0 {
			continue
		}
		right := syms[cur.next]
		// A stale entry: the pair at pos has changed since it was queued.
		if mg, ok := m.merges[pairKey(cur.id, right.id)]; !ok || mg.id != top.id {
			continue
		}
		cur.id = top.id
		syms[cur.next].id = -1
		cur.next = right.next
		if right.next >= 0 {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if mg, ok := m.merges[pairKey(syms[cur.prev].id, cur.id)]; ok {
				h = heapPush(h, candidate{mg.rank, cur.prev, mg.id})
			}
		}
		if cur.next >= 0 {
			if mg, ok := m.merges[pairKey(cur.id, syms[cur.next].id)]; ok {
				h = heapPush(h, candidate{mg.rank, top.pos, mg.id})
			}
		}
	}
	for _, s := range syms {
		if s.id >= 0 {
			dst = append(dst, int(s.id))
		}
	}
	w.syms, w.heap = syms, h
	m.work.Put(w)
	return dst
}

func candLess(a, b candidate) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

func heapPush(h []candidate, c candidate) []candidate {
	h = append(h, c)
	i := len(h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if !candLess(h[i], h[p]) {
			break
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
	return h
}

func heapPop(h []candidate) (candidate, []candidate) {
	top := h[0]
	n := len(h) - 1
	h[0] = h[n]
	h = h[:n]
	i := 0
	for {
		l, r, min := 2*i+1, 2*i+2, i
		if l < n && candLess(h[l], h[min]) {
			min = l
		}
		if r < n && candLess(h[r], h[min]) {
			min = r
		}
		if min == i {
			break
		}
		h[i], h[min] = h[min], h[i]
		i = min
	}
	return top, h
}
