// Package computeflag is the --compute flag of the commands that run
// matrix products (serve, generate, train, worker): exact (float32
// products, the default) or bf16 (tensor.ComputeBF16). Setting it sets the
// mode of this process and exports tensor.ComputeEnv, so the worker
// processes serve and train start inherit it; workers of an external
// cluster take their own --compute.
package computeflag

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/switchyard/switchyard/pkg/tensor"
)

type value struct{}

func (value) String() string { return tensor.CurrentCompute().String() }

func (value) Set(s string) error {
	c, err := tensor.ParseCompute(s)
	if err != nil {
		return err
	}
	tensor.SetCompute(c)
	return os.Setenv(tensor.ComputeEnv, c.String())
}

func (value) Type() string { return "exact|bf16" }

// Usage is the --compute help.
const Usage = "arithmetic of batched matrix products (prefill, batched decode, training): exact (float32) or bf16 (operands rounded to bfloat16, float32 sums; also SWITCHYARD_COMPUTE); single-token decode stays exact"

// Register adds --compute to f.
func Register(f *pflag.FlagSet) { f.Var(value{}, "compute", Usage) }
