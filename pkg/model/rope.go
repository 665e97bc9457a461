package model

import (
	"math"
	"sync"
)

// ropeTable caches cos/sin rows per position: row p holds Dim/2 values of
// cos(p*inv[i])*factor and sin(p*inv[i])*factor. Angles are computed as
// float32(p)*inv[i] in float32, as transformers does, then cos/sin in
// float64 and rounded.
type ropeTable struct {
	inv    []float32
	factor float64
	mu     sync.RWMutex
	cos    []float32 // [P, Dim/2]
	sin    []float32 // [P, Dim/2]
}

func newRopeTable(r *Rope) *ropeTable {
	inv, f := r.InvFreq()
	return &ropeTable{inv: inv, factor: f}
}

// at returns cos and sin rows for position p (grows the table as needed).
func (t *ropeTable) at(p int) (cos, sin []float32) {
	h := len(t.inv)
	t.mu.RLock()
	if (p+1)*h <= len(t.cos) {
		cos, sin = t.cos[p*h:(p+1)*h], t.sin[p*h:(p+1)*h]
		t.mu.RUnlock()
		return cos, sin
	}
	t.mu.RUnlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(t.cos) / h
	if p >= n {
		want := max(p+1, 2*n, 256)
		c := make([]float32, want*h)
		s := make([]float32, want*h)
		copy(c, t.cos)
		copy(s, t.sin)
		for q := n; q < want; q++ {
			for i, f := range t.inv {
				a := float64(float32(q) * f)
				c[q*h+i] = float32(math.Cos(a) * t.factor)
				s[q*h+i] = float32(math.Sin(a) * t.factor)
			}
		}
		t.cos, t.sin = c, s
	}
	return t.cos[p*h : (p+1)*h], t.sin[p*h : (p+1)*h]
}
