package k8s

import (
	"net"
	"net/url"
	"slices"
	"strconv"
	"testing"
)

// Prometheus scraping (README.md, "Metrics"): every daemon's pods carry
// the prometheus.io annotations, the annotated port is a declared
// container port that the daemon's own flag opens on every interface, the
// network policies let Prometheus (and only Prometheus) reach it, and
// servicemonitor.yaml reaches the same ports through the Services, once
// per pod.

// metricsFlag is, per role, the flag that opens the metrics listener and
// the name of the container port it must be declared as.
var metricsFlag = map[string]struct{ flag, portName string }{
	"etcd":        {"listen-metrics-urls", "metrics"},
	"coordinator": {"http", "metrics"},
	"worker":      {"metrics", "metrics"},
	"frontend":    {"listen", "http"}, // serve's /metrics is on the API port
}

// scrapePort returns the port the pod template's prometheus.io
// annotations name, after checking all three of them.
func scrapePort(t *testing.T, w *workload) (int32, bool) {
	t.Helper()
	a := w.template.Metadata.Annotations
	if a["prometheus.io/scrape"] != "true" {
		t.Errorf("%s: pod template annotation prometheus.io/scrape is %q, want \"true\"", w, a["prometheus.io/scrape"])
	}
	if a["prometheus.io/path"] != "/metrics" {
		t.Errorf("%s: pod template annotation prometheus.io/path is %q, want /metrics", w, a["prometheus.io/path"])
	}
	p, err := strconv.Atoi(a["prometheus.io/port"])
	if err != nil || p <= 0 || p > 65535 {
		t.Errorf("%s: pod template annotation prometheus.io/port is %q, want a port number", w, a["prometheus.io/port"])
		return 0, false
	}
	return int32(p), true
}

// listenPort parses a flag's listen address: host:port, or a URL
// (etcd's --listen-metrics-urls). The host must be every interface:
// Prometheus dials the pod IP.
func listenPort(t *testing.T, w *workload, flag, v string) (int32, bool) {
	t.Helper()
	hostPort := v
	if u, err := url.Parse(v); err == nil && u.Scheme != "" && u.Host != "" {
		if u.Scheme != "http" {
			t.Errorf("%s: --%s=%s: want http (Prometheus scrapes plain HTTP)", w, flag, v)
		}
		hostPort = u.Host
	}
	h, p, err := net.SplitHostPort(hostPort)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Errorf("%s: --%s=%s: want host:port", w, flag, v)
		return 0, false
	}
	if h != "" && h != "0.0.0.0" && h != "::" {
		t.Errorf("%s: --%s=%s: bind every interface (\":%d\"): Prometheus dials the pod IP", w, flag, v, n)
	}
	return int32(n), true
}

// scraped returns the kustomized workloads of each daemon role, failing
// when one is missing.
func scraped(t *testing.T, m *manifests) map[string]*workload {
	t.Helper()
	out := map[string]*workload{}
	for _, w := range m.workloads {
		r := roleOf(w)
		if _, ok := metricsFlag[r]; ok && w.kustomized {
			if out[r] != nil {
				t.Fatalf("two %s workloads: %s, %s", r, out[r], w)
			}
			out[r] = w
		}
	}
	for r := range metricsFlag {
		if out[r] == nil {
			t.Fatalf("no %s workload in the kustomization", r)
		}
	}
	return out
}

// TestMetricsAnnotations: every kustomized pod template of a daemon
// (etcd, coordinator, worker, front end) has prometheus.io/scrape "true",
// prometheus.io/path /metrics and a prometheus.io/port that its container
// declares under the role's port name, and the daemon's own flag
// (worker --metrics, coordinator --http, serve --listen, etcd
// --listen-metrics-urls) opens exactly that port on every interface.
func TestMetricsAnnotations(t *testing.T) {
	m := load(t)
	for _, w := range m.workloads {
		if w.kustomized && (w.kind == "StatefulSet" || w.kind == "Deployment") && roleOf(w) == "" {
			t.Errorf("%s: a daemon of no known role; give it a metrics port and a case in metricsFlag", w)
		}
	}
	for role, w := range scraped(t, m) {
		want := metricsFlag[role]
		port, ok := scrapePort(t, w)
		if !ok {
			continue
		}
		cs := w.template.Spec.Containers
		cp, declared := findPort(cs, intOrString{Int: port}, "TCP")
		if !declared {
			t.Errorf("%s: prometheus.io/port %d is not a declared container port", w, port)
		} else if cp.Name != want.portName {
			t.Errorf("%s: prometheus.io/port %d is container port %q, want it named %q", w, port, cp.Name, want.portName)
		}
		argv, _, problems := commandLine(w, w.podNames[0], cs[0])
		if len(problems) > 0 {
			continue // TestEnvReferencesDefined reports them
		}
		v, ok := flagValue(argv[1:], want.flag)
		if !ok {
			t.Errorf("%s: container %s: want --%s exactly once (it opens the metrics port %d)", w, cs[0].Name, want.flag, port)
			continue
		}
		if p, ok := listenPort(t, w, want.flag, v); ok && p != port {
			t.Errorf("%s: --%s=%s listens on %d, prometheus.io/port says %d", w, want.flag, v, p, port)
		}
	}
}

// TestMetricsNetworkPolicy: Prometheus (namespace monitoring, label
// app.kubernetes.io/name: prometheus, as for etcd) reaches every daemon's
// metrics port; another pod of the namespace monitoring, a pod elsewhere
// with Prometheus' labels and the front ends do not reach the workers' and
// coordinators' metrics ports (the front ends' API port is open to all).
func TestMetricsNetworkPolicy(t *testing.T) {
	m := load(t)
	net := policyNet{ns: m.kust.Namespace, policies: objectsOf[*networkPolicy](m)}
	ws := scraped(t, m)
	outside := func(what, ns string, labels map[string]string) endpoint {
		return endpoint{what: what, ns: ns, nsLabels: namespaceLabels(ns, nil), labels: labels}
	}
	promLabels := map[string]string{"app.kubernetes.io/name": "prometheus"}
	prometheus := outside("Prometheus", "monitoring", promLabels)
	grafana := outside("a pod in monitoring that is not Prometheus", "monitoring", map[string]string{"app.kubernetes.io/name": "grafana"})
	impostor := outside("a pod elsewhere with Prometheus' labels", "elsewhere", promLabels)
	for role, w := range ws {
		port, ok := scrapePort(t, w)
		if !ok {
			continue
		}
		if !net.admits(prometheus, m.podOf(w), port, "TCP") {
			t.Errorf("network policies block Prometheus -> %s metrics port %d/TCP", w, port)
		}
		if role != "worker" && role != "coordinator" {
			continue
		}
		for _, from := range []endpoint{grafana, impostor, m.podOf(ws["frontend"])} {
			if net.admits(from, m.podOf(w), port, "TCP") {
				t.Errorf("network policies let %s -> %s metrics port %d/TCP through", from, w, port)
			}
		}
	}
}

// TestServiceMonitor: servicemonitor.yaml (applied by hand: the
// kustomization must not list it, see TestKustomizationListsEveryFile)
// lives in the namespace, watches only it, and scrapes /metrics over
// http; each of its endpoints names a port of a Service it selects (by
// the Service's labels), and the coordinator's, workers' and front ends'
// pods are each reached exactly once, through a Service that selects
// them, at the port their prometheus.io/port annotation names.
func TestServiceMonitor(t *testing.T) {
	m := load(t)
	sms := objectsOf[*serviceMonitor](m)
	if len(sms) == 0 {
		t.Fatal("no ServiceMonitor (servicemonitor.yaml)")
	}
	if slices.Contains(m.kust.Resources, "servicemonitor.yaml") {
		t.Error("kustomization.yaml lists servicemonitor.yaml: apply -k would fail without the Prometheus Operator's CRD")
	}
	ws := scraped(t, m)
	hits := map[*workload]int{}
	for _, sm := range sms {
		o := m.object(sm)
		if o.kustomized || o.namespace != m.kust.Namespace {
			t.Errorf("%s: want metadata.namespace %s, applied by hand", o, m.kust.Namespace)
		}
		if ns := sm.Spec.NamespaceSelector; ns != nil && (ns.Any || !slices.Equal(ns.MatchNames, []string{m.kust.Namespace})) {
			t.Errorf("%s: namespaceSelector %+v: want matchNames [%s] (or none: its own namespace)", o, *ns, m.kust.Namespace)
		}
		if sm.Spec.Selector.empty() {
			t.Errorf("%s: empty selector: it would select every Service of the namespace (etcd's too)", o)
		}
		var svcs []*service
		for _, s := range objectsOf[*service](m) {
			if m.object(s).kustomized && sm.Spec.Selector.matches(s.Metadata.Labels) {
				svcs = append(svcs, s)
			}
		}
		if len(svcs) == 0 {
			t.Errorf("%s: selector matches the labels of no Service", o)
		}
		for i, ep := range sm.Spec.Endpoints {
			if ep.Port == "" || ep.TargetPort != nil {
				t.Errorf("%s: endpoint %d: name the Service port (port:), not targetPort", o, i)
				continue
			}
			if ep.Path != "" && ep.Path != "/metrics" {
				t.Errorf("%s: endpoint %d: path %q, want /metrics", o, i, ep.Path)
			}
			if ep.Scheme != "" && ep.Scheme != "http" {
				t.Errorf("%s: endpoint %d: scheme %q: the metrics ports are plain HTTP", o, i, ep.Scheme)
			}
			if ep.HonorLabels {
				t.Errorf("%s: endpoint %d: honorLabels would let the training metrics' job label replace the target's job", o, i)
			}
			used := false
			for _, s := range svcs {
				for _, sp := range s.Spec.Ports {
					if sp.Name != ep.Port {
						continue
					}
					used = true
					target := intOrString{Int: sp.Port}
					if sp.TargetPort != nil {
						target = *sp.TargetPort
					}
					for _, w := range m.selected(labelSelector{MatchLabels: s.Spec.Selector}) {
						cp, ok := findPort(w.template.Spec.Containers, target, sp.Protocol)
						if !ok {
							continue // TestServicesReachContainers reports it
						}
						hits[w]++
						if want, ok := scrapePort(t, w); ok && cp.ContainerPort != want {
							t.Errorf("%s: endpoint %s scrapes %s on port %d, its prometheus.io/port is %d", o, ep.Port, w, cp.ContainerPort, want)
						}
					}
				}
			}
			if !used {
				t.Errorf("%s: endpoint port %q is a port of no Service it selects", o, ep.Port)
			}
		}
	}
	for role, w := range ws {
		if role == "etcd" {
			continue // scraped by its annotations only
		}
		if hits[w] != 1 {
			t.Errorf("%s: the ServiceMonitor scrapes its pods %d times, want once (a Service selecting them with a port an endpoint names)", w, hits[w])
		}
	}
}
