package verify

import (
	"fmt"

	"github.com/switchyard/switchyard/pkg/tokenizer"
)

// Tokenizer checks every case of dir/golden.json against dir/tokenizer.json:
// ids, tokens and decoded text must match exactly.
func Tokenizer(dir string) (*Report, error) {
	cases, err := tokenizer.CheckGolden(dir)
	if err != nil {
		return nil, err
	}
	r := &Report{}
	if len(cases) == 0 {
		r.Failf("cases", "%s/golden.json has no cases", dir)
	}
	for i, c := range cases {
		name := fmt.Sprintf("case[%d]", i)
		mis := 0
		for _, ok := range []bool{c.IDsOK, c.TokensOK, c.DecodedOK} {
			if !ok {
				mis++
			}
		}
		r.Add(name, "mismatch", float64(mis), 0, caseNote(c))
	}
	return r, nil
}

func caseNote(c tokenizer.CaseResult) string {
	text := c.Text
	if len(text) > 40 {
		text = text[:40] + "..."
	}
	if c.OK() {
		return fmt.Sprintf("%q: ids, tokens, decoded exact", text)
	}
	return fmt.Sprintf("%q: %s", text, c.Mismatch)
}
