package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// The local overlay (overlays/local): the base on a single-node cluster
// without registry, cert-manager or network storage (its README.md). These
// tests render it without kubectl, with the subset of kustomize it uses
// (renderOverlay), decode the result strictly with this folder's API
// types, and check what the overlay promises. Where kubectl is installed
// the render is also compared with `kubectl kustomize`, so the subset
// cannot drift from kustomize unseen.

const overlayDir = "overlays/local"

// overlayKustomization is the fields the overlay's kustomization.yaml may
// use; renderOverlay implements exactly these.
type overlayKustomization struct {
	typeMeta
	Namespace string      `json:"namespace"`
	Resources []string    `json:"resources"`
	Patches   []kustPatch `json:"patches"`
	Images    []kustImage `json:"images"`
}

// kustPatch is a patches[] entry: a strategic-merge patch file (the target
// is the object it names) or, with a target, a JSON patch (RFC 6902).
type kustPatch struct {
	Path   string `json:"path"`
	Target *struct {
		Group   string `json:"group"`
		Version string `json:"version"`
		Kind    string `json:"kind"`
		Name    string `json:"name"`
	} `json:"target,omitempty"`
}

type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

// The two kinds the overlay adds (volumes.yaml).
type persistentVolume struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		StorageClassName              string              `json:"storageClassName"`
		Capacity                      map[string]quantity `json:"capacity"`
		AccessModes                   []string            `json:"accessModes"`
		PersistentVolumeReclaimPolicy string              `json:"persistentVolumeReclaimPolicy,omitempty"`
		ClaimRef                      *struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"claimRef,omitempty"`
		HostPath *struct {
			Path string `json:"path"`
			Type string `json:"type,omitempty"`
		} `json:"hostPath,omitempty"`
	} `json:"spec"`
}

type storageClass struct {
	typeMeta
	Metadata          objectMeta `json:"metadata"`
	Provisioner       string     `json:"provisioner"`
	VolumeBindingMode string     `json:"volumeBindingMode,omitempty"`
	ReclaimPolicy     string     `json:"reclaimPolicy,omitempty"`
}

// clusterScoped kinds get no namespace from the kustomization.
var clusterScoped = map[string]bool{"Namespace": true, "PersistentVolume": true, "StorageClass": true}

type doc = map[string]any

// readDocs reads a YAML file's documents as JSON values.
func readDocs(file string) ([]doc, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var out []doc
	for i, s := range docSep.Split(string(b), -1) {
		j, err := yaml.YAMLToJSON([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %v", file, i, err)
		}
		var d doc
		if err := json.Unmarshal(j, &d); err != nil {
			return nil, fmt.Errorf("%s: document %d: %v", file, i, err)
		}
		if len(d) > 0 {
			out = append(out, d)
		}
	}
	return out, nil
}

func str(d doc, keys ...string) string {
	var v any = d
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = m[k]
	}
	s, _ := v.(string)
	return s
}

func docID(d doc) string {
	return fmt.Sprintf("%s %s %s/%s", str(d, "apiVersion"), str(d, "kind"), str(d, "metadata", "namespace"), str(d, "metadata", "name"))
}

// readOverlayKustomization decodes the overlay's kustomization.yaml strictly.
func readOverlayKustomization() (*overlayKustomization, error) {
	b, err := os.ReadFile(path.Join(overlayDir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	k := &overlayKustomization{}
	if err := yaml.UnmarshalStrict(b, k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml: %v", overlayDir, err)
	}
	return k, nil
}

// renderOverlay builds the overlay as kustomize does, for what it uses:
// resources read in order, the namespace set on namespaced objects,
// strategic-merge patches (maps merge, null deletes a field, lists of
// objects with a name merge by name, the patch's elements first, other
// lists are replaced), JSON
// patches with the test and replace operations, and the images
// transformer on containers. It returns the objects and, per object, the
// same object before the patches and images (the base as the overlay
// lists it).
func renderOverlay() (out, before []doc, k *overlayKustomization, err error) {
	if k, err = readOverlayKustomization(); err != nil {
		return nil, nil, nil, err
	}
	for _, r := range k.Resources {
		ds, err := readDocs(path.Join(overlayDir, r))
		if err != nil {
			return nil, nil, nil, err
		}
		out = append(out, ds...)
	}
	for _, d := range out {
		if !clusterScoped[str(d, "kind")] && k.Namespace != "" {
			d["metadata"].(map[string]any)["namespace"] = k.Namespace
		}
	}
	for _, d := range out {
		before = append(before, deepCopy(d))
	}
	find := func(apiVersion, kind, name string) (doc, error) {
		for _, d := range out {
			if str(d, "apiVersion") == apiVersion && str(d, "kind") == kind && str(d, "metadata", "name") == name {
				return d, nil
			}
		}
		return nil, fmt.Errorf("no %s %s %s to patch", apiVersion, kind, name)
	}
	for _, p := range k.Patches {
		file := path.Join(overlayDir, p.Path)
		if p.Target == nil {
			ds, err := readDocs(file)
			if err != nil {
				return nil, nil, nil, err
			}
			for _, pd := range ds {
				d, err := find(str(pd, "apiVersion"), str(pd, "kind"), str(pd, "metadata", "name"))
				if err != nil {
					return nil, nil, nil, fmt.Errorf("%s: %v", file, err)
				}
				mergePatch(d, pd)
			}
			continue
		}
		apiVersion := p.Target.Version
		if p.Target.Group != "" {
			apiVersion = p.Target.Group + "/" + p.Target.Version
		}
		d, err := find(apiVersion, p.Target.Kind, p.Target.Name)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %v", file, err)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, nil, nil, err
		}
		var ops []jsonPatchOp
		if err := yaml.UnmarshalStrict(b, &ops); err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %v", file, err)
		}
		for _, op := range ops {
			if err := applyJSONPatch(d, op); err != nil {
				return nil, nil, nil, fmt.Errorf("%s: %s %s: %v", file, op.Op, op.Path, err)
			}
		}
	}
	for _, d := range out {
		setImages(d, k.Images)
	}
	return out, before, k, nil
}

func deepCopy(d doc) doc {
	b, err := json.Marshal(d)
	if err != nil {
		panic(err)
	}
	var c doc
	if err := json.Unmarshal(b, &c); err != nil {
		panic(err)
	}
	return c
}

// mergePatch applies a strategic-merge patch (the subset renderOverlay
// describes) to dst and returns the result.
func mergePatch(dst, patch any) any {
	switch p := patch.(type) {
	case map[string]any:
		d, ok := dst.(map[string]any)
		if !ok {
			d = map[string]any{}
		}
		for k, v := range p {
			if v == nil {
				delete(d, k)
				continue
			}
			d[k] = mergePatch(d[k], v)
		}
		return d
	case []any:
		d, ok := dst.([]any)
		if !ok || !namedList(p) || !namedList(d) {
			return mergePatch(nil, slices.Clone(p)) // replaced (nulls dropped)
		}
		// kustomize puts the patch's elements first, in its order, then
		// the others in theirs.
		var out []any
		inPatch := map[any]bool{}
		for _, pe := range p {
			pm := pe.(map[string]any)
			inPatch[pm["name"]] = true
			i := slices.IndexFunc(d, func(e any) bool { return e.(map[string]any)["name"] == pm["name"] })
			if i < 0 {
				out = append(out, mergePatch(nil, pm))
			} else {
				out = append(out, mergePatch(d[i], pm))
			}
		}
		for _, e := range d {
			if !inPatch[e.(map[string]any)["name"]] {
				out = append(out, e)
			}
		}
		return out
	case nil:
		return nil
	default:
		if l, ok := patch.([]any); ok {
			for i := range l {
				l[i] = mergePatch(nil, l[i])
			}
		}
		return p
	}
}

// namedList reports whether every element is an object with a name.
func namedList(l []any) bool {
	for _, e := range l {
		m, ok := e.(map[string]any)
		if !ok {
			return false
		}
		if _, ok := m["name"].(string); !ok {
			return false
		}
	}
	return len(l) > 0
}

// applyJSONPatch applies one RFC 6902 operation, test or replace.
func applyJSONPatch(d doc, op jsonPatchOp) error {
	if !strings.HasPrefix(op.Path, "/") {
		return fmt.Errorf("path must start with /")
	}
	toks := strings.Split(op.Path[1:], "/")
	for i, t := range toks {
		toks[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	var parent any = d
	for _, t := range toks[:len(toks)-1] {
		next, err := child(parent, t)
		if err != nil {
			return err
		}
		parent = next
	}
	last := toks[len(toks)-1]
	cur, err := child(parent, last)
	if err != nil {
		return err
	}
	// The value as JSON decodes it (numbers float64), to compare and store.
	vb, err := json.Marshal(op.Value)
	if err != nil {
		return err
	}
	var v any
	if err := json.Unmarshal(vb, &v); err != nil {
		return err
	}
	switch op.Op {
	case "test":
		if !reflect.DeepEqual(cur, v) {
			return fmt.Errorf("the base has %v, the patch expects %v", cur, v)
		}
	case "replace":
		switch p := parent.(type) {
		case map[string]any:
			p[last] = v
		case []any:
			i, _ := strconv.Atoi(last)
			p[i] = v
		}
	default:
		return fmt.Errorf("operation %q: this test implements test and replace only", op.Op)
	}
	return nil
}

func child(v any, tok string) (any, error) {
	switch p := v.(type) {
	case map[string]any:
		c, ok := p[tok]
		if !ok {
			return nil, fmt.Errorf("no field %q", tok)
		}
		return c, nil
	case []any:
		i, err := strconv.Atoi(tok)
		if err != nil || i < 0 || i >= len(p) {
			return nil, fmt.Errorf("no element %q of a list of %d", tok, len(p))
		}
		return p[i], nil
	}
	return nil, fmt.Errorf("%q: not an object or list", tok)
}

// setImages is kustomize's images transformer on pod templates and pods:
// an image whose name (tag and digest dropped) is an entry's name becomes
// newName (default the name) with newTag and/or digest.
func setImages(d doc, images []kustImage) {
	var spec any = d["spec"]
	if str(d, "kind") != "Pod" {
		t, _ := child(d["spec"], "template")
		spec, _ = child(t, "spec")
	}
	for _, field := range []string{"initContainers", "containers"} {
		cs, _ := child(spec, field)
		l, _ := cs.([]any)
		for _, c := range l {
			cm := c.(map[string]any)
			img, _ := cm["image"].(string)
			name, _, _ := strings.Cut(img, "@")
			if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
				name = name[:i]
			}
			for _, im := range images {
				if im.Name != name {
					continue
				}
				n := name
				if im.NewName != "" {
					n = im.NewName
				}
				if im.NewTag != "" {
					n += ":" + im.NewTag
				}
				if im.Digest != "" {
					n += "@" + im.Digest
				}
				cm["image"] = n
			}
		}
	}
}

// diffPaths lists the paths where a and b differ (JSON values). byName
// compares lists of named objects element by name ([name=N]), ignoring
// their order.
func diffPaths(prefix string, a, b any, byName bool) []string {
	switch av := a.(type) {
	case map[string]any:
		bv, ok := b.(map[string]any)
		if !ok {
			return []string{prefix}
		}
		var keys []string
		for k := range av {
			keys = append(keys, k)
		}
		for k := range bv {
			if _, ok := av[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		var out []string
		for _, k := range keys {
			out = append(out, diffPaths(prefix+"."+k, av[k], bv[k], byName)...)
		}
		return out
	case []any:
		bv, ok := b.([]any)
		if !ok {
			return []string{prefix}
		}
		if byName && namedList(av) && namedList(bv) {
			named := func(l []any) map[string]any {
				m := map[string]any{}
				for _, e := range l {
					m[e.(map[string]any)["name"].(string)] = e
				}
				return m
			}
			return diffPaths(prefix, named(av), named(bv), byName)
		}
		if len(av) != len(bv) {
			return []string{prefix}
		}
		var out []string
		for i := range av {
			out = append(out, diffPaths(fmt.Sprintf("%s[%d]", prefix, i), av[i], bv[i], byName)...)
		}
		return out
	}
	if !reflect.DeepEqual(a, b) {
		return []string{prefix}
	}
	return nil
}

// overlayKinds decode the rendered objects strictly.
var overlayKinds = func() map[string]func() any {
	m := map[string]func() any{
		"v1 PersistentVolume":            func() any { return new(persistentVolume) },
		"storage.k8s.io/v1 StorageClass": func() any { return new(storageClass) },
	}
	for k, v := range kinds {
		m[k] = v
	}
	return m
}()

// renderedOverlay renders the overlay and decodes every object strictly
// into this folder's API types, as load does for the base.
func renderedOverlay(t *testing.T) (*manifests, *overlayKustomization) {
	t.Helper()
	ds, _, k, err := renderOverlay()
	if err != nil {
		t.Fatal(err)
	}
	m := &manifests{}
	for _, d := range ds {
		mk := overlayKinds[str(d, "apiVersion")+" "+str(d, "kind")]
		if mk == nil {
			t.Fatalf("%s: a kind this test does not know", docID(d))
		}
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		v := mk()
		if err := yaml.UnmarshalStrict(b, v); err != nil {
			t.Fatalf("%s: %v", docID(d), err)
		}
		o := &object{file: overlayDir, kind: str(d, "kind"), name: str(d, "metadata", "name"), namespace: str(d, "metadata", "namespace"), kustomized: true, v: v}
		m.objects = append(m.objects, o)
		if w := asWorkload(o); w != nil {
			m.workloads = append(m.workloads, w)
		}
	}
	return m, k
}

// TestOverlayRenders: the overlay renders (every patch finds its target,
// every JSON patch's test holds against the base) into objects that decode
// strictly, and, where kubectl is installed, exactly as `kubectl kustomize`
// renders it.
func TestOverlayRenders(t *testing.T) {
	ds, _, _, err := renderOverlay()
	if err != nil {
		t.Fatal(err)
	}
	renderedOverlay(t)
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("no kubectl: the render was not compared with kustomize's")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", overlayDir)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", overlayDir, err, stderr.String())
	}
	f, err := os.CreateTemp(t.TempDir(), "render-*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(out); err != nil {
		t.Fatal(err)
	}
	f.Close()
	theirs, err := readDocs(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]doc{}
	for _, d := range theirs {
		byID[docID(d)] = d
	}
	if len(theirs) != len(ds) {
		t.Errorf("kubectl kustomize renders %d objects, this test %d", len(theirs), len(ds))
	}
	for _, d := range ds {
		k, ok := byID[docID(d)]
		if !ok {
			t.Errorf("%s: not in kubectl kustomize's output", docID(d))
			continue
		}
		if diff := diffPaths("", d, k, false); len(diff) > 0 {
			t.Errorf("%s: this test's render and kubectl kustomize's differ at %v", docID(d), diff)
		}
	}
}

// TestOverlayKeepsBase: the overlay lists exactly the base's resources, in
// the base's namespace, renames exactly the base's images, and changes the
// base's objects only where it means to (replicas, images, resources,
// the memory budget, the workers' certificates, etcd's member list, the
// claims' storage). Each image name is the one scripts/k8s/images.sh
// imports: a newName and newTag it reads from this file (etcd's tag is
// go.mod's etcd version), no digest (images.sh pins the digests in a
// kustomization of its own).
func TestOverlayKeepsBase(t *testing.T) {
	base := load(t)
	k, err := readOverlayKustomization()
	if err != nil {
		t.Fatal(err)
	}
	if k.Namespace != base.kust.Namespace {
		t.Errorf("overlay namespace %q, base %q", k.Namespace, base.kust.Namespace)
	}
	var fromBase, own []string
	for _, r := range k.Resources {
		if rel, ok := strings.CutPrefix(r, "../../"); ok && !strings.Contains(rel, "/") {
			fromBase = append(fromBase, rel)
			continue
		}
		if strings.Contains(r, "/") {
			t.Errorf("overlay resource %s: neither a base manifest (../../FILE) nor a file of the overlay", r)
		}
		own = append(own, r)
	}
	if !slices.Equal(fromBase, base.kust.Resources) {
		t.Errorf("overlay resources from the base %v, the base's resources %v: list every one, in order", fromBase, base.kust.Resources)
	}
	raw, err := os.ReadFile(path.Join(overlayDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var baseNames, names []string
	for _, im := range base.kust.Images {
		baseNames = append(baseNames, im.Name)
	}
	for _, im := range k.Images {
		names = append(names, im.Name)
		if im.NewName == "" || im.NewTag == "" || im.Digest != "" {
			t.Errorf("overlay image %s: want newName and newTag, no digest", im.Name)
		}
		// The shape scripts/k8s/images.sh's image_of reads.
		entry := regexp.MustCompile(`(?m)^  - name: ` + regexp.QuoteMeta(im.Name) + `\n    newName: ` + regexp.QuoteMeta(im.NewName) + `\n    newTag: ` + regexp.QuoteMeta(im.NewTag) + `\n`)
		if !entry.Match(raw) {
			t.Errorf("overlay image %s: write it as the three lines name, newName, newTag (scripts/k8s/images.sh reads them)", im.Name)
		}
		if im.Name == "gcr.io/etcd-development/etcd" && im.NewTag != base.goMod.etcdVersion {
			t.Errorf("overlay etcd image tag %s, go.mod's etcd %s", im.NewTag, base.goMod.etcdVersion)
		}
	}
	slices.Sort(baseNames)
	slices.Sort(names)
	if !slices.Equal(baseNames, names) {
		t.Errorf("overlay renames images %v, the base's are %v", names, baseNames)
	}

	out, before, _, err := renderOverlay()
	if err != nil {
		t.Fatal(err)
	}
	// Paths the overlay may change, by object: kind/name path-regexp.
	allowed := []string{
		`^(StatefulSet|Deployment)/[a-z-]+ \.spec\.replicas$`,
		`^(StatefulSet|Deployment)/[a-z-]+ \.spec\.template\.spec\.containers\.[a-z-]+\.(image|imagePullPolicy|resources\..*)$`,
		`^(StatefulSet|Deployment)/(worker|frontend) \.spec\.template\.spec\.containers\.(worker|frontend)\.env\.GOMEMLIMIT\.value$`,
		`^StatefulSet/worker \.spec\.template\.spec\.containers\.worker\.args\[(2|3|10)\]$`,
		`^StatefulSet/worker \.spec\.template\.spec\.volumes\.tls\.(csi|secret)$`,
		`^StatefulSet/etcd \.spec\.template\.spec\.containers\.etcd\.args\[7\]$`,
		`^StatefulSet/etcd \.spec\.volumeClaimTemplates\[0\]\.spec\.(storageClassName|resources\.requests\.storage)$`,
		`^PersistentVolumeClaim/switchyard-(model|data) \.spec\.(storageClassName|resources\.requests\.storage)$`,
	}
	for i, d := range out {
		if i >= len(before) {
			break
		}
		id := str(d, "kind") + "/" + str(d, "metadata", "name")
		for _, p := range diffPaths("", before[i], d, true) {
			ok := slices.ContainsFunc(allowed, func(re string) bool { return regexp.MustCompile(re).MatchString(id + " " + p) })
			if !ok {
				t.Errorf("the overlay changes %s at %s: not a change it means to make (overlay_test.go lists those)", id, p)
			}
		}
	}
	if len(own) == 0 {
		t.Errorf("overlay adds no resources of its own (want volumes.yaml's PersistentVolumes)")
	}
}

// TestOverlayLocal: what makes the overlay run on one node with local
// images, local volumes and certificates from scripts/k8s/certs.sh.
func TestOverlayLocal(t *testing.T) {
	m, k := renderedOverlay(t)
	localImages := map[string]bool{}
	var names []string
	for _, im := range k.Images {
		localImages[im.NewName+":"+im.NewTag] = true
		names = append(names, im.NewName+":"+im.NewTag)
	}
	pvs := map[string]*persistentVolume{} // by namespace/claim
	for _, pv := range objectsOf[*persistentVolume](m) {
		o := m.object(pv)
		s := pv.Spec
		if s.HostPath == nil || s.HostPath.Type != "Directory" || !strings.HasPrefix(s.HostPath.Path, "/var/lib/switchyard-k8s/") {
			t.Errorf("%s: want a hostPath of type Directory under /var/lib/switchyard-k8s/", o)
		}
		if s.ClaimRef == nil || s.ClaimRef.Namespace != k.Namespace || s.PersistentVolumeReclaimPolicy != "Retain" {
			t.Errorf("%s: want a claimRef to a claim of namespace %s and reclaim policy Retain", o, k.Namespace)
			continue
		}
		pvs[s.ClaimRef.Namespace+"/"+s.ClaimRef.Name] = pv
	}
	classes := map[string]bool{}
	for _, sc := range objectsOf[*storageClass](m) {
		classes[sc.Metadata.Name] = sc.Provisioner == "kubernetes.io/no-provisioner"
	}
	// Every claim, of a pod or a claim template, binds to its volume.
	bind := func(what, ns, name string, spec pvcSpec) {
		pv := pvs[ns+"/"+name]
		if pv == nil {
			t.Errorf("%s: claim %s/%s: no PersistentVolume claims it (volumes.yaml)", what, ns, name)
			return
		}
		if spec.StorageClassName == nil || *spec.StorageClassName != pv.Spec.StorageClassName || !classes[pv.Spec.StorageClassName] {
			t.Errorf("%s: claim %s: storageClassName must be the volume's, %q, a class without provisioner", what, name, pv.Spec.StorageClassName)
		}
		for _, am := range spec.AccessModes {
			if !slices.Contains(pv.Spec.AccessModes, am) {
				t.Errorf("%s: claim %s wants %s, the volume offers %v", what, name, am, pv.Spec.AccessModes)
			}
		}
		req, err1 := spec.Resources.Requests["storage"].value()
		capacity, err2 := pv.Spec.Capacity["storage"].value()
		if err1 != nil || err2 != nil || req.Cmp(capacity) > 0 {
			t.Errorf("%s: claim %s requests %s, the volume holds %s", what, name, spec.Resources.Requests["storage"], pv.Spec.Capacity["storage"])
		}
	}
	for _, c := range objectsOf[*pvc](m) {
		bind("PersistentVolumeClaim", m.object(c).namespace, c.Metadata.Name, c.Spec)
	}

	certsSrc, err := os.ReadFile("../../scripts/k8s/oci/certs/main.go")
	if err != nil {
		t.Fatal(err)
	}
	replicas := map[string]int{}
	var cpuReq, memLim big.Rat
	for _, w := range m.workloads {
		replicas[w.name] = w.replicas
		if s, ok := w.v.(*statefulSet); ok {
			for _, vct := range s.Spec.VolumeClaimTemplates {
				for _, pod := range w.podNames {
					bind(w.String(), w.namespace, vct.Metadata.Name+"-"+pod, vct.Spec)
				}
			}
		}
		vols := map[string]volume{}
		for _, v := range w.template.Spec.Volumes {
			vols[v.Name] = v
			if v.CSI != nil {
				t.Errorf("%s: volume %s is a csi volume: no csi driver runs here", w, v.Name)
			}
			if v.Secret != nil && !bytes.Contains(certsSrc, []byte(strconv.Quote(v.Secret.SecretName))) {
				t.Errorf("%s: volume %s mounts Secret %s, which scripts/k8s/oci/certs does not make", w, v.Name, v.Secret.SecretName)
			}
		}
		for _, c := range w.template.Spec.Containers {
			if c.ImagePullPolicy != "Never" || !localImages[c.Image] {
				t.Errorf("%s: container %s: image %s, pull policy %q: want one of the overlay's images %v, imagePullPolicy: Never", w, c.Name, c.Image, c.ImagePullPolicy, names)
			}
			r := c.Resources
			for _, res := range []string{"cpu", "memory"} {
				if r.Requests[res] == "" {
					t.Errorf("%s: container %s: no %s request", w, c.Name, res)
				}
			}
			if r.Limits["memory"] == "" {
				t.Errorf("%s: container %s: no memory limit", w, c.Name)
				continue
			}
			n := new(big.Rat).SetInt64(int64(w.replicas))
			cpuReq.Add(&cpuReq, new(big.Rat).Mul(n, mustQ(t, r.Requests["cpu"])))
			memLim.Add(&memLim, new(big.Rat).Mul(n, mustQ(t, r.Limits["memory"])))
			if l, ok := r.Limits["cpu"]; ok && mustQ(t, l).Cmp(big.NewRat(2, 1)) > 0 {
				t.Errorf("%s: container %s: CPU limit %s above the machine's 2 cores", w, c.Name, l)
			}
			for _, pod := range w.podNames {
				argv, env, problems := commandLine(w, pod, c)
				if len(problems) > 0 {
					t.Errorf("%s: container %s: %v", w, c.Name, problems)
					continue
				}
				if mem, ok := flagValue(argv[1:], "mem"); ok {
					checkMemory(t, w, c, env, mem)
				}
				if binaryOf(c) == binWorker {
					checkWorkerTLS(t, w, pod, c, argv[1:], vols)
				}
				if init, ok := flagValue(argv[1:], "initial-cluster"); ok && len(strings.Split(init, ",")) != w.replicas {
					t.Errorf("%s: --initial-cluster=%s names other than its %d member(s)", w, init, w.replicas)
				}
			}
		}
	}
	want := map[string][2]int{"etcd": {1, 1}, "coordinator": {1, 1}, "worker": {2, 2}, "frontend": {1, 2}}
	for name, r := range want {
		if replicas[name] < r[0] || replicas[name] > r[1] {
			t.Errorf("%s: %d replicas, want %d to %d", name, replicas[name], r[0], r[1])
		}
	}
	// A 2-vCPU, 23 GiB machine that also runs the control plane (~0.7 GiB,
	// a few hundred millicores): requests within 1.5 cores, limits within
	// half the memory.
	if cpuReq.Cmp(big.NewRat(3, 2)) > 0 {
		t.Errorf("CPU requests add up to %s cores, want at most 1.5", cpuReq.FloatString(2))
	}
	if memLim.Cmp(new(big.Rat).SetInt64(12<<30)) > 0 {
		t.Errorf("memory limits add up to %s GiB, want at most 12", new(big.Rat).Quo(&memLim, new(big.Rat).SetInt64(1<<30)).FloatString(2))
	}
	if certWorkers := regexp.MustCompile(`Workers:\s*(\d+),\s*WorkerSet:\s*"worker"`).FindSubmatch(certsSrc); certWorkers == nil {
		t.Error("scripts/k8s/oci/certs: DefaultConfig does not say how many worker certificates it issues for the StatefulSet worker")
	} else if n, _ := strconv.Atoi(string(certWorkers[1])); replicas["worker"] > n {
		t.Errorf("%d workers, but scripts/k8s/certs.sh issues %d worker certificates by default", replicas["worker"], n)
	}
}

// checkWorkerTLS: a worker's certificate and key, for this pod, are files
// of a read-only Secret volume, named by the pod (its --id), and its CA
// the ca.crt beside them.
func checkWorkerTLS(t *testing.T, w *workload, pod string, c container, args []string, vols map[string]volume) {
	t.Helper()
	for flag, want := range map[string]string{"tls-cert": pod + ".crt", "tls-key": pod + ".key", "tls-ca": "ca.crt"} {
		f, ok := flagValue(args, flag)
		if !ok || path.Base(f) != want {
			t.Errorf("%s: pod %s: --%s=%s, want a file named %s", w, pod, flag, f, want)
			continue
		}
		mounted := false
		for _, vm := range c.VolumeMounts {
			v := vols[vm.Name]
			mounted = mounted || (v.Secret != nil && vm.ReadOnly && path.Dir(f) == path.Clean(vm.MountPath))
		}
		if !mounted {
			t.Errorf("%s: --%s=%s is not in a read-only Secret volume's folder", w, flag, f)
		}
	}
	if id, _ := flagValue(args, "id"); id != pod {
		t.Errorf("%s: --id=%s, want the pod name %s (the certificate names it)", w, id, pod)
	}
}

// TestOverlayBinariesAcceptArgs runs the binaries with the overlay's
// arguments (as TestBinariesAcceptManifestArgs does for the base): the
// changed flags still parse.
func TestOverlayBinariesAcceptArgs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	m, _ := renderedOverlay(t)
	need := map[string]bool{}
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			need[binaryOf(c)] = true
		}
	}
	bins := buildBinaries(t, need)
	home := t.TempDir()
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			argv, env, problems := commandLine(w, w.podNames[len(w.podNames)-1], c)
			if len(problems) > 0 {
				t.Errorf("%s: %v", w, problems)
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cmd := exec.CommandContext(ctx, bins[argv[0]], append(slices.Clone(argv[1:]), "--help")...)
			cmd.Env = []string{"HOME=" + home}
			for k, v := range env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := cmd.CombinedOutput()
			cancel()
			if err != nil {
				t.Errorf("%s: %s %s: %v\n%s", w, argv[0], strings.Join(argv[1:], " "), err, tail(string(out), 20))
			}
		}
	}
}
