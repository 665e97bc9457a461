package grafana

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const (
	dashboardFile = "switchyard.json"
	// dsVar is the data source variable every panel and query variable
	// takes its data source from.
	dsVar = "DS_PROMETHEUS"
)

// The dashboard fields this test checks (Grafana's JSON model,
// https://grafana.com/docs/grafana/latest/dashboards/build-dashboards/view-dashboard-json-model/).
type dashboard struct {
	ID            *int    `json:"id"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int             `json:"id"`
	Type       string          `json:"type"`
	Title      string          `json:"title"`
	Datasource json.RawMessage `json:"datasource"`
	Targets    []target        `json:"targets"`
	Panels     []panel         `json:"panels"` // a collapsed row's
	Collapsed  bool            `json:"collapsed"`
	Repeat     string          `json:"repeat"`
	GridPos    *struct {
		X int `json:"x"`
		Y int `json:"y"`
		W int `json:"w"`
		H int `json:"h"`
	} `json:"gridPos"`
}

type target struct {
	RefID      string          `json:"refId"`
	Expr       string          `json:"expr"`
	Datasource json.RawMessage `json:"datasource"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Datasource json.RawMessage `json:"datasource"`
}

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func load(t *testing.T) *dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		var v any
		t.Fatalf("%s is not valid JSON: %v", dashboardFile, json.Unmarshal(b, &v))
	}
	d := &dashboard{}
	if err := json.Unmarshal(b, d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// allPanels lists every panel, those inside collapsed rows included.
func (d *dashboard) allPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// usesDSVar reports whether a datasource field references the variable:
// {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}.
func usesDSVar(raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return fmt.Errorf("no datasource")
	}
	var compact bytes.Buffer
	if json.Compact(&compact, raw) == nil {
		raw = compact.Bytes()
	}
	var ref dsRef
	if err := json.Unmarshal(raw, &ref); err != nil {
		return fmt.Errorf("datasource %s: want {\"type\": \"prometheus\", \"uid\": \"${%s}\"}", raw, dsVar)
	}
	if ref.Type != "prometheus" || (ref.UID != "${"+dsVar+"}" && ref.UID != "$"+dsVar) {
		return fmt.Errorf("datasource %s: want {\"type\": \"prometheus\", \"uid\": \"${%s}\"}", raw, dsVar)
	}
	return nil
}

// TestDashboard: the file is valid JSON with a title, a uid Grafana
// accepts, schemaVersion >= 39 and no fixed numeric id (import assigns
// one); a data source variable DS_PROMETHEUS of type datasource for
// Prometheus; every panel has a unique positive id and a place on the
// 24-column grid; rows hold panels only while collapsed and have no
// queries; every other panel takes its data source from ${DS_PROMETHEUS}
// and has at least one target, each with a PromQL expr, a unique refId
// and (if it names one) the same data source.
func TestDashboard(t *testing.T) {
	d := load(t)
	if strings.TrimSpace(d.Title) == "" {
		t.Error("no title")
	}
	if !regexp.MustCompile(`^[A-Za-z0-9_-]{1,40}$`).MatchString(d.UID) {
		t.Errorf("uid %q: want 1 to 40 letters, digits, '-' or '_'", d.UID)
	}
	if d.SchemaVersion < 39 {
		t.Errorf("schemaVersion %d, want 39 or later", d.SchemaVersion)
	}
	if d.ID != nil {
		t.Errorf("id %d: leave it null, Grafana assigns one on import", *d.ID)
	}
	var ds *variable
	for i, v := range d.Templating.List {
		if v.Name == dsVar {
			ds = &d.Templating.List[i]
		}
	}
	if ds == nil || ds.Type != "datasource" || string(ds.Query) != `"prometheus"` {
		t.Errorf("want a template variable %s of type datasource with query \"prometheus\"", dsVar)
	}
	ids := map[int]string{}
	if len(d.Panels) == 0 {
		t.Fatal("no panels")
	}
	for _, p := range d.allPanels() {
		what := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 {
			t.Errorf("%s: want a positive id", what)
		}
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("%s: id also used by %q", what, prev)
		}
		ids[p.ID] = p.Title
		if strings.TrimSpace(p.Title) == "" {
			t.Errorf("%s: no title", what)
		}
		if g := p.GridPos; g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v: want w, h > 0 within the 24 columns", what, g)
		}
		if p.Type == "row" {
			if len(p.Targets) > 0 {
				t.Errorf("%s: a row has no queries", what)
			}
			if len(p.Panels) > 0 && !p.Collapsed {
				t.Errorf("%s: an expanded row keeps its panels in the top-level list, not in its own", what)
			}
			continue
		}
		if len(p.Panels) > 0 {
			t.Errorf("%s: only rows hold panels", what)
		}
		if err := usesDSVar(p.Datasource); err != nil {
			t.Errorf("%s: %v", what, err)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no targets", what)
		}
		refs := map[string]bool{}
		for i, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: target %d has no expr", what, i)
			}
			if tg.RefID == "" || refs[tg.RefID] {
				t.Errorf("%s: target %d: refId %q empty or used twice", what, i, tg.RefID)
			}
			refs[tg.RefID] = true
			if len(tg.Datasource) > 0 {
				if err := usesDSVar(tg.Datasource); err != nil {
					t.Errorf("%s: target %s: %v", what, tg.RefID, err)
				}
			}
		}
	}
}

// varRef matches $name, ${name} and ${name:format}, and [[name]].
var varRef = regexp.MustCompile(`\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]`)

// TestDashboardVariables: every variable an expression, a title, a repeat
// or a variable's query uses is defined (or one of Grafana's $__ ones), and
// every query variable takes its data source from ${DS_PROMETHEUS}.
func TestDashboardVariables(t *testing.T) {
	d := load(t)
	defined := map[string]bool{}
	for _, v := range d.Templating.List {
		if v.Name == "" || defined[v.Name] {
			t.Errorf("template variable %q: empty or defined twice", v.Name)
		}
		defined[v.Name] = true
	}
	check := func(where, s string) {
		for _, m := range varRef.FindAllStringSubmatch(s, -1) {
			name := m[1] + m[2] + m[3]
			if !defined[name] && !strings.HasPrefix(name, "__") {
				t.Errorf("%s uses $%s, which is not a template variable", where, name)
			}
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		if err := usesDSVar(v.Datasource); err != nil {
			t.Errorf("variable %s: %v", v.Name, err)
		}
		check("variable "+v.Name, string(v.Query)+" "+v.Definition)
	}
	for _, p := range d.allPanels() {
		what := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		check(what+" title", p.Title)
		if p.Repeat != "" && !defined[p.Repeat] {
			t.Errorf("%s repeats over %q, which is not a template variable", what, p.Repeat)
		}
		for _, tg := range p.Targets {
			check(what+" target "+tg.RefID, tg.Expr)
		}
	}
}

// selectorName matches the metric name of a vector selector written with
// braces (name{...}).
var selectorName = regexp.MustCompile(`([A-Za-z_:][A-Za-z0-9_:]*)\s*\{`)

// TestDashboardMetricFamilies: every vector selector names a Switchyard
// metric or one of the Go and process collectors' (process_*, go_*),
// nothing else (no exporter the cluster does not run).
func TestDashboardMetricFamilies(t *testing.T) {
	d := load(t)
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			for _, m := range selectorName.FindAllStringSubmatch(tg.Expr, -1) {
				n := m[1]
				if !strings.HasPrefix(n, "switchyard_") && !strings.HasPrefix(n, "process_") && !strings.HasPrefix(n, "go_") {
					t.Errorf("panel %d %q target %s: metric %q is not a switchyard_*, process_* or go_* metric", p.ID, p.Title, tg.RefID, n)
				}
			}
		}
	}
}

// metricRef matches a switchyard_* identifier that is not part of a
// longer one (the character before it is no name character).
var metricRef = regexp.MustCompile(`(?:^|[^A-Za-z0-9_:])(switchyard_[a-z0-9_]+)`)

// metricNames returns the switchyard_* names in a PromQL expression.
func metricNames(expr string) []string {
	var out []string
	for _, m := range metricRef.FindAllStringSubmatch(expr, -1) {
		if !slices.Contains(out, m[1]) {
			out = append(out, m[1])
		}
	}
	return out
}

// histogramSuffixes are the series suffixes of a histogram (or summary)
// whose family name is the name without them.
var histogramSuffixes = []string{"_bucket", "_sum", "_count"}

// family returns the name a series name is defined under: itself if
// defined, else the name less a histogram suffix; ok is false if neither
// is defined (want is then the name to report).
func family(name string, defined map[string]bool) (want string, ok bool) {
	if defined[name] {
		return name, true
	}
	for _, s := range histogramSuffixes {
		if base, cut := strings.CutSuffix(name, s); cut {
			return base, defined[base]
		}
	}
	return name, false
}

// TestDashboardMetricsDefined: every switchyard_* metric the dashboard
// queries (its panels and its variables) is defined in the repository's
// non-test Go source (definedMetricNames says where it looks), so a metric
// renamed in the code cannot leave a panel empty unseen.
func TestDashboardMetricsDefined(t *testing.T) {
	d := load(t)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	defined, err := definedMetricNames(t, root)
	if err != nil {
		t.Fatal(err)
	}
	usedBy := map[string][]string{} // family name -> where
	add := func(expr, where string) {
		for _, n := range metricNames(expr) {
			want, ok := family(n, defined)
			if !ok && !slices.Contains(usedBy[want], where) {
				usedBy[want] = append(usedBy[want], where)
			}
		}
	}
	used := 0
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			used += len(metricNames(tg.Expr))
			add(tg.Expr, fmt.Sprintf("panel %d %q", p.ID, p.Title))
		}
	}
	for _, v := range d.Templating.List {
		add(string(v.Query)+" "+v.Definition, "variable "+v.Name)
	}
	if used == 0 {
		t.Fatal("the dashboard queries no switchyard_* metric")
	}
	if len(usedBy) == 0 {
		return
	}
	var missing []string
	for n := range usedBy {
		missing = append(missing, n)
	}
	sort.Strings(missing)
	var b strings.Builder
	fmt.Fprintf(&b, "%d metric names used in %s are not defined in the repository's non-test Go source (%d switchyard_* names found there).\n", len(missing), dashboardFile, len(defined))
	b.WriteString("A name counts as defined as a Go string literal or string constant equal to it, or as the\n")
	b.WriteString("Namespace/Subsystem/Name fields of a composite literal (prometheus.*Opts), a prometheus.BuildFQName\n")
	b.WriteString("or prometheus.NewDesc call, built from literals and constants. Missing:\n")
	for _, n := range missing {
		fmt.Fprintf(&b, "\t%s\t(%s)\n", n, strings.Join(usedBy[n], ", "))
	}
	t.Error(b.String())
}

// moduleRoot finds the folder of the go.mod above this one.
func moduleRoot() (string, error) {
	dir, err := filepath.Abs(".")
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
		dir = parent
	}
}

// A name, not a prefix such as "switchyard_worker_".
var metricName = regexp.MustCompile(`^switchyard_[a-z0-9_]*[a-z0-9]$`)

// definedMetricNames scans every non-test .go file under root (but
// deploy/, testdata, vendor and hidden or _-prefixed folders) and returns
// the switchyard_* metric names it defines: string literals and string
// constants (or variables) equal to such a name, and names composed by
// prometheus.BuildFQName calls, the first argument of NewDesc calls and
// the Namespace, Subsystem and Name fields of composite literals, from
// literals, constants of the same package or of this module's packages,
// and '+'. A file that does not parse (being edited) is scanned for
// string literals alone, with a log line.
func definedMetricNames(t *testing.T, root string) (map[string]bool, error) {
	modPath, err := modulePath(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	fset := token.NewFileSet()
	pkgs := map[string][]*ast.File{} // by folder
	defined := map[string]bool{}
	err = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if e.IsDir() {
			n := e.Name()
			if p != root && (rel == "deploy" || n == "testdata" || n == "vendor" || strings.HasPrefix(n, ".") || strings.HasPrefix(n, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(fset, p, src, parser.SkipObjectResolution)
		if err != nil {
			t.Logf("%s does not parse (%v); scanning its string literals only", rel, err)
			for _, m := range literalName.FindAllSubmatch(src, -1) {
				defined[string(m[1])] = true
			}
			return nil
		}
		pkgs[filepath.Dir(p)] = append(pkgs[filepath.Dir(p)], f)
		return nil
	})
	if err != nil {
		return nil, err
	}
	s := &scanner{root: root, modPath: modPath, consts: map[string]map[string]ast.Expr{}, constFile: map[ast.Expr]*ast.File{}, imports: map[*ast.File]map[string]string{}}
	for dir, files := range pkgs {
		s.consts[dir] = map[string]ast.Expr{}
		for _, f := range files {
			s.imports[f] = fileImports(f)
			ast.Inspect(f, func(n ast.Node) bool {
				g, ok := n.(*ast.GenDecl)
				if !ok || (g.Tok != token.CONST && g.Tok != token.VAR) {
					return true
				}
				for _, sp := range g.Specs {
					vs := sp.(*ast.ValueSpec)
					if len(vs.Values) != len(vs.Names) {
						continue
					}
					for i, n := range vs.Names {
						s.consts[dir][n.Name] = vs.Values[i]
						s.constFile[vs.Values[i]] = f
					}
				}
				return true
			})
		}
	}
	for dir, files := range pkgs {
		for _, f := range files {
			ctx := evalCtx{dir: dir, file: f}
			ast.Inspect(f, func(n ast.Node) bool {
				var v string
				var ok bool
				switch n := n.(type) {
				case *ast.BasicLit:
					v, ok = s.eval(ctx, n, 0)
				case *ast.ValueSpec:
					for _, e := range n.Values {
						if v, ok := s.eval(ctx, e, 0); ok && metricName.MatchString(v) {
							defined[v] = true
						}
					}
				case *ast.CallExpr:
					switch callName(n) {
					case "BuildFQName":
						v, ok = s.eval(ctx, n, 0)
					case "NewDesc":
						if len(n.Args) > 0 {
							v, ok = s.eval(ctx, n.Args[0], 0)
						}
					}
				case *ast.CompositeLit:
					v, ok = s.optsName(ctx, n)
				}
				if ok && metricName.MatchString(v) {
					defined[v] = true
				}
				return true
			})
		}
	}
	return defined, nil
}

var literalName = regexp.MustCompile(`"(switchyard_[a-z0-9_]+)"`)

func modulePath(gomod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(l), "module "); ok {
			return strings.Trim(strings.TrimSpace(p), `"`), nil
		}
	}
	return "", fmt.Errorf("%s: no module line", gomod)
}

// fileImports maps a file's import names to import paths.
func fileImports(f *ast.File) map[string]string {
	m := map[string]string{}
	for _, im := range f.Imports {
		p, _ := strconv.Unquote(im.Path.Value)
		name := p[strings.LastIndex(p, "/")+1:]
		if im.Name != nil {
			name = im.Name.Name
		}
		m[name] = p
	}
	return m
}

func callName(c *ast.CallExpr) string {
	switch f := c.Fun.(type) {
	case *ast.Ident:
		return f.Name
	case *ast.SelectorExpr:
		return f.Sel.Name
	}
	return ""
}

type scanner struct {
	root, modPath string
	consts        map[string]map[string]ast.Expr // folder -> name -> value
	constFile     map[ast.Expr]*ast.File
	imports       map[*ast.File]map[string]string
}

type evalCtx struct {
	dir  string
	file *ast.File
}

// eval computes a constant string expression: literals, constants and
// variables with literal values (this package's, or pkg.Name of a package
// of this module), '+', parentheses and BuildFQName.
func (s *scanner) eval(ctx evalCtx, e ast.Expr, depth int) (string, bool) {
	if depth > 20 {
		return "", false
	}
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		v, err := strconv.Unquote(e.Value)
		return v, err == nil
	case *ast.ParenExpr:
		return s.eval(ctx, e.X, depth+1)
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return "", false
		}
		a, ok1 := s.eval(ctx, e.X, depth+1)
		b, ok2 := s.eval(ctx, e.Y, depth+1)
		return a + b, ok1 && ok2
	case *ast.Ident:
		return s.constant(ctx.dir, e.Name, depth)
	case *ast.SelectorExpr:
		x, ok := e.X.(*ast.Ident)
		if !ok {
			return "", false
		}
		p, ok := s.imports[ctx.file][x.Name]
		rel, inMod := strings.CutPrefix(p, s.modPath+"/")
		if !ok || !inMod {
			return "", false
		}
		return s.constant(filepath.Join(s.root, filepath.FromSlash(rel)), e.Sel.Name, depth)
	case *ast.CallExpr:
		if callName(e) != "BuildFQName" || len(e.Args) != 3 {
			return "", false
		}
		var parts [3]string
		for i, a := range e.Args {
			v, ok := s.eval(ctx, a, depth+1)
			if !ok {
				return "", false
			}
			parts[i] = v
		}
		return buildFQName(parts[0], parts[1], parts[2]), true
	}
	return "", false
}

func (s *scanner) constant(dir, name string, depth int) (string, bool) {
	v, ok := s.consts[dir][name]
	if !ok {
		return "", false
	}
	return s.eval(evalCtx{dir: dir, file: s.constFile[v]}, v, depth+1)
}

// optsName is the fully qualified name of a composite literal with a Name
// field (prometheus.CounterOpts and the like): Namespace, Subsystem and
// Name joined as BuildFQName joins them.
func (s *scanner) optsName(ctx evalCtx, c *ast.CompositeLit) (string, bool) {
	fields := map[string]string{}
	for _, el := range c.Elts {
		kv, ok := el.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		k, ok := kv.Key.(*ast.Ident)
		if !ok || (k.Name != "Namespace" && k.Name != "Subsystem" && k.Name != "Name") {
			continue
		}
		v, ok := s.eval(ctx, kv.Value, 0)
		if !ok {
			return "", false // a part we cannot know
		}
		fields[k.Name] = v
	}
	if fields["Name"] == "" {
		return "", false
	}
	return buildFQName(fields["Namespace"], fields["Subsystem"], fields["Name"]), true
}

// buildFQName is prometheus.BuildFQName: the non-empty parts joined by
// '_', or "" without a name.
func buildFQName(namespace, subsystem, name string) string {
	if name == "" {
		return ""
	}
	var parts []string
	for _, p := range []string{namespace, subsystem, name} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "_")
}

// TestMetricNames checks the extraction from PromQL.
func TestMetricNames(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`sum(rate(switchyard_serve_generation_tokens_total{job=~"$job"}[5m]))`, []string{"switchyard_serve_generation_tokens_total"}},
		{`histogram_quantile(0.99, sum by (le) (rate(switchyard_serve_time_to_first_token_seconds_bucket[5m])))`, []string{"switchyard_serve_time_to_first_token_seconds_bucket"}},
		{`a_switchyard_x + switchyard_y / switchyard_y`, []string{"switchyard_y"}},
		{`label_values({__name__=~"switchyard_.+"}, job)`, nil},
		{`go_goroutines + process_open_fds`, nil},
	} {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%q) = %v, want %v", c.expr, got, c.want)
		}
	}
	defined := map[string]bool{"switchyard_h_seconds": true, "switchyard_c_count": true}
	for _, c := range []struct {
		name, want string
		ok         bool
	}{
		{"switchyard_h_seconds_bucket", "switchyard_h_seconds", true},
		{"switchyard_h_seconds_sum", "switchyard_h_seconds", true},
		{"switchyard_c_count", "switchyard_c_count", true},
		{"switchyard_x_count", "switchyard_x", false},
		{"switchyard_x_total", "switchyard_x_total", false},
	} {
		if want, ok := family(c.name, defined); want != c.want || ok != c.ok {
			t.Errorf("family(%q) = %q, %v; want %q, %v", c.name, want, ok, c.want, c.ok)
		}
	}
}

// TestDefinedMetricNames checks the Go source scan on a small module: each
// way of defining a name that it accepts, and what it must not take.
func TestDefinedMetricNames(t *testing.T) {
	root := t.TempDir()
	write := func(name, src string) {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module example.com/m\n\ngo 1.22\n")
	write("names/names.go", `package names

const Namespace = "switchyard"
const Worker = "worker"
`)
	write("a/a.go", `package a

import (
	"github.com/prometheus/client_golang/prometheus"
	n "example.com/m/names"
)

const sub = "coordinator"
const prefix = "switchyard_train_"

var (
	lit = prometheus.NewCounter(prometheus.CounterOpts{Name: "switchyard_lit_total", Help: "switchyard_not_this one"})
	parts = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: n.Namespace, Subsystem: n.Worker, Name: "held_experts"})
	fq = prometheus.NewDesc(prometheus.BuildFQName("switchyard", sub, "jobs"), "h", nil, nil)
	cat = prometheus.NewGauge(prometheus.GaugeOpts{Name: prefix + "loss"})
	unknown = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: dynamic(), Name: "unknowable"})
)

const constName = "switchyard_const_seconds"

func dynamic() string { return "x" }

func helper() { register("switchyard_helper_total") }
func register(string) {}
`)
	write("a/a_test.go", `package a

const fromTest = "switchyard_test_only"
`)
	write("deploy/x/x.go", `package x

const deployed = "switchyard_deploy_only"
`)
	write("b/broken.go", `package b

var x = "switchyard_broken_file" +
`)
	got, err := definedMetricNames(t, root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	want := []string{
		"switchyard_broken_file",
		"switchyard_const_seconds",
		"switchyard_coordinator_jobs",
		"switchyard_helper_total",
		"switchyard_lit_total",
		"switchyard_train_loss",
		"switchyard_worker_held_experts",
	}
	if !slices.Equal(names, want) {
		t.Errorf("defined names %v\nwant %v", names, want)
	}
}
