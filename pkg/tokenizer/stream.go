package tokenizer

// StreamDecoder decodes a generated sequence one id at a time. Each Step
// returns only the text completed by that id: bytes of a character that the
// next token may still finish (byte-level tokens can split a multi-byte
// character) are held back. The concatenation of every Step result and the
// final Flush equals Decode (or DecodeSkipSpecial) of all the ids.
//
// A StreamDecoder is not safe for concurrent use; use one per sequence.
type StreamDecoder struct {
	t           *Tokenizer
	skipSpecial bool
	pending     []byte // at most 3 bytes: a truncated UTF-8 sequence
	buf         []byte
}

// NewStreamDecoder returns a decoder for one sequence; skipSpecial drops
// special tokens as DecodeSkipSpecial does.
func (t *Tokenizer) NewStreamDecoder(skipSpecial bool) *StreamDecoder {
	return &StreamDecoder{t: t, skipSpecial: skipSpecial}
}

// Step adds id and returns the newly completed text, possibly "". An id
// without a token is an error (wrapping ErrUnknownID) and leaves the decoder
// as it was.
func (d *StreamDecoder) Step(id int) (string, error) {
	if err := d.t.checkID(id); err != nil {
		return "", err
	}
	d.pending = d.t.appendTokenBytes(d.pending, id, d.skipSpecial)
	var n int
	d.buf, n = appendLossy(d.buf[:0], d.pending, false)
	d.pending = append(d.pending[:0], d.pending[n:]...)
	return string(d.buf), nil
}

// Flush returns what is still held back, as U+FFFD per Decode's rules (the
// sequence ended inside a character), and resets the decoder for reuse.
func (d *StreamDecoder) Flush() string {
	s := lossyString(d.pending)
	d.pending = d.pending[:0]
	return s
}
