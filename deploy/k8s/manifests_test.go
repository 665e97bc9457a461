package k8s

import (
	"bytes"
	"context"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestKustomizationListsEveryFile: `kubectl apply -k` applies exactly the
// manifests in this folder (examples/ is applied by hand), but for files
// that hold only objects of optional CRDs (crdKinds: servicemonitor.yaml),
// which it must not list, and which README.md must mention.
func TestKustomizationListsEveryFile(t *testing.T) {
	m := load(t)
	var top []string
	crdOnly := map[string]bool{}
	for _, f := range m.files {
		if path.Dir(f) != "." {
			continue
		}
		only, has := true, false
		for _, o := range m.objects {
			if o.file == f {
				has = true
				only = only && !o.kustomized && o.kind != "Namespace"
			}
		}
		if has && only {
			crdOnly[f] = true
			continue
		}
		top = append(top, f)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for f := range crdOnly {
		if slices.Contains(m.kust.Resources, f) {
			t.Errorf("kustomization.yaml lists %s, which holds only objects of an optional CRD: `kubectl apply -k` would fail on clusters without it", f)
		}
		if !strings.Contains(string(readme), "`"+f+"`") {
			t.Errorf("%s is applied by hand (not in kustomization.yaml); README.md must say so (name it as `%s`)", f, f)
		}
	}
	listed := map[string]bool{}
	for _, r := range m.kust.Resources {
		if listed[r] {
			t.Errorf("kustomization.yaml lists %s twice", r)
		}
		listed[r] = true
		if !slices.Contains(top, r) {
			t.Errorf("kustomization.yaml lists %s, which is not a manifest in this folder", r)
		}
	}
	for _, f := range top {
		if !listed[f] {
			t.Errorf("%s is not listed in kustomization.yaml resources", f)
		}
	}
	var ns []string
	for _, v := range objectsOf[*namespaceObj](m) {
		ns = append(ns, v.Metadata.Name)
	}
	if !slices.Equal(ns, []string{m.kust.Namespace}) {
		t.Errorf("kustomization.yaml namespace %q, Namespace objects %v: want exactly that one", m.kust.Namespace, ns)
	}
}

// TestSelectorsMatchTemplates: every workload's selector selects its own
// pod template, and a StatefulSet's governing Service is headless and
// selects its pods.
func TestSelectorsMatchTemplates(t *testing.T) {
	m := load(t)
	for _, w := range m.workloads {
		if w.selector.empty() {
			t.Errorf("%s: empty selector", w)
		}
		if !w.selector.matches(w.template.Metadata.Labels) {
			t.Errorf("%s: selector %v does not match the pod template's labels %v", w, w.selector, w.template.Metadata.Labels)
		}
		for _, other := range m.workloads {
			if other != w && w.kustomized && other.kustomized && w.selector.matches(other.template.Metadata.Labels) {
				t.Errorf("%s: selector also matches the pods of %s", w, other)
			}
		}
		if w.kind != "StatefulSet" {
			continue
		}
		var gov *service
		for _, s := range objectsOf[*service](m) {
			if s.Metadata.Name == w.serviceName {
				gov = s
			}
		}
		switch {
		case gov == nil:
			t.Errorf("%s: serviceName %q: no such Service", w, w.serviceName)
		case gov.Spec.ClusterIP != "None":
			t.Errorf("%s: serviceName %q is not headless (clusterIP: None)", w, w.serviceName)
		case !(labelSelector{MatchLabels: gov.Spec.Selector}).matches(w.template.Metadata.Labels):
			t.Errorf("%s: Service %q does not select its pods", w, w.serviceName)
		}
	}
}

// TestServicesReachContainers: every Service selects a workload whose
// containers declare each targetPort (by name or number, same protocol).
func TestServicesReachContainers(t *testing.T) {
	m := load(t)
	for _, s := range objectsOf[*service](m) {
		o := m.object(s)
		sel := labelSelector{MatchLabels: s.Spec.Selector}
		ws := m.selected(sel)
		if sel.empty() || len(ws) == 0 {
			t.Errorf("%s: selector %v matches no workload", o, s.Spec.Selector)
			continue
		}
		for _, p := range s.Spec.Ports {
			target := intOrString{Int: p.Port}
			if p.TargetPort != nil {
				target = *p.TargetPort
			}
			for _, w := range ws {
				if _, ok := findPort(w.template.Spec.Containers, target, p.Protocol); !ok {
					t.Errorf("%s: port %q targets %s/%s, which no container of %s declares", o, p.Name, protocol(p.Protocol), target, w)
				}
			}
		}
	}
}

// TestContainerPortsAndProbes: port names are valid and unique, probes
// name declared ports, daemons have probes and a grace period.
func TestContainerPortsAndProbes(t *testing.T) {
	m := load(t)
	portName := regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	for _, w := range m.workloads {
		daemon := w.kind == "StatefulSet" || w.kind == "Deployment"
		if daemon && w.template.Spec.TerminationGracePeriodSeconds == nil {
			t.Errorf("%s: no terminationGracePeriodSeconds", w)
		}
		for _, c := range w.template.Spec.Containers {
			names := map[string]bool{}
			for _, p := range c.Ports {
				if len(p.Name) > 15 || !portName.MatchString(p.Name) || names[p.Name] {
					t.Errorf("%s: container %s: port name %q: want unique, at most 15 lowercase letters, digits and '-'", w, c.Name, p.Name)
				}
				names[p.Name] = true
			}
			if daemon && c.LivenessProbe == nil {
				t.Errorf("%s: container %s has no livenessProbe", w, c.Name)
			}
			for what, pr := range map[string]*probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
				if pr == nil {
					continue
				}
				var port intOrString
				switch {
				case pr.HTTPGet != nil && pr.TCPSocket == nil:
					port = pr.HTTPGet.Port
				case pr.TCPSocket != nil && pr.HTTPGet == nil:
					port = pr.TCPSocket.Port
				default:
					t.Errorf("%s: container %s: %s needs exactly one handler", w, c.Name, what)
					continue
				}
				if _, ok := findPort([]container{c}, port, "TCP"); !ok {
					t.Errorf("%s: container %s: %s probes port %s, which the container does not declare", w, c.Name, what, port)
				}
			}
		}
	}
}

// TestPodDisruptionBudgets: each budget covers one workload and lets
// drains make progress (at least one pod may go) without taking all of
// it; etcd's keeps a quorum.
func TestPodDisruptionBudgets(t *testing.T) {
	m := load(t)
	covered := map[*workload]bool{}
	for _, b := range objectsOf[*pdb](m) {
		o := m.object(b)
		ws := m.selected(b.Spec.Selector)
		if len(ws) != 1 {
			t.Errorf("%s: selector matches %d workloads, want 1", o, len(ws))
			continue
		}
		w := ws[0]
		covered[w] = true
		var allowed int
		switch {
		case b.Spec.MaxUnavailable != nil && b.Spec.MinAvailable == nil && !b.Spec.MaxUnavailable.IsStr:
			allowed = int(b.Spec.MaxUnavailable.Int)
		case b.Spec.MinAvailable != nil && b.Spec.MaxUnavailable == nil && !b.Spec.MinAvailable.IsStr:
			allowed = w.replicas - int(b.Spec.MinAvailable.Int)
		default:
			t.Errorf("%s: want exactly one of minAvailable and maxUnavailable, as a count", o)
			continue
		}
		if allowed < 1 || allowed >= w.replicas {
			t.Errorf("%s: allows %d of %s's %d pods to be disrupted: want 1 to %d", o, allowed, w, w.replicas, w.replicas-1)
		}
		if isEtcd(w) && w.replicas-allowed < w.replicas/2+1 {
			t.Errorf("%s: %d of %d etcd members left is not a quorum", o, w.replicas-allowed, w.replicas)
		}
	}
	for _, w := range m.workloads {
		if w.kustomized && !covered[w] {
			t.Errorf("%s: no PodDisruptionBudget", w)
		}
	}
}

// TestVolumes: mounts name volumes (or claim templates), claims exist, the
// model is mounted read-only wherever a Switchyard daemon runs (front ends
// included).
func TestVolumes(t *testing.T) {
	m := load(t)
	claims := map[string]bool{}
	for _, c := range objectsOf[*pvc](m) {
		claims[c.Metadata.Name] = true
		if len(c.Spec.AccessModes) == 0 || c.Spec.Resources.Requests["storage"] == "" {
			t.Errorf("%s: want accessModes and a storage request", m.object(c))
		}
	}
	for _, w := range m.workloads {
		vols := map[string]volume{}
		for _, v := range w.template.Spec.Volumes {
			n := 0
			if v.PersistentVolumeClaim != nil {
				n++
				if !claims[v.PersistentVolumeClaim.ClaimName] {
					t.Errorf("%s: volume %s: no PersistentVolumeClaim %q", w, v.Name, v.PersistentVolumeClaim.ClaimName)
				}
			}
			for _, set := range []bool{v.EmptyDir != nil, v.Secret != nil, v.CSI != nil} {
				if set {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%s: volume %s: want exactly one source", w, v.Name)
			}
			vols[v.Name] = v
		}
		if s, ok := w.v.(*statefulSet); ok {
			for _, vct := range s.Spec.VolumeClaimTemplates {
				vols[vct.Metadata.Name] = volume{Name: vct.Metadata.Name}
			}
		}
		for _, c := range w.template.Spec.Containers {
			for _, vm := range c.VolumeMounts {
				v, ok := vols[vm.Name]
				if !ok {
					t.Errorf("%s: container %s mounts %q: no such volume", w, c.Name, vm.Name)
				}
				if b := binaryOf(c); b == binCoordinator || b == binWorker || b == binSwitchyard {
					if vm.MountPath == "/model" && (!vm.ReadOnly || v.PersistentVolumeClaim == nil || !v.PersistentVolumeClaim.ReadOnly) {
						t.Errorf("%s: container %s: mount /model and its claim read-only", w, c.Name)
					}
				}
			}
		}
	}
}

// TestPodSecurity: every pod meets the "restricted" Pod Security Standard
// the namespace enforces (non-root, no privilege escalation, all
// capabilities dropped, RuntimeDefault seccomp), with a read-only root
// filesystem, no service-account token, no Service env links, and
// requests and memory limits on every container.
func TestPodSecurity(t *testing.T) {
	m := load(t)
	for _, w := range m.workloads {
		ps := w.template.Spec
		psc := ps.SecurityContext
		if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || (psc.RunAsUser != nil && *psc.RunAsUser == 0) {
			t.Errorf("%s: want securityContext.runAsNonRoot: true and a non-zero runAsUser", w)
		}
		if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != "RuntimeDefault" {
			t.Errorf("%s: want securityContext.seccompProfile.type: RuntimeDefault", w)
		}
		if ps.HostNetwork {
			t.Errorf("%s: hostNetwork", w)
		}
		if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
			t.Errorf("%s: want automountServiceAccountToken: false (nothing here calls the Kubernetes API)", w)
		}
		if ps.EnableServiceLinks == nil || *ps.EnableServiceLinks {
			t.Errorf("%s: want enableServiceLinks: false (etcd reads ETCD_* variables as flags)", w)
		}
		for _, c := range ps.Containers {
			sc := c.SecurityContext
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
				sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				(sc.Privileged != nil && *sc.Privileged) ||
				sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
				t.Errorf("%s: container %s: want allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities.drop: [ALL]", w, c.Name)
			}
			r := c.Resources
			for _, k := range []string{"cpu", "memory"} {
				if r.Requests[k] == "" {
					t.Errorf("%s: container %s: no %s request", w, c.Name, k)
				}
			}
			if r.Limits["memory"] == "" {
				t.Errorf("%s: container %s: no memory limit", w, c.Name)
			}
			for k, lim := range r.Limits {
				req, ok := r.Requests[k]
				if ok && mustQ(t, req).Cmp(mustQ(t, lim)) > 0 {
					t.Errorf("%s: container %s: %s request %s above its limit %s", w, c.Name, k, req, lim)
				}
			}
		}
	}
}

func mustQ(t *testing.T, q quantity) *big.Rat {
	t.Helper()
	v, err := q.value()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestImages: every image runs by digest, never by a tag that can be
// moved: kustomization.yaml's images entries all carry a sha256 digest (no
// newTag), every kustomized container's image is the name of one of them
// (kustomize rewrites it to newName@digest), and every image in examples/
// (not rewritten) carries a digest itself, the Switchyard one exactly the
// kustomization's. Switchyard containers run a binary the Dockerfile
// installs; etcd's image tag is the release of the etcd server library in
// go.mod (the one the flag check builds); the Dockerfile builds with the
// Go version of go.mod.
func TestImages(t *testing.T) {
	m := load(t)
	byName := map[string]kustImage{}
	used := map[string]bool{}
	for _, im := range m.kust.Images {
		if _, dup := byName[im.Name]; dup || im.Name == "" {
			t.Errorf("kustomization.yaml: images: name %q empty or listed twice", im.Name)
		}
		byName[im.Name] = im
		if !sha256Digest.MatchString(im.Digest) {
			t.Errorf("kustomization.yaml: images %q: digest %q: want sha256:<64 hex> (pin-images.sh)", im.Name, im.Digest)
		}
		if im.NewTag != "" {
			t.Errorf("kustomization.yaml: images %q: newTag %q: a tag can be moved; pin a digest instead", im.Name, im.NewTag)
		}
	}
	ours, ok := byName["switchyard"]
	if !ok || ours.NewName == "" {
		t.Fatalf("kustomization.yaml: want an images entry for %q with newName (the registry) and digest", "switchyard")
	}
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	dockerfile := string(df)
	for _, want := range []string{"ARG GO_VERSION=" + m.goMod.goVersion + "\n", "golang:${GO_VERSION}", "CGO_ENABLED=0"} {
		if !strings.Contains(dockerfile, want) {
			t.Errorf("Dockerfile: no %q (go.mod: go %s)", want, m.goMod.goVersion)
		}
	}
	const etcdRepo = "gcr.io/etcd-development/etcd"
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			repo, tag, digest := splitImage(c.Image)
			bin := binaryOf(c)
			ourBinary := bin == binCoordinator || bin == binWorker || bin == binSwitchyard
			switch {
			case w.kustomized:
				im, ok := byName[repo]
				if !ok {
					t.Errorf("%s: container %s: image %s has no images entry in kustomization.yaml: it would run by tag", w, c.Name, c.Image)
					break
				}
				used[repo] = true
				if digest != "" {
					t.Errorf("%s: container %s: image %s: give the digest in kustomization.yaml only (kustomize would replace this one)", w, c.Name, c.Image)
				}
				if ourBinary && c.Image != ours.Name {
					t.Errorf("%s: container %s: image %s, want %s (kustomization.yaml pins it)", w, c.Name, c.Image, ours.Name)
				}
				if bin == binEtcd && (repo != etcdRepo || tag != m.goMod.etcdVersion || im.Name != etcdRepo) {
					t.Errorf("%s: container %s: image %s, want %s:%s (go.mod's go.etcd.io/etcd/server/v3), pinned in kustomization.yaml", w, c.Name, c.Image, etcdRepo, m.goMod.etcdVersion)
				}
			default:
				if !sha256Digest.MatchString(digest) {
					t.Errorf("%s: container %s: image %s: want REPO[:TAG]@sha256:<64 hex> (examples are not rewritten by kustomize; pin-images.sh)", w, c.Name, c.Image)
				}
				if want := ours.NewName + "@" + ours.Digest; ourBinary && c.Image != want {
					t.Errorf("%s: container %s: image %s, want %s (kustomization.yaml's; pin-images.sh rewrites both)", w, c.Name, c.Image, want)
				}
			}
			if ourBinary {
				name := path.Base(bin)
				if !strings.Contains(dockerfile, buildPkgs[bin]) || !strings.Contains(dockerfile, "/out/"+name) {
					t.Errorf("Dockerfile does not build %s and install it in %s", buildPkgs[bin], path.Dir(bin))
				}
			} else if repo == ours.Name || repo == ours.NewName {
				t.Errorf("%s: container %s runs %q from the Switchyard image, which has no such binary", w, c.Name, bin)
			}
		}
	}
	for name := range byName {
		if !used[name] {
			t.Errorf("kustomization.yaml: images entry %q matches no container", name)
		}
	}
}

var sha256Digest = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// splitImage splits an image reference into repository, tag and digest
// ("busybox:1.37@sha256:ab..." -> "busybox", "1.37", "sha256:ab..."); a
// ':' before the last '/' belongs to a registry's port.
func splitImage(ref string) (repo, tag, digest string) {
	repo, digest, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	return repo, tag, digest
}

// TestEnvReferencesDefined: every $(VAR) in a command, an argument or an
// env value is defined in the container's env (Kubernetes would pass an
// undefined one through literally).
func TestEnvReferencesDefined(t *testing.T) {
	m := load(t)
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			if _, _, problems := commandLine(w, w.podNames[0], c); len(problems) > 0 {
				t.Errorf("%s: container %s:\n\t%s", w, c.Name, strings.Join(problems, "\n\t"))
			}
		}
	}
}

// TestEtcdInitialCluster: --initial-cluster names one member per replica
// (etcd-0 .. etcd-N-1) at its stable DNS name under the governing headless
// Service (which publishes not-ready pods), each member advertises exactly
// its own entry, and the members start together.
func TestEtcdInitialCluster(t *testing.T) {
	m := load(t)
	found := false
	for _, w := range m.workloads {
		if !isEtcd(w) {
			continue
		}
		found = true
		s := w.v.(*statefulSet)
		if s.Spec.PodManagementPolicy != "Parallel" {
			t.Errorf("%s: podManagementPolicy %q: want Parallel (with OrderedReady etcd-0 waits for a quorum that later members provide)", w, s.Spec.PodManagementPolicy)
		}
		if w.replicas%2 != 1 {
			t.Errorf("%s: %d replicas: want an odd number", w, w.replicas)
		}
		for _, svc := range objectsOf[*service](m) {
			if svc.Metadata.Name == w.serviceName && !svc.Spec.PublishNotReadyAddresses {
				t.Errorf("Service %s: want publishNotReadyAddresses: true (members must resolve each other before they are Ready)", svc.Metadata.Name)
			}
		}
		c := w.template.Spec.Containers[0]
		peer, ok1 := findPort([]container{c}, intOrString{Str: "peer", IsStr: true}, "TCP")
		client, ok2 := findPort([]container{c}, intOrString{Str: "client", IsStr: true}, "TCP")
		if !ok1 || !ok2 {
			t.Fatalf("%s: want container ports named peer and client", w)
		}
		for i, pod := range w.podNames {
			argv, _, problems := commandLine(w, pod, c)
			if len(problems) > 0 {
				t.Fatalf("%s: %v", w, problems)
			}
			args := argv[1:]
			get := func(name string) string {
				v, ok := flagValue(args, name)
				if !ok {
					t.Fatalf("%s: want --%s exactly once", w, name)
				}
				return v
			}
			if got := get("name"); got != pod {
				t.Errorf("%s: pod %s: --name=%s, want the pod name", w, pod, got)
			}
			host := fmt.Sprintf("%s.%s.%s.svc", pod, w.serviceName, w.namespace)
			var members []string
			for _, e := range strings.Split(get("initial-cluster"), ",") {
				members = append(members, strings.SplitN(e, "=", 2)[0])
			}
			if i == 0 && !slices.Equal(members, w.podNames) {
				t.Errorf("%s: --initial-cluster names %v; the %d replicas are %v", w, members, w.replicas, w.podNames)
			}
			want := fmt.Sprintf("%s=https://%s:%d", pod, host, peer.ContainerPort)
			if !slices.Contains(strings.Split(get("initial-cluster"), ","), want) {
				t.Errorf("%s: --initial-cluster lacks %s (the pod's DNS name under Service %s)", w, want, w.serviceName)
			}
			if got, want := get("initial-advertise-peer-urls"), fmt.Sprintf("https://%s:%d", host, peer.ContainerPort); got != want {
				t.Errorf("%s: pod %s: --initial-advertise-peer-urls=%s, want %s", w, pod, got, want)
			}
			if got, want := get("advertise-client-urls"), fmt.Sprintf("https://%s:%d", host, client.ContainerPort); got != want {
				t.Errorf("%s: pod %s: --advertise-client-urls=%s, want %s", w, pod, got, want)
			}
			for flag, port := range map[string]int32{"listen-peer-urls": peer.ContainerPort, "listen-client-urls": client.ContainerPort} {
				u, err := url.Parse(get(flag))
				if err != nil || u.Port() != strconv.Itoa(int(port)) || u.Scheme != "https" {
					t.Errorf("%s: --%s=%s: want https on port %d", w, flag, get(flag), port)
				}
			}
			if i == 0 && get("initial-cluster-state") != "new" {
				t.Errorf("%s: --initial-cluster-state=%s, want new", w, get("initial-cluster-state"))
			}
			dataDir := get("data-dir")
			inClaim := false
			for _, vm := range c.VolumeMounts {
				for _, vct := range s.Spec.VolumeClaimTemplates {
					inClaim = inClaim || (vm.Name == vct.Metadata.Name && strings.HasPrefix(dataDir+"/", strings.TrimSuffix(vm.MountPath, "/")+"/"))
				}
			}
			if !inClaim {
				t.Errorf("%s: --data-dir=%s is not on a volumeClaimTemplate's mount", w, dataDir)
			}
		}
	}
	if !found {
		t.Fatal("no etcd StatefulSet")
	}
}

// TestDaemonAddressing: what workers and coordinators advertise is their
// own pod's address (peers dial it), identities are per pod, ports match
// the declared container ports (a front end's --listen too), --etcd names
// an https Service port, the memory flags fit the container's limit, and
// grace periods cover the drains.
func TestDaemonAddressing(t *testing.T) {
	m := load(t)
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			bin := binaryOf(c)
			if bin != binWorker && bin != binCoordinator && bin != binSwitchyard {
				continue
			}
			pod := w.podNames[0]
			argv, env, problems := commandLine(w, pod, c)
			if len(problems) > 0 {
				continue // TestEnvReferencesDefined reports them
			}
			args := argv[1:]
			get := func(name string) string {
				v, ok := flagValue(args, name)
				if !ok {
					t.Errorf("%s: container %s: want --%s exactly once", w, c.Name, name)
				}
				return v
			}
			for _, ep := range strings.Split(get("etcd"), ",") {
				checkEtcdEndpoint(t, m, w, ep)
			}
			hostPort := func(flag string) (string, int32) {
				h, p, err := net.SplitHostPort(get(flag))
				n, err2 := strconv.Atoi(p)
				if err != nil || err2 != nil {
					t.Errorf("%s: container %s: --%s=%s: want host:port", w, c.Name, flag, get(flag))
				}
				return h, int32(n)
			}
			declared := func(flag string, port int32, protos ...string) {
				for _, pr := range protos {
					if _, ok := findPort([]container{c}, intOrString{Int: port}, pr); !ok {
						t.Errorf("%s: container %s: --%s port %d/%s is not a declared container port", w, c.Name, flag, port, pr)
					}
				}
			}
			switch bin {
			case binWorker:
				if get("id") != pod {
					t.Errorf("%s: --id=%s: want the pod name (a stable, unique identity)", w, get("id"))
				}
				h, p := hostPort("advertise")
				if h != samplePodIP && h != fmt.Sprintf("%s.%s.%s.svc", pod, w.serviceName, w.namespace) {
					t.Errorf("%s: --advertise host %s: want the pod IP (status.podIP) or the pod's DNS name", w, h)
				}
				if _, lp := hostPort("listen"); lp != p {
					t.Errorf("%s: --listen port %d differs from --advertise port %d", w, lp, p)
				}
				declared("advertise", p, "TCP")
				gh, gp := hostPort("gossip")
				if gh != samplePodIP {
					t.Errorf("%s: --gossip host %s: want the pod IP (memberlist advertises the address it binds)", w, gh)
				}
				declared("gossip", gp, "TCP", "UDP")
				checkMemory(t, w, c, env, get("mem"))
				drain, err := time.ParseDuration(get("drain-timeout"))
				grace := w.template.Spec.TerminationGracePeriodSeconds
				if err != nil || grace == nil || time.Duration(*grace)*time.Second < drain+5*time.Second {
					t.Errorf("%s: terminationGracePeriodSeconds must exceed --drain-timeout (%s) by a few seconds", w, get("drain-timeout"))
				}
			case binCoordinator:
				if w.replicas > 1 && get("name") != pod {
					t.Errorf("%s: --name=%s: want the pod name (unique per candidate)", w, get("name"))
				}
				gh, gp := hostPort("gossip-addr")
				if gh != samplePodIP {
					t.Errorf("%s: --gossip-addr host %s: want the pod IP", w, gh)
				}
				declared("gossip-addr", gp, "TCP", "UDP")
				if get("model") == "" {
					t.Errorf("%s: --model: the coordinator registers the served model", w)
				}
			case binSwitchyard:
				if len(args) == 0 || args[0] != "serve" {
					continue // a client (train, status): --etcd is all it needs
				}
				_, p := hostPort("listen")
				declared("listen", p, "TCP")
				shutdown, err := time.ParseDuration(get("shutdown-grace"))
				grace := w.template.Spec.TerminationGracePeriodSeconds
				if err != nil || grace == nil || time.Duration(*grace)*time.Second < shutdown+5*time.Second {
					t.Errorf("%s: terminationGracePeriodSeconds must exceed --shutdown-grace (%s) by a few seconds", w, get("shutdown-grace"))
				}
			}
		}
	}
}

// checkEtcdEndpoint: an --etcd endpoint is https://<Service>:<port> (short
// name or FQDN in the namespace) of a Service that selects etcd pods.
func checkEtcdEndpoint(t *testing.T, m *manifests, w *workload, ep string) {
	t.Helper()
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "https" {
		t.Errorf("%s: --etcd endpoint %q: want https://SERVICE:PORT (etcd speaks only TLS)", w, ep)
		return
	}
	name := strings.TrimSuffix(strings.TrimSuffix(u.Hostname(), ".svc.cluster.local"), ".svc")
	name = strings.TrimSuffix(name, "."+w.namespace)
	for _, s := range objectsOf[*service](m) {
		if s.Metadata.Name != name {
			continue
		}
		etcdPods := false
		for _, sw := range m.selected(labelSelector{MatchLabels: s.Spec.Selector}) {
			etcdPods = etcdPods || isEtcd(sw)
		}
		for _, p := range s.Spec.Ports {
			if strconv.Itoa(int(p.Port)) == u.Port() && etcdPods {
				return
			}
		}
	}
	t.Errorf("%s: --etcd endpoint %q is not a port of a Service that selects the etcd pods", w, ep)
}

// checkMemory: --mem (weights) < GOMEMLIMIT (the Go heap's soft limit) <
// the container's memory limit.
func checkMemory(t *testing.T, w *workload, c container, env map[string]string, mem string) {
	t.Helper()
	lim, err := c.Resources.Limits["memory"].value()
	if err != nil {
		t.Errorf("%s: memory limit: %v", w, err)
		return
	}
	weights, err := parseBytes(mem)
	if err != nil {
		t.Errorf("%s: --mem=%s: %v", w, mem, err)
		return
	}
	if weights.Cmp(lim) >= 0 {
		t.Errorf("%s: --mem=%s leaves nothing of the %s memory limit for activations and buffers", w, mem, c.Resources.Limits["memory"])
	}
	if g, ok := env["GOMEMLIMIT"]; ok {
		gl, err := parseBytes(g)
		if err != nil || gl.Cmp(lim) > 0 || gl.Cmp(weights) <= 0 {
			t.Errorf("%s: GOMEMLIMIT=%s: want between --mem=%s and the memory limit %s", w, g, mem, c.Resources.Limits["memory"])
		}
	}
}

// TestBinariesAcceptManifestArgs runs every container's binary, built
// from this tree (etcd: the go.mod version, as pinned in the image), with
// the container's exact arguments (variables expanded with sample values)
// plus --help. cobra and Go's flag package parse every flag before they
// look at --help, so an unknown flag, a flag given a malformed value (an
// int, a duration, a bool) or an unknown subcommand fails, and exit status
// 0 means the binary accepts the manifest's command line. The container's
// env is passed too (a malformed GOMEMLIMIT stops the Go runtime).
func TestBinariesAcceptManifestArgs(t *testing.T) {
	m := load(t)
	type run struct {
		w    *workload
		c    container
		argv []string
		env  map[string]string
	}
	var runs []run
	need := map[string]bool{}
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			if _, ok := buildPkgs[binaryOf(c)]; !ok {
				continue
			}
			need[binaryOf(c)] = true
			argv, env, problems := commandLine(w, w.podNames[0], c)
			if len(problems) > 0 {
				t.Errorf("%s: container %s: %v", w, c.Name, problems)
				continue
			}
			runs = append(runs, run{w, c, argv, env})
		}
	}
	if !need[binCoordinator] || !need[binWorker] || !need[binEtcd] {
		t.Fatalf("want containers running %s, %s and %s; found %v", binCoordinator, binWorker, binEtcd, need)
	}
	bins := buildBinaries(t, need)
	home := t.TempDir()
	for _, r := range runs {
		t.Run(r.w.name+"/"+r.c.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			args := append(slices.Clone(r.argv[1:]), "--help")
			cmd := exec.CommandContext(ctx, bins[r.argv[0]], args...)
			cmd.Env = []string{"HOME=" + home}
			for k, v := range r.env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Run(); err != nil {
				t.Errorf("%s %s: %v (the manifest's arguments do not parse)\n%s", r.argv[0], strings.Join(args, " "), err, tail(out.String(), 20))
			}
		})
	}
}

// buildBinaries builds the binaries the manifests run into a temporary
// folder and returns their paths by path in the image.
func buildBinaries(t *testing.T, need map[string]bool) map[string]string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	dir := t.TempDir()
	bins := map[string]string{}
	var local []string
	for bin := range need {
		bins[bin] = filepath.Join(dir, path.Base(bin))
		if strings.HasPrefix(buildPkgs[bin], "./") {
			local = append(local, buildPkgs[bin])
		}
	}
	slices.Sort(local)
	recordSources(t, root, local)
	builds := [][]string{append([]string{"build", "-o", dir + string(filepath.Separator)}, local...)}
	if need[binEtcd] {
		builds = append(builds, []string{"build", "-o", bins[binEtcd], buildPkgs[binEtcd]})
	}
	for _, args := range builds {
		t0 := time.Now()
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("go %s: %v", strings.Join(args, " "), time.Since(t0).Round(time.Millisecond))
	}
	return bins
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// recordSources stats every Go file of this module that pkgs are built
// from. go test caches a passing result keyed on the files the test
// itself touches, and the binaries are built by a child process: without
// this a flag renamed in cmd/ would leave a cached pass standing.
func recordSources(t *testing.T, root string, pkgs []string) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-deps", "-f", "{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}"}, pkgs...)...)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %v: %v", pkgs, err)
	}
	for _, dir := range strings.Fields(string(out)) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".go") {
				if _, err := os.Stat(filepath.Join(dir, e.Name())); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Fatal(err)
		}
	}
}
