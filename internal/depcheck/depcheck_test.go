package depcheck

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/switchyard/switchyard"

// rules: what the packages of roots (and everything they import) must not
// import. A forbidden path ending in "/" forbids everything under it too.
var rules = []struct {
	name      string
	roots     []string
	forbidden []string
}{
	{
		name:  "daemons link no CLI rendering",
		roots: []string{module + "/cmd/worker", module + "/cmd/coordinator"},
		forbidden: []string{
			"gonum.org/v1/plot", "gonum.org/v1/plot/",
			"github.com/schollz/progressbar/",
			module + "/internal/cli",
		},
	},
	{
		name:  "the coordinator links the job store and scheduler, not the trainer or the job runner",
		roots: []string{module + "/cmd/coordinator"},
		forbidden: []string{
			module + "/pkg/train",
			module + "/internal/jobrunner",
		},
	},
	{
		name:  "library packages link no CLI framework or rendering",
		roots: []string{module + "/pkg/..."},
		forbidden: []string{
			"github.com/spf13/cobra",
			"gonum.org/v1/plot", "gonum.org/v1/plot/",
			"github.com/schollz/progressbar/",
			module + "/internal/cli",
		},
	},
}

func TestImportGraph(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH; cannot list dependencies")
	}
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			imports := list(t, goBin, r.roots)
			for _, p := range forbiddenIn(imports, r.forbidden) {
				t.Errorf("%s is linked: %s", p, strings.Join(chain(imports, p), " -> "))
			}
		})
	}
}

// list returns every package that roots depend on (roots included) with
// its direct imports, from `go list -deps`.
func list(t *testing.T, goBin string, roots []string) map[string][]string {
	t.Helper()
	args := append([]string{"list", "-deps", "-f", "{{.ImportPath}} {{join .Imports \" \"}}"}, roots...)
	cmd := exec.Command(goBin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	imports := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			imports[f[0]] = f[1:]
		}
	}
	if len(imports) == 0 {
		t.Fatalf("go list -deps %v listed nothing", roots)
	}
	return imports
}

func forbiddenIn(imports map[string][]string, forbidden []string) []string {
	var out []string
	for p := range imports {
		for _, f := range forbidden {
			if p == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(p, f)) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// chain returns a shortest import path from one of the roots to target,
// so a failure says which import brought it in.
func chain(imports map[string][]string, target string) []string {
	importedBy := map[string]bool{}
	for _, deps := range imports {
		for _, d := range deps {
			importedBy[d] = true
		}
	}
	prev := map[string]string{}
	var queue []string
	for p := range imports {
		if !importedBy[p] { // a root
			prev[p] = ""
			queue = append(queue, p)
		}
	}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p == target {
			var path []string
			for ; p != ""; p = prev[p] {
				path = append([]string{p}, path...)
			}
			return path
		}
		for _, d := range imports[p] {
			if _, seen := prev[d]; !seen {
				prev[d] = p
				queue = append(queue, d)
			}
		}
	}
	return []string{target}
}
