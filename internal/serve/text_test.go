package serve

import (
	"strings"
	"testing"
)

// TestStopFilter feeds decoded pieces through the stop filter: the
// released text is the generated text cut just before the first stop
// string; nothing past that point is ever released, and text held back
// because it might start a stop string is released once it cannot.
func TestStopFilter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stops   []string
		pieces  []string
		want    string // all text released
		stopped bool
		held    []string // what each push releases (when checked)
	}{
		{"no stops", nil, []string{"ab", "cd"}, "abcd", false, []string{"ab", "cd"}},
		{"stop inside a piece", []string{"cd"}, []string{"ab", "xcdy"}, "abx", true, nil},
		{"stop across pieces", []string{"STOP"}, []string{"go S", "T", "OP now"}, "go ", true, []string{"go ", "", "go "[:0]}},
		{"false start released", []string{"STOP"}, []string{"a S", "T", "x"}, "a STx", false, []string{"a ", "", "STx"}},
		{"earliest of several", []string{"zz", "b"}, []string{"aazbzz"}, "aaz", true, nil},
		{"overlapping prefixes", []string{"aab"}, []string{"a", "a", "a", "b"}, "a", true, []string{"", "", "a", ""}},
		{"multi-byte", []string{"é!"}, []string{"caf", "é", "?", "é", "!"}, "café?", true, []string{"caf", "", "é?", "", ""}},
		{"ends held", []string{"xyz"}, []string{"abx", "y"}, "abxy", false, []string{"ab", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := stopFilter{stops: tc.stops}
			var got strings.Builder
			stopped := false
			for i, p := range tc.pieces {
				out, hit := f.push(p)
				if tc.held != nil && i < len(tc.held) && out != tc.held[i] {
					t.Errorf("push %d (%q) released %q, want %q", i, p, out, tc.held[i])
				}
				got.WriteString(out)
				if hit {
					stopped = true
					break
				}
			}
			if !stopped {
				got.WriteString(f.flush())
			}
			if got.String() != tc.want || stopped != tc.stopped {
				t.Errorf("released %q stopped %v, want %q %v", got.String(), stopped, tc.want, tc.stopped)
			}
		})
	}
}
