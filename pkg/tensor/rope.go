package tensor

// RoPE layouts. Both rotate pairs of the d rotary dimensions of a head by
// angle pos*invFreq[i]; they differ in which elements form pair i.
//
//   - RopeHalf (GPT-NeoX / Llama / Mixtral / Qwen / OLMoE, HF rotate_half):
//     pair i is (x[i], x[i+d/2]).
//   - RopeInterleaved (DeepSeek's complex-number form, HF
//     apply_rotary_emb / apply_rotary_pos_emb_interleave): pair i is
//     (x[2i], x[2i+1]). HF's interleave variant also permutes the output to
//     [evens, odds]; that permutation is applied identically to q and k and so
//     does not change q.k, which is all attention sees.

// RopeHalf rotates x [d] in place: for i < d/2,
// (x[i], x[i+d/2]) <- (x[i]c - x[i+d/2]s, x[i+d/2]c + x[i]s), c=cos[i], s=sin[i].
// cos, sin: [d/2], already multiplied by the attention scaling factor.
func RopeHalf(x, cos, sin []float32) {
	h := len(cos)
	x1, x2 := x[:h], x[h:2*h]
	sin = sin[:h]
	for i, c := range cos {
		a, b := x1[i], x2[i]
		x1[i] = a*c - b*sin[i]
		x2[i] = b*c + a*sin[i]
	}
}

// RopeInterleaved rotates x [d] in place: for i < d/2,
// (x[2i], x[2i+1]) <- (x[2i]c - x[2i+1]s, x[2i]s + x[2i+1]c).
func RopeInterleaved(x, cos, sin []float32) {
	h := len(cos)
	x = x[:2*h]
	sin = sin[:h]
	for i, c := range cos {
		a, b := x[2*i], x[2*i+1]
		x[2*i] = a*c - b*sin[i]
		x[2*i+1] = a*sin[i] + b*c
	}
}

// RopeRef is the reference for both layouts: it builds the pair list
// explicitly and rotates in float64.
func RopeRef(x, cos, sin []float32, interleaved bool) {
	h := len(cos)
	for i := 0; i < h; i++ {
		p, q := i, i+h
		if interleaved {
			p, q = 2*i, 2*i+1
		}
		a, b := float64(x[p]), float64(x[q])
		c, s := float64(cos[i]), float64(sin[i])
		x[p] = float32(a*c - b*s)
		x[q] = float32(b*c + a*s)
	}
}
