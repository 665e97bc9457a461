package k8s

import (
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/internal/workercmd"
)

// Sample values for the downward API, as the kubelet would fill them in.
const (
	samplePodIP  = "10.244.1.23"
	sampleHostIP = "192.168.10.11"
	sampleNode   = "node-1"
)

// containerEnv resolves a container's environment as the kubelet does:
// downward-API values (with samples for the pod), $(VAR) expanded against
// the variables defined before it. It reports references to undefined
// variables and anything it cannot resolve.
func containerEnv(w *workload, pod string, c container) (env map[string]string, problems []string) {
	env = map[string]string{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			problems = append(problems, fmt.Sprintf("env %s defined twice", e.Name))
		}
		if e.ValueFrom == nil {
			v, undef := expand(e.Value, env)
			for _, u := range undef {
				problems = append(problems, fmt.Sprintf("env %s refers to $(%s), not defined before it", e.Name, u))
			}
			env[e.Name] = v
			continue
		}
		f, r, sk := e.ValueFrom.FieldRef, e.ValueFrom.ResourceFieldRef, e.ValueFrom.SecretKeyRef
		sources := 0
		for _, set := range []bool{f != nil, r != nil, sk != nil} {
			if set {
				sources++
			}
		}
		switch {
		case sources != 1:
			problems = append(problems, fmt.Sprintf("env %s: want exactly one of fieldRef, resourceFieldRef and secretKeyRef", e.Name))
		case sk != nil:
			if sk.Name == "" || sk.Key == "" {
				problems = append(problems, fmt.Sprintf("env %s: secretKeyRef needs a name and a key", e.Name))
			}
			env[e.Name] = "sample-" + sk.Name + "-" + sk.Key // what the kubelet would read from the Secret
		case f != nil:
			v, ok := map[string]string{
				"metadata.name": pod, "metadata.namespace": w.namespace,
				"status.podIP": samplePodIP, "status.hostIP": sampleHostIP, "spec.nodeName": sampleNode,
			}[f.FieldPath]
			if !ok {
				problems = append(problems, fmt.Sprintf("env %s: fieldPath %q has no sample value in this test", e.Name, f.FieldPath))
			}
			env[e.Name] = v
		case r != nil:
			kind, res, _ := strings.Cut(r.Resource, ".")
			var q quantity
			switch kind {
			case "limits":
				q = c.Resources.Limits[res]
			case "requests":
				q = c.Resources.Requests[res]
			}
			div := quantity("1")
			if r.Divisor != nil {
				div = *r.Divisor
			}
			qv, err1 := q.value()
			dv, err2 := div.value()
			if q == "" || err1 != nil || err2 != nil || dv.Sign() == 0 {
				problems = append(problems, fmt.Sprintf("env %s: resource %q is not set on the container (or divisor %q is invalid)", e.Name, r.Resource, div))
				continue
			}
			n := new(big.Rat).Quo(qv, dv)
			ceil := new(big.Int).Quo(n.Num(), n.Denom())
			if new(big.Rat).SetInt(ceil).Cmp(n) < 0 {
				ceil.Add(ceil, big.NewInt(1))
			}
			env[e.Name] = ceil.String()
		}
	}
	return env, problems
}

// expand does Kubernetes' $(VAR) expansion: a defined variable is
// replaced, $$ is a literal $, an undefined reference is left as written
// (and reported).
func expand(s string, env map[string]string) (string, []string) {
	var b strings.Builder
	var undef []string
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String(), undef
			}
			name := s[i+2 : i+end]
			if v, ok := env[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+end+1])
				undef = append(undef, name)
			}
			i += end
		default:
			b.WriteByte('$')
		}
	}
	return b.String(), undef
}

// commandLine is a container's command and arguments after expansion.
func commandLine(w *workload, pod string, c container) (argv []string, env map[string]string, problems []string) {
	env, problems = containerEnv(w, pod, c)
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		v, undef := expand(a, env)
		for _, u := range undef {
			problems = append(problems, fmt.Sprintf("argument %q refers to $(%s), which the container's env does not define", a, u))
		}
		argv = append(argv, v)
	}
	return argv, env, problems
}

// flagValue returns the value of --name in args (--name=value or --name
// value); a flag given twice is reported as absent.
func flagValue(args []string, name string) (string, bool) {
	var v string
	n := 0
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, "--"+name+"="):
			v, n = strings.TrimPrefix(a, "--"+name+"="), n+1
		case a == "--"+name && i+1 < len(args):
			v, n = args[i+1], n+1
		}
	}
	return v, n == 1
}

// parseBytes reads the byte counts of --mem and GOMEMLIMIT with the
// worker's own parser (internal/workercmd.ParseBytes: an integer with an
// optional unit, B, KB..TB, KiB..TiB).
func parseBytes(s string) (*big.Rat, error) {
	n, err := workercmd.ParseBytes(s)
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, fmt.Errorf("%q is not a byte count", s)
	}
	return new(big.Rat).SetInt64(n), nil
}

func TestExpand(t *testing.T) {
	env := map[string]string{"POD_IP": "10.0.0.1", "N": "3"}
	for _, c := range []struct {
		in, want string
		undef    []string
	}{
		{"--advertise=$(POD_IP):7070", "--advertise=10.0.0.1:7070", nil},
		{"$(N)$(N)", "33", nil},
		{"$$(POD_IP)", "$(POD_IP)", nil},
		{"$(MISSING)-$(N)", "$(MISSING)-3", []string{"MISSING"}},
		{"cost $5 $(N", "cost $5 $(N", nil},
		{"trailing $", "trailing $", nil},
	} {
		got, undef := expand(c.in, env)
		if got != c.want || !slices.Equal(undef, c.undef) {
			t.Errorf("expand(%q) = %q, undefined %v; want %q, %v", c.in, got, undef, c.want, c.undef)
		}
	}
}
