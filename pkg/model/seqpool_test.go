package model

import (
	"context"
	"testing"
)

// TestSeqPoolReusesCaches: a sequence given back to the pool comes back
// empty, with its cache memory, and a prompt run on it gives the same bits
// as on a fresh sequence (GQA and MLA). The pool keeps no more cache than
// MaxBytes, and no sequence of another model.
func TestSeqPoolReusesCaches(t *testing.T) {
	ctx := context.Background()
	for i, bm := range benchModels {
		m := benchModel(t, i)
		long := make([]int32, 40)
		for j := range long {
			long[j] = int32(1 + (j*53)%200)
		}
		short := long[:9]
		fresh, err := m.Forward(ctx, []*Seq{m.NewSeq()}, [][]int32{short}, Options{AllLogits: true})
		if err != nil {
			t.Fatal(err)
		}
		want := append([]float32(nil), fresh.Logits...)

		p := m.NewSeqPool()
		s := p.Get()
		if _, err := m.Forward(ctx, []*Seq{s}, [][]int32{long}, Options{}); err != nil {
			t.Fatal(err)
		}
		capBytes := s.CacheCapacity()
		if capBytes == 0 || s.CacheBytes() == 0 {
			t.Fatalf("%s: cache %d bytes used, %d allocated after 40 tokens", bm.name, s.CacheBytes(), capBytes)
		}
		p.Put(s)
		if free, bytes, _, _ := p.Stats(); free != 1 || bytes != capBytes {
			t.Errorf("%s: pool holds %d sequences, %d bytes; want 1, %d", bm.name, free, bytes, capBytes)
		}
		r := p.Get()
		if r != s || r.Len != 0 || r.CacheBytes() != 0 || r.CacheCapacity() != capBytes {
			t.Fatalf("%s: Get returned %p (len %d, %d bytes used, %d allocated), want the freed %p empty with %d allocated",
				bm.name, r, r.Len, r.CacheBytes(), r.CacheCapacity(), s, capBytes)
		}
		got, err := m.Forward(ctx, []*Seq{r}, [][]int32{short}, Options{AllLogits: true})
		if err != nil {
			t.Fatal(err)
		}
		sameBits(t, bm.name+": logits on a reused sequence against a fresh one", got.Logits, want)
		if r.CacheCapacity() != capBytes {
			t.Errorf("%s: the reused sequence reallocated its cache (%d -> %d bytes)", bm.name, capBytes, r.CacheCapacity())
		}
		if _, _, hits, gets := p.Stats(); hits != 1 || gets != 2 {
			t.Errorf("%s: %d of %d Get calls from the pool, want 1 of 2", bm.name, hits, gets)
		}
		if free, bytes, _, _ := p.Stats(); free != 0 || bytes != 0 {
			t.Errorf("%s: an empty pool holds %d sequences, %d bytes", bm.name, free, bytes)
		}

		// Get hands out the largest cache first.
		small := m.NewSeq()
		small.Reserve(2)
		p.Put(small)
		p.Put(r)
		if g := p.Get(); g != r {
			t.Errorf("%s: Get returned the %d-byte cache before the %d-byte one", bm.name, g.CacheCapacity(), capBytes)
		}
		if g := p.Get(); g != small {
			t.Errorf("%s: the second Get did not return the small cache", bm.name)
		}
		// The byte bound: a pool with room for one such cache keeps one.
		p.MaxBytes = capBytes
		p.Put(r)
		other := p.m.NewSeq()
		other.Reserve(40)
		p.Put(other)
		if free, bytes, _, _ := p.Stats(); free != 1 || bytes != capBytes {
			t.Errorf("%s: with MaxBytes %d the pool holds %d sequences, %d bytes", bm.name, capBytes, free, bytes)
		}
		// Another model's sequence (a different layer count) is not kept.
		p.MaxBytes = DefaultSeqPoolBytes
		p.Put(&Seq{layers: make([]layerCache, m.Cfg.Layers+1)})
		if free, _, _, _ := p.Stats(); free != 1 {
			t.Errorf("%s: the pool kept a sequence of another shape (%d free)", bm.name, free)
		}
	}
}
