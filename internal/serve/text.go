package serve

import "strings"

// stopFilter turns a sequence's decoded text, as it grows, into the text a
// client may see: it cuts the output just before the first stop string
// and, while streaming, holds back a tail that may still turn out to be the
// start of one, so no streamed byte ever has to be taken back.
//
// Invariant: the text released so far never contains the start of a stop
// string's occurrence, so every occurrence still to come starts inside
// held (or in later text).
type stopFilter struct {
	stops []string // non-empty strings
	held  string   // decoded, not released yet
}

// push appends s and returns the text that can be released now. stopped
// is true when a stop string occurred: out then ends just before it and the
// sequence is over.
func (f *stopFilter) push(s string) (out string, stopped bool) {
	if len(f.stops) == 0 {
		return s, false
	}
	f.held += s
	first := -1
	for _, st := range f.stops {
		if i := strings.Index(f.held, st); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	if first >= 0 {
		out, f.held = f.held[:first], ""
		return out, true
	}
	keep := 0 // longest suffix of held that is a proper prefix of a stop
	for _, st := range f.stops {
		for k := min(len(st)-1, len(f.held)); k > keep; k-- {
			if strings.HasSuffix(f.held, st[:k]) {
				keep = k
				break
			}
		}
	}
	out = f.held[:len(f.held)-keep]
	f.held = f.held[len(f.held)-keep:]
	return out, false
}

// flush releases what is held back (the sequence ended without a stop
// string).
func (f *stopFilter) flush() string {
	out := f.held
	f.held = ""
	return out
}
