package k8s

import (
	"crypto/sha256"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The security properties of the manifests (README.md, "Security"):
// mutual TLS on every Switchyard process with certificates from mounted
// Secrets or the cert-manager csi-driver, identities that match roles and
// worker IDs, etcd with client and peer certificate authentication, the
// front end's API key from a Secret and its probes. Network policies are
// in networkpolicy_test.go, image digests in TestImages.

// The files of a cert-manager Secret (type kubernetes.io/tls) and of a
// csi-driver volume, by the flag that names them.
var tlsFiles = map[string]string{"tls-cert": "tls.crt", "tls-key": "tls.key", "tls-ca": "ca.crt"}

const (
	csiDriver    = "csi.cert-manager.io"
	spiffePrefix = "spiffe://switchyard/"
)

// mountedFile finds the volume that holds the absolute path p in container
// c: the one mounted at p's folder (subPath mounts are not used: they never
// see a renewed Secret, and the strict decoding rejects them). It returns
// the file's name in the volume.
func mountedFile(w *workload, c container, p string) (volume, string, error) {
	if !path.IsAbs(p) {
		return volume{}, "", fmt.Errorf("%q is not an absolute path", p)
	}
	dir, file := path.Split(p)
	for _, vm := range c.VolumeMounts {
		if path.Clean(vm.MountPath) != path.Clean(dir) {
			continue
		}
		for _, v := range w.template.Spec.Volumes {
			if v.Name == vm.Name {
				if !vm.ReadOnly {
					return v, file, fmt.Errorf("volume %s at %s: mount it readOnly", v.Name, vm.MountPath)
				}
				return v, file, nil
			}
		}
		return volume{}, "", fmt.Errorf("mount %s names no volume of the pod", vm.Name)
	}
	return volume{}, "", fmt.Errorf("%s: no volume is mounted at %s", p, dir)
}

// volumeHasFile: whether a Secret or csi-driver volume holds file under
// the name a cert-manager Secret (or the driver) gives the key want
// (tls.crt, tls.key, ca.crt).
func volumeHasFile(v volume, file, want string) error {
	switch {
	case v.Secret != nil && len(v.Secret.Items) == 0:
		if file != want {
			return fmt.Errorf("Secret %s: the file is %q, want %q (the key cert-manager writes)", v.Secret.SecretName, file, want)
		}
	case v.Secret != nil:
		for _, it := range v.Secret.Items {
			if it.Path == file && it.Key == want {
				return nil
			}
		}
		return fmt.Errorf("Secret %s: no item with key %q at path %q", v.Secret.SecretName, want, file)
	case v.CSI != nil:
		attr := map[string]string{"tls.crt": "certificate-file", "tls.key": "privatekey-file", "ca.crt": "ca-file"}[want]
		name := v.CSI.VolumeAttributes[csiDriver+"/"+attr]
		if name == "" {
			name = want // the driver's default
		}
		if file != name {
			return fmt.Errorf("csi volume %s writes %q, not %q", v.Name, name, file)
		}
	default:
		return fmt.Errorf("volume %s is neither a Secret nor a %s volume", v.Name, csiDriver)
	}
	return nil
}

// roleFor is the identity role a Switchyard container's certificate must
// have, "" for containers that run no Switchyard binary.
func roleFor(c container) string {
	switch binaryOf(c) {
	case binCoordinator:
		return "coordinator"
	case binWorker:
		return "worker"
	case binSwitchyard:
		if len(c.Args) > 0 && c.Args[0] == "serve" {
			return "frontend"
		}
		return "client"
	}
	return ""
}

// TestTLSFlags: every container of a Switchyard binary (coordinator,
// worker, front end, clients in examples/) passes --tls-cert, --tls-key
// and --tls-ca once each, naming files of read-only Secret or csi-driver
// volumes under the names cert-manager gives them, certificate and key
// from one volume; those volumes are readable by the pod's group only.
func TestTLSFlags(t *testing.T) {
	m := load(t)
	found := map[string]bool{}
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			role := roleFor(c)
			if role == "" {
				continue
			}
			found[role] = true
			argv, _, problems := commandLine(w, w.podNames[0], c)
			if len(problems) > 0 {
				continue // TestEnvReferencesDefined reports them
			}
			vols := map[string]string{}
			for _, flag := range []string{"tls-cert", "tls-key", "tls-ca"} {
				p, ok := flagValue(argv[1:], flag)
				if !ok {
					t.Errorf("%s: container %s: want --%s exactly once (mutual TLS)", w, c.Name, flag)
					continue
				}
				v, file, err := mountedFile(w, c, p)
				if err == nil {
					err = volumeHasFile(v, file, tlsFiles[flag])
				}
				if err != nil {
					t.Errorf("%s: container %s: --%s=%s: %v", w, c.Name, flag, p, err)
				}
				vols[flag] = v.Name
			}
			if vols["tls-cert"] != vols["tls-key"] {
				t.Errorf("%s: container %s: --tls-cert and --tls-key come from volumes %s and %s; want one", w, c.Name, vols["tls-cert"], vols["tls-key"])
			}
		}
	}
	for _, r := range []string{"coordinator", "worker", "frontend", "client"} {
		if !found[r] {
			t.Errorf("no container runs a Switchyard %s", r)
		}
	}
	for _, w := range m.workloads {
		psc := w.template.Spec.SecurityContext
		for _, v := range w.template.Spec.Volumes {
			switch {
			case v.Secret != nil:
				if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode&0o007 != 0 {
					t.Errorf("%s: Secret volume %s: want defaultMode without access for others (e.g. 0440)", w, v.Name)
				}
				if v.Secret.Optional != nil && *v.Secret.Optional {
					t.Errorf("%s: Secret volume %s is optional: a pod without its keys must not start", w, v.Name)
				}
				if psc == nil || psc.FSGroup == nil {
					t.Errorf("%s: Secret volume %s: want securityContext.fsGroup, the group that may read it", w, v.Name)
				}
			case v.CSI != nil:
				if v.CSI.Driver != csiDriver || v.CSI.ReadOnly == nil || !*v.CSI.ReadOnly {
					t.Errorf("%s: csi volume %s: want driver %s, readOnly: true", w, v.Name, csiDriver)
				}
				if psc == nil || psc.RunAsGroup == nil || v.CSI.VolumeAttributes[csiDriver+"/fs-group"] != fmt.Sprint(*psc.RunAsGroup) {
					t.Errorf("%s: csi volume %s: want %s/fs-group equal to the pod's runAsGroup (the key is readable by that group only)", w, v.Name, csiDriver)
				}
			}
		}
	}
}

// certManager is what examples/cert-manager.yaml issues.
type certManager struct {
	issuers  map[string]*issuer
	bySecret map[string]*certificate
}

func (m *manifests) certManager(t *testing.T) certManager {
	t.Helper()
	cm := certManager{issuers: map[string]*issuer{}, bySecret: map[string]*certificate{}}
	for _, i := range objectsOf[*issuer](m) {
		cm.issuers[i.Metadata.Name] = i
	}
	for _, c := range objectsOf[*certificate](m) {
		o := m.object(c)
		if o.file != "examples/cert-manager.yaml" {
			t.Errorf("%s: keep cert-manager objects in examples/cert-manager.yaml (the base must apply without cert-manager's CRDs)", o)
		}
		if cm.bySecret[c.Spec.SecretName] != nil {
			t.Errorf("%s: Secret %s issued twice", o, c.Spec.SecretName)
		}
		cm.bySecret[c.Spec.SecretName] = c
		if i := cm.issuers[c.Spec.IssuerRef.Name]; i == nil || c.Spec.IssuerRef.Kind != "Issuer" {
			t.Errorf("%s: issuerRef %s/%s: no such Issuer in examples/", o, c.Spec.IssuerRef.Kind, c.Spec.IssuerRef.Name)
		}
	}
	for _, i := range cm.issuers {
		if i.Spec.CA != nil && (cm.bySecret[i.Spec.CA.SecretName] == nil || !cm.bySecret[i.Spec.CA.SecretName].Spec.IsCA) {
			t.Errorf("%s: CA Secret %s is not issued by a CA Certificate here", m.object(i), i.Spec.CA.SecretName)
		}
	}
	return cm
}

// caIssuer returns the Issuer behind a volume's certificate: the
// Certificate's issuerRef for a Secret, issuer-name for the csi-driver.
func (cm certManager) caIssuer(v volume) string {
	switch {
	case v.Secret != nil:
		if c := cm.bySecret[v.Secret.SecretName]; c != nil {
			return c.Spec.IssuerRef.Name
		}
	case v.CSI != nil:
		return v.CSI.VolumeAttributes[csiDriver+"/issuer-name"]
	}
	return ""
}

// TestIdentities: the certificate a Switchyard container presents names
// one identity spiffe://switchyard/<role>/<name> of its role (a worker's
// name is its --id: the csi-driver's ${POD_NAME} is the pod name, as is
// $(POD_NAME)), usable as a TLS server and client; every identity, and
// etcd's server certificate, come from one CA Issuer (the CA all of them
// trust with --tls-ca); etcd's peer certificate from another.
func TestIdentities(t *testing.T) {
	m := load(t)
	cm := m.certManager(t)
	var ca string
	sameCA := func(what, issuer string) {
		switch {
		case issuer == "" || cm.issuers[issuer] == nil || cm.issuers[issuer].Spec.CA == nil:
			t.Errorf("%s: issuer %q is not a CA Issuer of examples/cert-manager.yaml", what, issuer)
		case ca == "":
			ca = issuer
		case ca != issuer:
			t.Errorf("%s: issuer %s, but other Switchyard certificates come from %s (one --tls-ca must trust them all)", what, issuer, ca)
		}
	}
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			role := roleFor(c)
			if role == "" {
				continue
			}
			argv, _, problems := commandLine(w, w.podNames[0], c)
			p, ok := flagValue(argv[1:], "tls-cert")
			if len(problems) > 0 || !ok {
				continue // TestTLSFlags reports it
			}
			v, _, err := mountedFile(w, c, p)
			if err != nil {
				continue
			}
			what := fmt.Sprintf("%s: container %s: certificate", w, c.Name)
			sameCA(what, cm.caIssuer(v))
			var uris, usages []string
			switch {
			case v.CSI != nil:
				a := v.CSI.VolumeAttributes
				for _, pod := range w.podNames {
					u := strings.ReplaceAll(a[csiDriver+"/uri-sans"], "${POD_NAME}", pod)
					if strings.Contains(u, "${") {
						t.Errorf("%s: uri-sans %q: only ${POD_NAME} is expected", what, a[csiDriver+"/uri-sans"])
					}
					podArgv, _, _ := commandLine(w, pod, c)
					if id, ok := flagValue(podArgv[1:], "id"); role == "worker" && (!ok || u != spiffePrefix+"worker/"+id) {
						t.Errorf("%s: pod %s has URI SAN %s but --id=%s: a worker's certificate must name its ID", what, pod, u, id)
					}
				}
				uris = strings.Split(strings.ReplaceAll(a[csiDriver+"/uri-sans"], "${POD_NAME}", w.podNames[0]), ",")
				usages = strings.Split(a[csiDriver+"/key-usages"], ",")
				if w.replicas > 1 && !strings.Contains(a[csiDriver+"/uri-sans"], "${POD_NAME}") {
					t.Errorf("%s: uri-sans names no ${POD_NAME}: every replica would share one identity", what)
				}
			case v.Secret != nil:
				cert := cm.bySecret[v.Secret.SecretName]
				if cert == nil {
					t.Errorf("%s: Secret %s: no Certificate in examples/cert-manager.yaml issues it", what, v.Secret.SecretName)
					continue
				}
				if role == "worker" {
					t.Errorf("%s: a worker's certificate from a Secret would be every worker's (it must name the pod's --id): use the csi-driver", what)
				}
				uris, usages = cert.Spec.URIs, cert.Spec.Usages
			}
			if len(uris) != 1 || !strings.HasPrefix(uris[0], spiffePrefix+role+"/") || strings.Count(strings.TrimPrefix(uris[0], spiffePrefix), "/") != 1 {
				t.Errorf("%s: URI SANs %v: want exactly one, %s%s/<name>", what, uris, spiffePrefix, role)
			}
			want := []string{"client auth"}
			if role != "client" {
				want = append(want, "server auth") // every daemon serves and calls
			}
			for _, u := range want {
				if !slices.Contains(trimAll(usages), u) {
					t.Errorf("%s: usages %v lack %q", what, usages, u)
				}
			}
		}
	}
	// etcd: the server certificate from the Switchyard CA (clients verify it
	// with --tls-ca), the peer certificate from another CA (no Switchyard
	// certificate may join as a member).
	for _, w := range m.workloads {
		if !isEtcd(w) {
			continue
		}
		c := w.template.Spec.Containers[0]
		argv, _, problems := commandLine(w, w.podNames[0], c)
		if len(problems) > 0 {
			continue
		}
		issuerOf := func(flag string) string {
			p, _ := flagValue(argv[1:], flag)
			v, _, err := mountedFile(w, c, p)
			if err != nil {
				return ""
			}
			return cm.caIssuer(v)
		}
		sameCA(w.String()+": --cert-file", issuerOf("cert-file"))
		sameCA(w.String()+": --trusted-ca-file (the CA of client certificates)", issuerOf("trusted-ca-file"))
		if p := issuerOf("peer-cert-file"); p == "" || p == ca || p != issuerOf("peer-trusted-ca-file") {
			t.Errorf("%s: peer certificate from issuer %q, trusted peer CA from %q: want one CA of their own, not the Switchyard CA %s", w, p, issuerOf("peer-trusted-ca-file"), ca)
		}
	}
}

func trimAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strings.TrimSpace(s)
	}
	return out
}

// TestEtcdTLS: etcd serves clients and peers only over TLS and requires
// client certificates on both (--client-cert-auth, --peer-client-cert-auth),
// with every file from its Secret volumes; only the metrics listener is
// plain HTTP. Its certificates name every host clients and members dial:
// each --etcd endpoint of every manifest, and each member's advertised
// client and peer URL.
func TestEtcdTLS(t *testing.T) {
	m := load(t)
	cm := m.certManager(t)
	var etcd *workload
	for _, w := range m.workloads {
		if isEtcd(w) {
			etcd = w
		}
	}
	if etcd == nil {
		t.Fatal("no etcd StatefulSet")
	}
	c := etcd.template.Spec.Containers[0]
	certOf := func(argv []string, flag, want string) *certificate {
		p, ok := flagValue(argv[1:], flag)
		if !ok {
			t.Errorf("%s: want --%s exactly once", etcd, flag)
			return nil
		}
		v, file, err := mountedFile(etcd, c, p)
		if err == nil {
			err = volumeHasFile(v, file, want)
		}
		if err != nil || v.Secret == nil {
			t.Errorf("%s: --%s=%s: want a file of a Secret volume: %v", etcd, flag, p, err)
			return nil
		}
		return cm.bySecret[v.Secret.SecretName]
	}
	var clientHosts []string
	for _, w := range m.workloads {
		for _, wc := range w.template.Spec.Containers {
			argv, _, problems := commandLine(w, w.podNames[0], wc)
			if eps, ok := flagValue(argv[min(1, len(argv)):], "etcd"); ok && len(problems) == 0 {
				for _, ep := range strings.Split(eps, ",") {
					if u, err := url.Parse(ep); err == nil {
						clientHosts = append(clientHosts, u.Hostname())
					}
				}
			}
		}
	}
	if len(clientHosts) == 0 {
		t.Error("no container passes --etcd")
	}
	argv0, _, problems := commandLine(etcd, etcd.podNames[0], c)
	if len(problems) > 0 {
		t.Fatalf("%s: %v", etcd, problems)
	}
	for _, flag := range []string{"client-cert-auth", "peer-client-cert-auth"} {
		if v, ok := flagValue(argv0[1:], flag); !ok || v != "true" {
			t.Errorf("%s: want --%s=true (certificates authenticate every client and member)", etcd, flag)
		}
	}
	server := certOf(argv0, "cert-file", "tls.crt")
	certOf(argv0, "key-file", "tls.key")
	certOf(argv0, "trusted-ca-file", "ca.crt")
	peer := certOf(argv0, "peer-cert-file", "tls.crt")
	certOf(argv0, "peer-key-file", "tls.key")
	certOf(argv0, "peer-trusted-ca-file", "ca.crt")
	if server != nil && len(server.Spec.URIs) > 0 {
		t.Errorf("%s: etcd's server certificate names %v: it must be no Switchyard identity", etcd, server.Spec.URIs)
	}
	if peer != nil && (!slices.Contains(peer.Spec.Usages, "client auth") || !slices.Contains(peer.Spec.Usages, "server auth")) {
		t.Errorf("%s: peer certificate usages %v: a member is both server and client", etcd, peer.Spec.Usages)
	}
	for i, pod := range etcd.podNames {
		argv, _, _ := commandLine(etcd, pod, c)
		for _, flag := range []string{"listen-client-urls", "listen-peer-urls", "advertise-client-urls", "initial-advertise-peer-urls", "initial-cluster"} {
			v, _ := flagValue(argv[1:], flag)
			for _, e := range strings.Split(v, ",") {
				if flag == "initial-cluster" {
					_, e, _ = strings.Cut(e, "=") // name=URL
				}
				if u, err := url.Parse(e); err != nil || u.Scheme != "https" {
					t.Errorf("%s: --%s: %s: want https", etcd, flag, e)
				}
			}
		}
		metrics, _ := flagValue(argv[1:], "listen-metrics-urls")
		mp, ok := findPort([]container{c}, intOrString{Str: "metrics", IsStr: true}, "TCP")
		if u, err := url.Parse(metrics); err != nil || !ok || u.Port() != fmt.Sprint(mp.ContainerPort) {
			t.Errorf("%s: --listen-metrics-urls=%s: want the metrics port only (plain HTTP serves no keys there)", etcd, metrics)
		}
		if server == nil || peer == nil {
			continue
		}
		hosts := func(flag string) []string {
			v, _ := flagValue(argv[1:], flag)
			u, _ := url.Parse(v)
			return []string{u.Hostname()}
		}
		need := hosts("advertise-client-urls")
		if i == 0 {
			need = append(need, clientHosts...)
		}
		for _, h := range need {
			if !certNames(server, h, etcd.namespace) {
				t.Errorf("%s: etcd's server certificate (Secret %s) does not name %s, which clients dial", etcd, server.Spec.SecretName, h)
			}
		}
		for _, h := range hosts("initial-advertise-peer-urls") {
			if !certNames(peer, h, etcd.namespace) {
				t.Errorf("%s: etcd's peer certificate (Secret %s) does not name %s, which members dial", etcd, peer.Spec.SecretName, h)
			}
		}
	}
}

// certNames: whether a certificate's DNS names cover host as dialled from
// namespace ns (a short Service name is dialled as itself; a wildcard
// covers one leftmost label).
func certNames(c *certificate, host, ns string) bool {
	for _, n := range c.Spec.DNSNames {
		if n == host {
			return true
		}
		if rest, ok := strings.CutPrefix(n, "*."); ok {
			if _, after, ok := strings.Cut(host, "."); ok && after == rest {
				return true
			}
		}
	}
	return slices.Contains(c.Spec.IPAddresses, host)
}

// TestNoPlainHTTPEtcd: no file here (manifests, README, scripts) points
// anyone at etcd's client or peer port over plain HTTP.
func TestNoPlainHTTPEtcd(t *testing.T) {
	re := regexp.MustCompile(`http://[^\s"'` + "`" + `,]*:23(79|80)\b`)
	err := filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, "_test.go") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if re.MatchString(line) {
				t.Errorf("%s:%d: %s: etcd speaks only https", p, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFrontend: the front end (`switchyard serve --etcd`) runs 2 or more
// replicas behind a Service, is Ready only while /health says requests
// can succeed, is not restarted merely for waiting on a placement (its
// liveness probe does not ask /health), keeps /health open for the
// probes, and reads its API keys from a Secret, never from the manifest.
func TestFrontend(t *testing.T) {
	m := load(t)
	n := 0
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			if roleFor(c) != "frontend" {
				continue
			}
			n++
			if w.kind != "Deployment" || w.replicas < 2 {
				t.Errorf("%s: want a Deployment of at least 2 replicas", w)
			}
			argv, env, problems := commandLine(w, w.podNames[0], c)
			if len(problems) > 0 {
				continue
			}
			args := argv[1:]
			if _, ok := flagValue(args, "etcd"); !ok {
				t.Errorf("%s: want serve --etcd (a front end joining the cluster)", w)
			}
			listen, _ := flagValue(args, "listen")
			_, lp, _ := strings.Cut(listen, ":")
			rp := c.ReadinessProbe
			if rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Path != "/health" {
				t.Errorf("%s: want readinessProbe httpGet /health (200 only while requests can succeed)", w)
			} else if p, ok := findPort([]container{c}, rp.HTTPGet.Port, "TCP"); !ok || fmt.Sprint(p.ContainerPort) != lp {
				t.Errorf("%s: readinessProbe port %s is not the --listen port %s", w, rp.HTTPGet.Port, lp)
			}
			if lv := c.LivenessProbe; lv == nil || (lv.HTTPGet != nil && lv.HTTPGet.Path == "/health") {
				t.Errorf("%s: want a livenessProbe that is not /health: a front end waiting for placement is alive", w)
			}
			if c.StartupProbe == nil {
				t.Errorf("%s: want a startupProbe: loading the dense weights takes minutes", w)
			}
			if v, ok := flagValue(args, "auth-health"); ok && v != "false" {
				t.Errorf("%s: --auth-health would make the kubelet's probes fail with 401", w)
			}
			// API keys: $SWITCHYARD_API_KEY from a secretKeyRef, or
			// --api-key-file on a Secret volume; never a literal.
			fromSecret := false
			for _, e := range c.Env {
				if e.Name != "SWITCHYARD_API_KEY" {
					continue
				}
				if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.Value != "" {
					t.Errorf("%s: SWITCHYARD_API_KEY: want valueFrom.secretKeyRef, not a value in the manifest", w)
				} else if o := e.ValueFrom.SecretKeyRef.Optional; o != nil && *o {
					t.Errorf("%s: SWITCHYARD_API_KEY: the Secret must not be optional (the API would be open)", w)
				} else {
					fromSecret = true
				}
			}
			if f, ok := flagValue(args, "api-key-file"); ok {
				v, _, err := mountedFile(w, c, f)
				if err != nil || v.Secret == nil || (v.Secret.Optional != nil && *v.Secret.Optional) {
					t.Errorf("%s: --api-key-file=%s: want a file of a mandatory Secret volume (%v)", w, f, err)
				} else {
					fromSecret = true
				}
			}
			if slices.ContainsFunc(args, func(a string) bool { return a == "--api-key" || strings.HasPrefix(a, "--api-key=") }) {
				t.Errorf("%s: --api-key puts a key in the manifest; use the Secret", w)
			}
			if !fromSecret {
				t.Errorf("%s: no API key from a Secret: the API would be open (env %v)", w, env)
			}
		}
	}
	if n == 0 {
		t.Error("no front end (switchyard serve) in the manifests")
	}
}

// TestPinImagesScript runs pin-images.sh on a copy of kustomization.yaml
// and examples/: from an OCI image layout (the digest of its one
// manifest, checked against the blob), from a registry reference (a stub
// crane resolves it; its repository becomes newName), from a digest, and
// --check before and after.
func TestPinImagesScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash")
	}
	script, err := filepath.Abs("pin-images.sh")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "examples"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile := func(from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, to), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	copyFile("kustomization.yaml", "kustomization.yaml")
	exs, _ := filepath.Glob("examples/*.yaml")
	for _, f := range exs {
		copyFile(f, f)
	}
	// An OCI layout with one manifest.
	layout := filepath.Join(dir, "oci")
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	sum := fmt.Sprintf("%x", sha256.Sum256(manifest))
	if err := os.MkdirAll(filepath.Join(layout, "blobs", "sha256"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(layout, "blobs", "sha256", sum), manifest, 0o644); err != nil {
		t.Fatal(err)
	}
	index := fmt.Sprintf(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d}]}`, sum, len(manifest))
	if err := os.WriteFile(filepath.Join(layout, "index.json"), []byte(index), 0o644); err != nil {
		t.Fatal(err)
	}
	// A stub crane on PATH.
	bin := filepath.Join(dir, "bin")
	etcdDigest := "sha256:" + strings.Repeat("e", 64)
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "crane"), []byte("#!/bin/sh\n[ \"$1\" = digest ] && echo "+etcdDigest+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		cmd := exec.Command(bash, append([]string{script, "-k", dir}, args...)...)
		cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("--check"); err == nil {
		t.Errorf("--check passed with placeholder digests:\n%s", out)
	}
	steps := [][]string{
		{"-n", "registry.test/ml/switchyard", "switchyard", "oci:" + layout},
		{"gcr.io/etcd-development/etcd", "registry.test/mirror/etcd:v3.7.3"},
		{"busybox", "sha256:" + strings.Repeat("b", 64)},
		{"--check"},
	}
	for _, s := range steps {
		if out, err := run(s...); err != nil {
			t.Fatalf("pin-images.sh %v: %v\n%s", s, err, out)
		}
	}
	for _, bad := range [][]string{
		{"busybox", "sha256:abc"},
		{"no-such-image", "sha256:" + strings.Repeat("c", 64)},
		{"busybox", "sha256:" + strings.Repeat("0", 64)},
	} {
		if out, err := run(bad...); err == nil {
			t.Errorf("pin-images.sh %v succeeded:\n%s", bad, out)
		}
	}
	var k kustomization
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		t.Fatalf("the rewritten kustomization.yaml: %v", err)
	}
	want := map[string]kustImage{
		"switchyard":                   {Name: "switchyard", NewName: "registry.test/ml/switchyard", Digest: "sha256:" + sum},
		"gcr.io/etcd-development/etcd": {Name: "gcr.io/etcd-development/etcd", NewName: "registry.test/mirror/etcd", Digest: etcdDigest},
	}
	if len(k.Images) != len(want) {
		t.Errorf("images: %+v, want %d entries", k.Images, len(want))
	}
	for _, im := range k.Images {
		if im != want[im.Name] {
			t.Errorf("images entry %+v, want %+v", im, want[im.Name])
		}
	}
	for f, wantImage := range map[string]string{
		"examples/train-job.yaml":    "registry.test/ml/switchyard@sha256:" + sum,
		"examples/model-loader.yaml": "busybox:1.37@sha256:" + strings.Repeat("b", 64),
	} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), "image: "+wantImage+"\n") {
			t.Errorf("%s: no image: %s after pinning", f, wantImage)
		}
	}
}
