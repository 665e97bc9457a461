package placement

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/pkg/cluster"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata/*.txt expectations with the actual output")

// TestScripts runs the scenarios of testdata/*.txt, in the style of etcd
// raft's datadriven scripts. A block is command lines, a line "----", the
// expected output of the block's last "place", and a blank line:
//
//	experts layers=1,3 per-layer=4 bytes=100   set the model's logical experts
//	replicas 2                                 R
//	join w1 w2 [mem=N]                         workers join (MemBytes N, 0 = unlimited)
//	leave w2                                   workers leave (lease expired)
//	place                                      run Place with the previous result as Prev
//
// place prints the epoch, copies per worker, the copies added (+) and
// dropped (-) against the previous placement, and the owners table (one
// line per layer, replicas joined by commas). Errors print as "error: ...".
// Run with -rewrite to regenerate the expectations after a deliberate change.
func TestScripts(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.txt")
	if len(files) == 0 {
		t.Fatal("no testdata scripts")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) { runScript(t, f) })
	}
}

type scriptState struct {
	in   Input
	prev *cluster.Placement
}

func runScript(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	st := &scriptState{in: Input{Model: "m"}}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	var got string
	inExpect := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case inExpect:
			if strings.TrimSpace(line) == "" {
				inExpect = false
				out.WriteString("\n")
			}
			continue // expectations are replaced by got
		case line == "----":
			out.WriteString(line + "\n" + got)
			inExpect = true
			continue
		}
		out.WriteString(line + "\n")
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		got = st.exec(t, line, fields)
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if out.String() != string(data) {
		t.Errorf("%s: output differs (run with -rewrite and inspect git diff):\n%s", path, diffLines(string(data), out.String()))
	}
}

func (st *scriptState) exec(t *testing.T, line string, f []string) string {
	t.Helper()
	kv := map[string]string{}
	var args []string
	for _, a := range f[1:] {
		if k, v, ok := strings.Cut(a, "="); ok {
			kv[k] = v
		} else {
			args = append(args, a)
		}
	}
	num := func(s string) int64 {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		return n
	}
	switch f[0] {
	case "experts":
		var layers []int
		for _, s := range strings.Split(kv["layers"], ",") {
			layers = append(layers, int(num(s)))
		}
		st.in.Experts = uniformExperts(layers, int(num(kv["per-layer"])), num(kv["bytes"]))
		st.in.Layers = 0
	case "replicas":
		st.in.Replicas = int(num(args[0]))
	case "join":
		var mem int64
		if m, ok := kv["mem"]; ok {
			mem = num(m)
		}
		for _, id := range args {
			st.in.Workers = append(st.in.Workers, cluster.WorkerInfo{ID: cluster.WorkerID(id), Addr: id + ":1", MemBytes: mem})
		}
	case "leave":
		for _, id := range args {
			kept := st.in.Workers[:0]
			for _, w := range st.in.Workers {
				if string(w.ID) != id {
					kept = append(kept, w)
				}
			}
			st.in.Workers = kept
		}
	case "place":
		st.in.Prev = st.prev
		p, err := Place(st.in)
		if err != nil {
			return "error: " + err.Error() + "\n"
		}
		var b strings.Builder
		ch := Diff(st.prev, &p)
		counts := Counts(&p)
		fmt.Fprintf(&b, "epoch %d:", p.Epoch)
		for _, id := range p.WorkerIDs() {
			fmt.Fprintf(&b, " %s=%d", id, counts[id])
		}
		fmt.Fprintf(&b, " (+%d -%d)\n", len(ch.Added), len(ch.Removed))
		for l, row := range p.Owners {
			if row == nil {
				continue
			}
			fmt.Fprintf(&b, "L%d:", l)
			for _, ws := range row {
				s := make([]string, len(ws))
				for i, w := range ws {
					s[i] = string(w)
				}
				fmt.Fprintf(&b, " %s", strings.Join(s, ","))
			}
			b.WriteString("\n")
		}
		st.prev = &p
		return b.String()
	default:
		t.Fatalf("unknown command %q", line)
	}
	return ""
}

func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var a, c string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			c = g[i]
		}
		if a != c {
			fmt.Fprintf(&b, "line %d:\n  want %q\n  got  %q\n", i+1, a, c)
		}
	}
	return b.String()
}
