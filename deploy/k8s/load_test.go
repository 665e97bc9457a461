package k8s

import (
	"bufio"
	"fmt"
	"os"
	"path"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// object is one decoded YAML document.
type object struct {
	file       string // relative to this folder
	kind, name string
	namespace  string // the namespace it lands in
	kustomized bool   // applied by kustomization.yaml (not an example)
	v          any    // *service, *statefulSet, ...
}

func (o *object) String() string { return fmt.Sprintf("%s: %s/%s", o.file, o.kind, o.name) }

// workload is an object that runs pods.
type workload struct {
	*object
	replicas    int
	selector    labelSelector
	template    podTemplate
	serviceName string // StatefulSets
	podNames    []string
}

type manifests struct {
	kust      kustomization
	files     []string // every YAML file but kustomization.yaml
	objects   []*object
	workloads []*workload
	goMod     goMod
}

// kinds maps "apiVersion kind" to a new value to decode strictly into.
var kinds = map[string]func() any{
	"v1 Namespace":                            func() any { return new(namespaceObj) },
	"v1 Service":                              func() any { return new(service) },
	"v1 PersistentVolumeClaim":                func() any { return new(pvc) },
	"v1 Pod":                                  func() any { return new(podObj) },
	"apps/v1 StatefulSet":                     func() any { return new(statefulSet) },
	"apps/v1 Deployment":                      func() any { return new(deployment) },
	"batch/v1 Job":                            func() any { return new(jobObj) },
	"policy/v1 PodDisruptionBudget":           func() any { return new(pdb) },
	"networking.k8s.io/v1 NetworkPolicy":      func() any { return new(networkPolicy) },
	"cert-manager.io/v1 Issuer":               func() any { return new(issuer) },
	"cert-manager.io/v1 Certificate":          func() any { return new(certificate) },
	"monitoring.coreos.com/v1 ServiceMonitor": func() any { return new(serviceMonitor) },
}

// crdKinds are kinds of CustomResourceDefinitions a cluster may lack (the
// Prometheus Operator's). A top-level file holding only such objects is
// applied by hand, like examples/, and must not be in kustomization.yaml:
// `kubectl apply -k` would fail on a cluster without the CRD.
var crdKinds = map[string]bool{
	"monitoring.coreos.com/v1 ServiceMonitor": true,
}

// load reads every YAML file here and in examples/ (a few milliseconds).
// The tests that use it stop if any document does not decode
// (TestManifestsDecode lists the problems).
func load(t *testing.T) *manifests {
	t.Helper()
	m, errs := loadManifests()
	if len(errs) > 0 {
		t.Fatalf("the manifests do not decode (%d problems, see TestManifestsDecode); the first: %s", len(errs), errs[0])
	}
	return m
}

// TestManifestsDecode: every YAML document here and in examples/ is of a
// known kind and decodes strictly (no unknown or duplicate fields), names
// are DNS labels and unique per kind, namespaces are kustomization.yaml's.
func TestManifestsDecode(t *testing.T) {
	m, errs := loadManifests()
	for _, e := range errs {
		t.Error(e)
	}
	if len(errs) == 0 && len(m.objects) == 0 {
		t.Error("no manifests")
	}
}

var docSep = regexp.MustCompile(`(?m)^---[ \t]*$`)

func loadManifests() (*manifests, []string) {
	var errs []string
	fail := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	m := &manifests{}
	var err error
	if m.goMod, err = readGoMod("../../go.mod"); err != nil {
		return nil, []string{err.Error()}
	}
	kb, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		return nil, []string{err.Error()}
	}
	if err := yaml.UnmarshalStrict(kb, &m.kust); err != nil {
		return nil, []string{fmt.Sprintf("kustomization.yaml: %v", err)}
	}
	for _, dir := range []string{".", "examples"} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, []string{err.Error()}
		}
		for _, e := range ents {
			n := e.Name()
			if e.IsDir() || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) || (dir == "." && n == "kustomization.yaml") {
				continue
			}
			m.files = append(m.files, path.Join(dir, n))
		}
	}
	seen := map[string]*object{}
	for _, f := range m.files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, []string{err.Error()}
		}
		for i, doc := range docSep.Split(string(b), -1) {
			var raw map[string]any
			if err := yaml.Unmarshal([]byte(doc), &raw); err != nil {
				fail("%s: document %d: %v", f, i, err)
				continue
			}
			if len(raw) == 0 {
				continue // comments only
			}
			var head struct {
				typeMeta
				Metadata objectMeta `json:"metadata"`
			}
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				fail("%s: document %d: %v", f, i, err)
				continue
			}
			mk := kinds[head.APIVersion+" "+head.Kind]
			if mk == nil {
				fail("%s: document %d: apiVersion %q kind %q is not one this test knows (types_test.go)", f, i, head.APIVersion, head.Kind)
				continue
			}
			v := mk()
			if err := yaml.UnmarshalStrict([]byte(doc), v); err != nil {
				fail("%s: %s/%s: %v", f, head.Kind, head.Metadata.Name, err)
				continue
			}
			o := &object{file: f, kind: head.Kind, name: head.Metadata.Name, v: v,
				kustomized: path.Dir(f) == "." && !crdKinds[head.APIVersion+" "+head.Kind]}
			if !dns1123Label.MatchString(o.name) {
				fail("%s: name %q is not a DNS-1123 label", o, o.name)
			}
			switch {
			case o.kind == "Namespace":
			case o.kustomized && head.Metadata.Namespace != "" && head.Metadata.Namespace != m.kust.Namespace:
				fail("%s: namespace %q, but kustomization.yaml puts everything in %q", o, head.Metadata.Namespace, m.kust.Namespace)
			case o.kustomized:
				o.namespace = m.kust.Namespace
			case head.Metadata.Namespace != m.kust.Namespace:
				fail("%s: an object applied with kubectl apply -f (an example, or a kind of an optional CRD) must set metadata.namespace: %s (it has %q)", o, m.kust.Namespace, head.Metadata.Namespace)
			default:
				o.namespace = head.Metadata.Namespace
			}
			if prev := seen[o.kind+"/"+o.name]; prev != nil {
				fail("%s: also defined in %s", o, prev.file)
			}
			seen[o.kind+"/"+o.name] = o
			m.objects = append(m.objects, o)
			if w := asWorkload(o); w != nil {
				m.workloads = append(m.workloads, w)
			}
		}
	}
	return m, errs
}

var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

func asWorkload(o *object) *workload {
	w := &workload{object: o, replicas: 1}
	switch v := o.v.(type) {
	case *statefulSet:
		if v.Spec.Replicas != nil {
			w.replicas = int(*v.Spec.Replicas)
		}
		w.selector, w.template, w.serviceName = v.Spec.Selector, v.Spec.Template, v.Spec.ServiceName
		for i := range w.replicas {
			w.podNames = append(w.podNames, fmt.Sprintf("%s-%d", o.name, i))
		}
	case *deployment:
		if v.Spec.Replicas != nil {
			w.replicas = int(*v.Spec.Replicas)
		}
		w.selector, w.template = v.Spec.Selector, v.Spec.Template
		w.podNames = []string{o.name + "-6c9f7d8b5-x4k2p"}
	case *jobObj:
		w.selector = labelSelector{MatchLabels: v.Spec.Template.Metadata.Labels}
		w.template = v.Spec.Template
		w.podNames = []string{o.name + "-x4k2p"}
	case *podObj:
		w.selector = labelSelector{MatchLabels: v.Metadata.Labels}
		w.template = podTemplate{Metadata: v.Metadata, Spec: v.Spec}
		w.podNames = []string{o.name}
	default:
		return nil
	}
	return w
}

func objectsOf[T any](m *manifests) []T {
	var out []T
	for _, o := range m.objects {
		if v, ok := o.v.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

func (m *manifests) object(v any) *object {
	for _, o := range m.objects {
		if o.v == v {
			return o
		}
	}
	panic("object not loaded")
}

// selected returns the kustomized workloads whose pods sel matches.
func (m *manifests) selected(sel labelSelector) []*workload {
	var out []*workload
	for _, w := range m.workloads {
		if w.kustomized && sel.matches(w.template.Metadata.Labels) {
			out = append(out, w)
		}
	}
	return out
}

func protocol(p string) string {
	if p == "" {
		return "TCP"
	}
	return p
}

// findPort finds a container port by name or number and protocol.
func findPort(cs []container, p intOrString, proto string) (containerPort, bool) {
	for _, c := range cs {
		for _, cp := range c.Ports {
			if protocol(cp.Protocol) == protocol(proto) && ((p.IsStr && cp.Name == p.Str) || (!p.IsStr && cp.ContainerPort == p.Int)) {
				return cp, true
			}
		}
	}
	return containerPort{}, false
}

func isEtcd(w *workload) bool {
	cs := w.template.Spec.Containers
	return len(cs) == 1 && len(cs[0].Command) > 0 && cs[0].Command[0] == binEtcd
}

// The paths of the binaries in the image (Dockerfile) and how to build them.
const (
	binCoordinator = "/usr/local/bin/coordinator"
	binWorker      = "/usr/local/bin/worker"
	binSwitchyard  = "/usr/local/bin/switchyard"
	binEtcd        = "/usr/local/bin/etcd"
)

var buildPkgs = map[string]string{
	binCoordinator: "./cmd/coordinator",
	binWorker:      "./cmd/worker",
	binSwitchyard:  "./cmd/switchyard",
	binEtcd:        "go.etcd.io/etcd/server/v3",
}

func binaryOf(c container) string {
	if len(c.Command) == 0 {
		return ""
	}
	return c.Command[0]
}

// goMod is what the tests read from go.mod.
type goMod struct {
	goVersion   string // the go directive
	etcdVersion string // go.etcd.io/etcd/server/v3
}

func readGoMod(name string) (goMod, error) {
	var g goMod
	f, err := os.Open(name)
	if err != nil {
		return g, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require "))
		switch {
		case len(fs) >= 2 && fs[0] == "go":
			g.goVersion = fs[1]
		case len(fs) >= 2 && fs[0] == "go.etcd.io/etcd/server/v3":
			g.etcdVersion = fs[1]
		}
	}
	if g.goVersion == "" || g.etcdVersion == "" {
		return g, fmt.Errorf("%s: no go directive or no go.etcd.io/etcd/server/v3 requirement", name)
	}
	return g, sc.Err()
}
