package tokenizer

import "unicode/utf8"

// byteToRune is GPT-2's bytes_to_unicode table: every byte maps to a
// printable code point, so that byte-level vocabularies are JSON text.
// Printable Latin-1 bytes map to themselves; the other 68 bytes map, in byte
// order, to U+0100, U+0101, ... (space 0x20 becomes U+0120 'Ġ', '\n' U+010A 'Ċ').
// runeToByte is its inverse.
var (
	byteToRune [256]rune
	runeToByte map[rune]byte
)

func init() {
	runeToByte = make(map[rune]byte, 256)
	n := 0
	for b := 0; b < 256; b++ {
		printable := (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
		r := rune(b)
		if !printable {
			r = rune(256 + n)
			n++
		}
		byteToRune[b] = r
		runeToByte[r] = byte(b)
	}
}

// byteLevelString is the ByteLevel pre-tokenizer's transform: each byte of raw
// becomes its byteToRune code point.
func byteLevelString(raw string) string {
	buf := make([]byte, 0, 2*len(raw))
	for i := 0; i < len(raw); i++ {
		buf = utf8.AppendRune(buf, byteToRune[raw[i]])
	}
	return string(buf)
}

// tokenBytes is the ByteLevel decoder applied to one token: the bytes behind
// its code points if every code point is in the table, otherwise the token's
// own UTF-8 bytes (tokenizers' decode_chain does the same per token, which is
// how added tokens such as "<think>\n" pass through unchanged).
func tokenBytes(tok string) []byte {
	out := make([]byte, 0, len(tok))
	for _, r := range tok {
		b, ok := runeToByte[r]
		if !ok {
			return []byte(tok)
		}
		out = append(out, b)
	}
	return out
}

// utf8Seq classifies the sequence at the start of p (len(p) > 0) exactly as
// Rust's core::str::Utf8Chunks does: n is the length of a valid character, or
// of the maximal prefix of a well-formed sequence that an error covers (one
// U+FFFD per error); truncated reports that the error only happened because p
// ended, so more bytes could still complete the character.
func utf8Seq(p []byte) (n int, valid, truncated bool) {
	b := p[0]
	if b < utf8.RuneSelf {
		return 1, true, false
	}
	w := 0
	lo, hi := byte(0x80), byte(0xBF) // range of the second byte
	switch {
	case b >= 0xC2 && b <= 0xDF:
		w = 2
	case b == 0xE0:
		w, lo = 3, 0xA0
	case b >= 0xE1 && b <= 0xEC, b == 0xEE, b == 0xEF:
		w = 3
	case b == 0xED:
		w, hi = 3, 0x9F
	case b == 0xF0:
		w, lo = 4, 0x90
	case b >= 0xF1 && b <= 0xF3:
		w = 4
	case b == 0xF4:
		w, hi = 4, 0x8F
	default:
		return 1, false, false
	}
	for i := 1; i < w; i++ {
		if i >= len(p) {
			return i, false, true
		}
		c := p[i]
		if i == 1 {
			if c < lo || c > hi {
				return 1, false, false
			}
		} else if c < 0x80 || c > 0xBF {
			return i, false, false
		}
	}
	return w, true, false
}

// appendLossy appends src to dst as valid UTF-8, replacing each ill-formed
// subsequence by one U+FFFD the way Rust's String::from_utf8_lossy does (Go's
// strings.ToValidUTF8 would merge adjacent errors, so it differs). If final
// is false a trailing truncated sequence is left unconsumed; consumed says how
// many bytes of src were used.
func appendLossy(dst, src []byte, final bool) (out []byte, consumed int) {
	i := 0
	for i < len(src) {
		start := i
		for i < len(src) && src[i] < utf8.RuneSelf {
			i++
		}
		dst = append(dst, src[start:i]...)
		if i == len(src) {
			break
		}
		n, valid, truncated := utf8Seq(src[i:])
		switch {
		case valid:
			dst = append(dst, src[i:i+n]...)
		case truncated && !final:
			return dst, i
		default:
			dst = append(dst, "\uFFFD"...)
		}
		i += n
	}
	return dst, i
}

// lossyString is appendLossy over all of b.
func lossyString(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	out, _ := appendLossy(make([]byte, 0, len(b)+8), b, true)
	return string(out)
}
