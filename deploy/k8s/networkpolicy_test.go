package k8s

import (
	"fmt"
	"slices"
	"testing"
)

// endpoint is one end of a connection as NetworkPolicy sees it: a pod (its
// namespace's labels and its own) or an address outside every pod.
type endpoint struct {
	what     string            // for messages
	ns       string            // "" for an address that is no pod
	nsLabels map[string]string // the namespace's labels
	labels   map[string]string // the pod's labels
}

func (e endpoint) String() string { return e.what }

// metadataName is the label the API server sets on every namespace to its
// own name; nobody can give another namespace's name to theirs.
const metadataName = "kubernetes.io/metadata.name"

func namespaceLabels(ns string, extra map[string]string) map[string]string {
	l := map[string]string{}
	for k, v := range extra {
		l[k] = v
	}
	l[metadataName] = ns
	return l
}

// ourNamespaceLabels are the labels of the Namespace object here, as the
// API server stores them.
func (m *manifests) ourNamespaceLabels() map[string]string {
	var extra map[string]string
	for _, n := range objectsOf[*namespaceObj](m) {
		if n.Metadata.Name == m.kust.Namespace {
			extra = n.Metadata.Labels
		}
	}
	return namespaceLabels(m.kust.Namespace, extra)
}

func (m *manifests) podOf(w *workload) endpoint {
	return endpoint{what: w.String(), ns: w.namespace, nsLabels: m.ourNamespaceLabels(), labels: w.template.Metadata.Labels}
}

// policyNet applies the NetworkPolicies of one namespace, as a network
// plugin does: a pod selected by a policy of a direction is isolated in
// it, and then only what some rule of those policies allows gets through;
// a connection needs the source's egress and the destination's ingress.
type policyNet struct {
	ns       string
	policies []*networkPolicy
}

type policyRule struct {
	peers []policyPeer
	ports []policyPort
}

func (n policyNet) admits(from, to endpoint, port int32, proto string) bool {
	return n.side(from, to, port, proto, "Egress") && n.side(to, from, port, proto, "Ingress")
}

// side: whether the policies that select self let the connection with
// other through in direction dir.
func (n policyNet) side(self, other endpoint, port int32, proto, dir string) bool {
	if self.ns != n.ns {
		return true // not a pod these policies govern
	}
	isolated := false
	for _, p := range n.policies {
		if !p.Spec.PodSelector.matches(self.labels) || !hasPolicyType(p, dir) {
			continue
		}
		isolated = true
		for _, r := range rulesOf(p, dir) {
			if n.peersMatch(r.peers, other) && portsMatch(r.ports, port, proto) {
				return true
			}
		}
	}
	return !isolated
}

func hasPolicyType(p *networkPolicy, dir string) bool {
	if len(p.Spec.PolicyTypes) == 0 { // the API's default
		return dir == "Ingress" || len(p.Spec.Egress) > 0
	}
	return slices.Contains(p.Spec.PolicyTypes, dir)
}

func rulesOf(p *networkPolicy, dir string) []policyRule {
	var rs []policyRule
	if dir == "Ingress" {
		for _, r := range p.Spec.Ingress {
			rs = append(rs, policyRule{r.From, r.Ports})
		}
	} else {
		for _, r := range p.Spec.Egress {
			rs = append(rs, policyRule{r.To, r.Ports})
		}
	}
	return rs
}

// peersMatch: no peers means any endpoint; a podSelector alone means pods
// of the policy's namespace; with a namespaceSelector, pods of the
// namespaces it selects. Selectors never match an address that is no pod.
func (n policyNet) peersMatch(peers []policyPeer, e endpoint) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		switch {
		case e.ns == "" || (p.PodSelector == nil && p.NamespaceSelector == nil):
		case p.NamespaceSelector == nil:
			if e.ns == n.ns && p.PodSelector.matches(e.labels) {
				return true
			}
		case p.NamespaceSelector.matches(e.nsLabels) && (p.PodSelector == nil || p.PodSelector.matches(e.labels)):
			return true
		}
	}
	return false
}

func portsMatch(ports []policyPort, port int32, proto string) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if protocol(p.Protocol) == proto && (p.Port == nil || (!p.Port.IsStr && p.Port.Int == port)) {
			return true
		}
	}
	return false
}

// roleOf names what a workload's first container runs: etcd, coordinator,
// worker, frontend (switchyard serve), client (any other switchyard
// command), or "" (anything else, e.g. the model loader).
func roleOf(w *workload) string {
	c := w.template.Spec.Containers[0]
	switch binaryOf(c) {
	case binEtcd:
		return "etcd"
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

// TestNetworkPolicyShape: the namespace is default-deny both ways, and no
// rule trusts a label any pod can set: every peer names its namespace by
// kubernetes.io/metadata.name (the API server's label) together with a pod
// selector, peers in this namespace name kustomization.yaml's namespace
// (kustomize does not rewrite label values), and a rule without peers is
// limited to named ports.
func TestNetworkPolicyShape(t *testing.T) {
	m := load(t)
	defaultDeny := false
	for _, p := range objectsOf[*networkPolicy](m) {
		o := m.object(p)
		s := p.Spec
		if len(s.PolicyTypes) == 0 {
			t.Errorf("%s: list policyTypes explicitly", o)
		}
		if s.PodSelector.empty() && slices.Contains(s.PolicyTypes, "Ingress") && slices.Contains(s.PolicyTypes, "Egress") && len(s.Ingress) == 0 && len(s.Egress) == 0 {
			defaultDeny = true
		}
		if !s.PodSelector.empty() && len(m.selectedAll(s.PodSelector)) == 0 {
			t.Errorf("%s: podSelector matches no workload", o)
		}
		for _, dir := range []string{"Ingress", "Egress"} {
			if !slices.Contains(s.PolicyTypes, dir) && len(rulesOf(p, dir)) > 0 {
				t.Errorf("%s: %s rules, but policyTypes %v leaves them out", o, dir, s.PolicyTypes)
			}
			for i, r := range rulesOf(p, dir) {
				where := fmt.Sprintf("%s: %s rule %d", o, dir, i)
				if len(r.peers) == 0 && len(r.ports) == 0 {
					t.Errorf("%s: allows everything; name peers or ports", where)
				}
				for _, pp := range r.ports {
					if pp.Port == nil || pp.Port.IsStr || pp.Port.Int == 0 {
						t.Errorf("%s: want port numbers", where)
					}
				}
				for _, peer := range r.peers {
					ns := peer.NamespaceSelector
					if ns == nil || len(ns.MatchExpressions) > 0 || len(ns.MatchLabels) != 1 || ns.MatchLabels[metadataName] == "" {
						t.Errorf("%s: peer %+v: want namespaceSelector.matchLabels with %s alone (other namespace labels can be set by the namespace's owner)", where, peer, metadataName)
						continue
					}
					if peer.PodSelector == nil || peer.PodSelector.empty() {
						t.Errorf("%s: peer %+v: want a podSelector too (not every pod of namespace %s)", where, peer, ns.MatchLabels[metadataName])
						continue
					}
					ours := len(m.selectedAll(*peer.PodSelector)) > 0
					if ours && ns.MatchLabels[metadataName] != m.kust.Namespace {
						t.Errorf("%s: peer selects pods of this folder in namespace %q; kustomization.yaml puts them in %q", where, ns.MatchLabels[metadataName], m.kust.Namespace)
					}
					if !ours && ns.MatchLabels[metadataName] == m.kust.Namespace {
						t.Errorf("%s: peer podSelector %v matches no workload here", where, *peer.PodSelector)
					}
				}
			}
		}
	}
	if !defaultDeny {
		t.Error("no default-deny NetworkPolicy (podSelector: {}, policyTypes: [Ingress, Egress], no rules)")
	}
}

// selectedAll returns every workload (examples included) whose pods sel
// matches.
func (m *manifests) selectedAll(sel labelSelector) []*workload {
	var out []*workload
	for _, w := range m.workloads {
		if sel.matches(w.template.Metadata.Labels) {
			out = append(out, w)
		}
	}
	return out
}

// TestNetworkPolicies: the traffic the cluster needs gets through (etcd
// clients to etcd's client port, members to each other, coordinators and
// workers to each other on every port since job ranks listen on ports the
// kernel picks, front ends to the workers' gRPC port, callers to the API,
// Prometheus to etcd's metrics, DNS), and what it does not need is
// blocked, above all a pod in another namespace that copies our labels
// (and its namespace's labels but for the name).
func TestNetworkPolicies(t *testing.T) {
	m := load(t)
	net := policyNet{ns: m.kust.Namespace, policies: objectsOf[*networkPolicy](m)}
	byRole := map[string]*workload{}
	for _, w := range m.workloads {
		if r := roleOf(w); r != "" && r != "client" && w.kustomized {
			if byRole[r] != nil {
				t.Fatalf("two %s workloads: %s, %s", r, byRole[r], w)
			}
			byRole[r] = w
		}
	}
	for _, r := range []string{"etcd", "coordinator", "worker", "frontend"} {
		if byRole[r] == nil {
			t.Fatalf("no %s workload in the kustomization", r)
		}
	}
	port := func(w *workload, name string) int32 {
		p, ok := findPort(w.template.Spec.Containers, intOrString{Str: name, IsStr: true}, "TCP")
		if !ok {
			t.Fatalf("%s: no TCP container port named %s", w, name)
		}
		return p.ContainerPort
	}
	pod := func(w *workload) endpoint { return m.podOf(w) }
	etcd, coord, worker, fe := byRole["etcd"], byRole["coordinator"], byRole["worker"], byRole["frontend"]
	etcdClient, etcdPeer, etcdMetrics := port(etcd, "client"), port(etcd, "peer"), port(etcd, "metrics")
	grpc, api, gossip := port(worker, "grpc"), port(fe, "http"), port(coord, "gossip-tcp")

	outside := func(what, ns string, nsExtra, labels map[string]string) endpoint {
		return endpoint{what: what, ns: ns, nsLabels: namespaceLabels(ns, nsExtra), labels: labels}
	}
	kubeDNS := outside("kube-dns", "kube-system", nil, map[string]string{"k8s-app": "kube-dns"})
	nodeLocalDNS := endpoint{what: "NodeLocal DNSCache 169.254.20.10"}
	prometheus := outside("Prometheus", "monitoring", nil, map[string]string{"app.kubernetes.io/name": "prometheus"})
	caller := outside("an API caller (ingress controller)", "ingress-nginx", nil, map[string]string{"app.kubernetes.io/name": "ingress-nginx"})
	metadataService := endpoint{what: "the cloud metadata service 169.254.169.254"}
	// A pod in a namespace someone else owns, with our namespace's labels
	// (all but the name, which the API server sets) and a worker's labels.
	ourNS := m.ourNamespaceLabels()
	delete(ourNS, metadataName)
	impostor := outside("a pod elsewhere with a worker's labels", "elsewhere", ourNS, worker.template.Metadata.Labels)
	unlabelled := endpoint{what: "a pod of this namespace labelled part-of: switchyard only", ns: m.kust.Namespace, nsLabels: m.ourNamespaceLabels(),
		labels: map[string]string{"app.kubernetes.io/part-of": "switchyard"}}
	otherMonitoring := outside("a pod in monitoring that is not Prometheus", "monitoring", nil, map[string]string{"app.kubernetes.io/name": "grafana"})

	type flow struct {
		from, to endpoint
		port     int32
		proto    string
	}
	var need []flow
	for _, w := range m.workloads {
		for _, c := range w.template.Spec.Containers {
			if _, ok := flagValue(c.Args, "etcd"); ok {
				need = append(need, flow{pod(w), pod(etcd), etcdClient, "TCP"})
			}
		}
		if r := roleOf(w); r != "" {
			for _, dns := range []endpoint{kubeDNS, nodeLocalDNS} {
				need = append(need, flow{pod(w), dns, 53, "UDP"}, flow{pod(w), dns, 53, "TCP"})
			}
		}
	}
	need = append(need,
		flow{pod(etcd), pod(etcd), etcdPeer, "TCP"},
		flow{pod(fe), pod(worker), grpc, "TCP"},
		flow{caller, pod(fe), api, "TCP"},
		flow{prometheus, pod(etcd), etcdMetrics, "TCP"},
	)
	for _, a := range []*workload{coord, worker} {
		for _, b := range []*workload{coord, worker} {
			need = append(need, flow{pod(a), pod(b), 40123, "TCP"}) // a job rank's kernel-picked port
			for _, c := range b.template.Spec.Containers {
				for _, p := range c.Ports {
					need = append(need, flow{pod(a), pod(b), p.ContainerPort, protocol(p.Protocol)})
				}
			}
		}
	}
	for _, f := range need {
		if !net.admits(f.from, f.to, f.port, f.proto) {
			t.Errorf("network policies block %s -> %s port %d/%s", f.from, f.to, f.port, f.proto)
		}
	}

	deny := []flow{
		{impostor, pod(etcd), etcdClient, "TCP"},
		{impostor, pod(worker), grpc, "TCP"},
		{impostor, pod(coord), gossip, "TCP"},
		{unlabelled, pod(etcd), etcdClient, "TCP"},
		{unlabelled, pod(worker), grpc, "TCP"},
		{caller, pod(etcd), etcdClient, "TCP"},
		{caller, pod(worker), grpc, "TCP"},
		{otherMonitoring, pod(etcd), etcdMetrics, "TCP"},
		{pod(worker), pod(etcd), etcdPeer, "TCP"},
		{pod(fe), pod(etcd), etcdPeer, "TCP"},
		{pod(fe), pod(coord), gossip, "TCP"},
		{pod(fe), pod(worker), 40123, "TCP"},
		{pod(worker), pod(fe), api, "TCP"},
		{pod(worker), metadataService, 80, "TCP"},
		{pod(fe), metadataService, 80, "TCP"},
		{pod(etcd), metadataService, 80, "TCP"},
	}
	for _, w := range m.workloads {
		if roleOf(w) == "" { // e.g. the model loader: no network at all
			deny = append(deny, flow{pod(w), pod(etcd), etcdClient, "TCP"}, flow{pod(w), kubeDNS, 53, "UDP"}, flow{pod(w), metadataService, 80, "TCP"})
		}
	}
	for _, f := range deny {
		if net.admits(f.from, f.to, f.port, f.proto) {
			t.Errorf("network policies let %s -> %s port %d/%s through", f.from, f.to, f.port, f.proto)
		}
	}
}

// TestPolicyNet checks the simulator on the rules it must get right.
func TestPolicyNet(t *testing.T) {
	sel := func(kv ...string) *labelSelector {
		s := &labelSelector{MatchLabels: map[string]string{}}
		for i := 0; i < len(kv); i += 2 {
			s.MatchLabels[kv[i]] = kv[i+1]
		}
		return s
	}
	web := map[string]string{"app": "web"}
	here := endpoint{what: "web here", ns: "a", nsLabels: namespaceLabels("a", nil), labels: web}
	there := endpoint{what: "web there", ns: "b", nsLabels: namespaceLabels("b", nil), labels: web}
	db := endpoint{what: "db", ns: "a", nsLabels: namespaceLabels("a", nil), labels: map[string]string{"app": "db"}}
	ingressFrom := func(peers ...policyPeer) *networkPolicy {
		p := &networkPolicy{}
		p.Spec.PodSelector = *sel("app", "db")
		p.Spec.PolicyTypes = []string{"Ingress"}
		p.Spec.Ingress = append(p.Spec.Ingress, struct {
			From  []policyPeer `json:"from,omitempty"`
			Ports []policyPort `json:"ports,omitempty"`
		}{From: peers})
		return p
	}
	for _, c := range []struct {
		name     string
		p        *networkPolicy
		from     endpoint
		admitted bool
	}{
		{"podSelector alone: same namespace", ingressFrom(policyPeer{PodSelector: sel("app", "web")}), here, true},
		{"podSelector alone: not another namespace", ingressFrom(policyPeer{PodSelector: sel("app", "web")}), there, false},
		{"both: the named namespace", ingressFrom(policyPeer{PodSelector: sel("app", "web"), NamespaceSelector: sel(metadataName, "b")}), there, true},
		{"both: not another one", ingressFrom(policyPeer{PodSelector: sel("app", "web"), NamespaceSelector: sel(metadataName, "b")}), here, false},
		{"empty namespaceSelector: every namespace", ingressFrom(policyPeer{PodSelector: sel("app", "web"), NamespaceSelector: sel()}), there, true},
		{"no peers: anyone", ingressFrom(), there, true},
	} {
		n := policyNet{ns: "a", policies: []*networkPolicy{c.p}}
		if got := n.admits(c.from, db, 5432, "TCP"); got != c.admitted {
			t.Errorf("%s: admitted %v, want %v", c.name, got, c.admitted)
		}
		// Egress of the source is not restricted here; db's own egress is
		// not isolated by an Ingress-only policy.
		if !n.admits(db, c.from, 80, "TCP") {
			t.Errorf("%s: an Ingress-only policy blocked the selected pod's egress", c.name)
		}
	}
}
