// Package quantflag is the --quantize flag of the commands that load routed
// experts (serve, generate, worker, coordinator); a package of its own so
// daemons do not link the CLI rendering in internal/cli.
package quantflag

import (
	"github.com/spf13/pflag"

	"github.com/switchyard/switchyard/pkg/tensor"
)

// quantFlag is a --quantize flag value: none, int8 or q4
// (tensor.ParseQFormat).
type quantFlag struct{ q *tensor.QFormat }

func (f quantFlag) String() string {
	if f.q == nil {
		return tensor.QNone.String()
	}
	return f.q.String()
}

func (f quantFlag) Set(s string) error {
	q, err := tensor.ParseQFormat(s)
	if err != nil {
		return err
	}
	*f.q = q
	return nil
}

func (quantFlag) Type() string { return "int8|q4" }

// Value returns the pflag.Value of a --quantize flag that parses into q.
func Value(q *tensor.QFormat) pflag.Value { return quantFlag{q} }

// Usage is the --quantize help shared by the commands that load
// routed experts.
const Usage = "quantize routed experts at load: int8 (per-channel scales) or q4 (4-bit, groups of 64, f16 scales); serving only"
