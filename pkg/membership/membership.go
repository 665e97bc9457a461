// Package membership runs SWIM gossip (hashicorp/memberlist) among a
// cluster's workers (and optionally coordinators) for fast failure hints.
//
// Hints, not authority: memberlist notices a dead peer in about a second or
// two on a LAN, and may be wrong (a paused process, a lossy link). The
// authority on who is in the cluster is etcd: a worker is a member exactly
// while its lease-bound key exists (pkg/registry). Use events from this
// package only to re-check etcd earlier (the coordinator re-reads the
// workers on a failure hint) or to stop sending to a peer that is probably
// gone; never to remove a worker from the placement.
//
// Peers to join come from the registry: WorkerInfo.GossipAddr of the
// registered workers.
package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/switchyard/switchyard/pkg/cluster"
)

// Meta is the node metadata gossiped with each member (memberlist limits it
// to 512 bytes of JSON).
type Meta struct {
	Worker   cluster.WorkerID `json:"worker"`
	Addr     string           `json:"addr"`     // gRPC host:port
	Protocol int              `json:"protocol"` // cluster.ProtocolVersion
	Role     string           `json:"role,omitempty"`
	// Leaving is set by Node.Leave just before the leave message, so that
	// peers can tell a graceful leave from a failure (memberlist v0.7.0
	// does not expose the left/dead state to event delegates).
	Leaving bool `json:"leaving,omitempty"`
}

// Config configures a gossip node. Start from DefaultConfig (LAN timing) or
// LocalConfig (loopback, fast) and override fields.
type Config struct {
	// Name is the node name, unique in the cluster: the worker ID (or a
	// coordinator name).
	Name string
	// Meta is gossiped to every member.
	Meta Meta
	// BindAddr and BindPort are where gossip listens (UDP and TCP). Port 0
	// picks a free port; Node.Addr reports the real one.
	BindAddr string
	BindPort int
	// AdvertiseAddr is the address peers use to reach this node; empty
	// means BindAddr, or a private IP of this host when BindAddr is 0.0.0.0.
	AdvertiseAddr string
	// ProbeInterval is how often a random member is probed; ProbeTimeout
	// how long a direct probe waits for an ack before indirect probes.
	ProbeInterval, ProbeTimeout time.Duration
	// SuspicionMult scales how long a suspected node has to refute before
	// it is declared dead: SuspicionMult x log10(N) x ProbeInterval (at
	// least one ProbeInterval); confirmations from peers shorten it.
	SuspicionMult int
	// GossipInterval is how often state changes are pushed to peers.
	GossipInterval time.Duration
	// PushPullInterval is how often full state is exchanged with one member
	// (anti-entropy); 0 disables it.
	PushPullInterval time.Duration
	// TCPTimeout bounds a TCP exchange (join, push-pull, fallback probe).
	TCPTimeout time.Duration
	// SecretKey, when set, encrypts and authenticates every gossip message
	// (memberlist's AES-GCM keyring; 16, 24 or 32 bytes): messages without
	// it, or with another key, are dropped, in both directions. Secured
	// clusters share one key through etcd (registry.GossipKey). Nil:
	// plaintext gossip.
	SecretKey []byte
	// Logger receives memberlist's log lines; nil discards them.
	Logger *log.Logger
}

// DefaultConfig is memberlist's DefaultLANConfig: gossip on 0.0.0.0:7946,
// a probe every second with a 500 ms timeout, suspicion 4 x log10(N)
// probe intervals (a dead node is declared in ~1-5 s), state pushed every
// 200 ms, full sync every 30 s.
func DefaultConfig(name string) Config {
	lan := memberlist.DefaultLANConfig()
	return Config{
		Name:             name,
		BindAddr:         "0.0.0.0",
		BindPort:         7946,
		ProbeInterval:    lan.ProbeInterval,    // 1 s
		ProbeTimeout:     lan.ProbeTimeout,     // 500 ms
		SuspicionMult:    lan.SuspicionMult,    // 4
		GossipInterval:   lan.GossipInterval,   // 200 ms
		PushPullInterval: lan.PushPullInterval, // 30 s
		TCPTimeout:       lan.TCPTimeout,       // 10 s
	}
}

// LocalConfig is for nodes on one host (tests, local clusters): loopback,
// a free port, and timing ~10x faster than LAN, so a killed node is
// declared failed within about a second.
func LocalConfig(name string) Config {
	c := DefaultConfig(name)
	c.BindAddr = "127.0.0.1"
	c.BindPort = 0
	c.ProbeInterval = 100 * time.Millisecond
	c.ProbeTimeout = 50 * time.Millisecond
	c.SuspicionMult = 3
	c.GossipInterval = 20 * time.Millisecond
	c.PushPullInterval = 5 * time.Second
	c.TCPTimeout = time.Second
	return c
}

// EventKind says what happened to a member.
type EventKind int

const (
	Join   EventKind = iota // a member appeared
	Leave                   // a member left gracefully (Node.Leave)
	Failed                  // a member stopped answering probes: declared dead
	Update                  // a member's metadata changed
)

func (k EventKind) String() string {
	switch k {
	case Join:
		return "join"
	case Leave:
		return "leave"
	case Failed:
		return "failed"
	case Update:
		return "update"
	}
	return "event(" + strconv.Itoa(int(k)) + ")"
}

// Member is a node as gossip sees it.
type Member struct {
	Name string
	Addr string // gossip host:port
	Meta Meta   // zero if the member's metadata did not decode
}

// Event is one membership change.
type Event struct {
	Kind   EventKind
	Member Member
}

// Node is a running gossip member. Its methods are safe for concurrent use.
type Node struct {
	ml     *memberlist.Memberlist
	name   string
	addr   string // advertised gossip host:port, fixed at Start
	events chan Event

	mu      sync.Mutex
	meta    []byte
	members map[string]Member // live members, kept from events (see Members)
	queue   []Event           // events not yet taken by the reader
	wake    chan struct{}
	closed  bool
	stopped chan struct{} // closed when the forwarder exits
	stop    chan struct{}
}

// Start binds the gossip sockets and starts the node alone; call Join to
// meet peers.
func Start(cfg Config) (*Node, error) {
	var errs []error
	if cfg.Name == "" {
		errs = append(errs, errors.New("empty node name"))
	}
	if cfg.ProbeInterval <= 0 || cfg.ProbeTimeout <= 0 || cfg.GossipInterval <= 0 || cfg.TCPTimeout <= 0 || cfg.SuspicionMult <= 0 {
		errs = append(errs, fmt.Errorf("ProbeInterval %v, ProbeTimeout %v, GossipInterval %v, TCPTimeout %v, SuspicionMult %d: all must be > 0 (start from DefaultConfig or LocalConfig)",
			cfg.ProbeInterval, cfg.ProbeTimeout, cfg.GossipInterval, cfg.TCPTimeout, cfg.SuspicionMult))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	meta, err := json.Marshal(cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("membership: node %s meta: %w", cfg.Name, err)
	}
	if len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("membership: node %s meta is %d bytes, limit %d", cfg.Name, len(meta), memberlist.MetaMaxSize)
	}
	n := &Node{
		meta:    meta,
		members: map[string]Member{},
		events:  make(chan Event),
		wake:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
		stop:    make(chan struct{}),
	}
	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Name
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	mc.AdvertisePort = cfg.BindPort
	if cfg.AdvertiseAddr != "" {
		mc.AdvertiseAddr = cfg.AdvertiseAddr
	}
	mc.ProbeInterval = cfg.ProbeInterval
	mc.ProbeTimeout = cfg.ProbeTimeout
	mc.SuspicionMult = cfg.SuspicionMult
	mc.GossipInterval = cfg.GossipInterval
	mc.PushPullInterval = cfg.PushPullInterval
	mc.TCPTimeout = cfg.TCPTimeout
	if len(cfg.SecretKey) > 0 {
		mc.SecretKey = cfg.SecretKey
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	mc.Delegate = (*delegate)(n)
	mc.Events = (*eventDelegate)(n)
	if cfg.Logger != nil {
		mc.Logger = cfg.Logger
	} else {
		mc.Logger = log.New(io.Discard, "", 0)
	}
	go n.forward()
	ml, err := memberlist.Create(mc)
	if err != nil {
		n.closeEvents()
		return nil, fmt.Errorf("membership: start node %s on %s:%d: %w", cfg.Name, cfg.BindAddr, cfg.BindPort, err)
	}
	n.ml = ml
	ln := ml.LocalNode() // read once, before any peer can update it
	n.name = ln.Name
	n.addr = net.JoinHostPort(ln.Addr.String(), strconv.Itoa(int(ln.Port)))
	return n, nil
}

// Addr is this node's gossip address (advertised host and bound port), the
// value to publish as WorkerInfo.GossipAddr.
func (n *Node) Addr() string { return n.addr }

// Join contacts peers (gossip host:port) one by one until ctx ends, and
// returns how many answered. Each contact is bounded by Config.TCPTimeout.
// It fails only if peers were given and none answered.
func (n *Node) Join(ctx context.Context, peers []string) (int, error) {
	ok := 0
	var errs []error
	for _, p := range peers {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		if p == n.Addr() {
			continue
		}
		if _, err := n.ml.Join([]string{p}); err != nil {
			errs = append(errs, fmt.Errorf("join %s: %w", p, err))
			continue
		}
		ok++
	}
	if ok == 0 && len(errs) > 0 {
		return 0, fmt.Errorf("membership: node %s: %w", n.name, errors.Join(errs...))
	}
	return ok, nil
}

// Members lists the live members (this node included), as gossip sees
// them now, sorted by name. (It is kept from the event callbacks, which
// memberlist calls under its node lock: memberlist's own Members returns
// nodes it keeps mutating, a data race for the reader.)
func (n *Node) Members() []Member {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]Member, 0, len(n.members))
	for _, m := range n.members {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Events delivers membership changes in order. The channel never blocks
// gossip: events queue until read (read them, or they accumulate). It is
// closed by Shutdown.
func (n *Node) Events() <-chan Event { return n.events }

// SetMeta replaces this node's metadata and gossips it (peers see an
// Update event), waiting up to timeout for the push.
func (n *Node) SetMeta(m Meta, timeout time.Duration) error {
	b, err := json.Marshal(m)
	if err != nil || len(b) > memberlist.MetaMaxSize {
		return fmt.Errorf("membership: meta of %d bytes (limit %d): %v", len(b), memberlist.MetaMaxSize, err)
	}
	n.mu.Lock()
	n.meta = b
	n.mu.Unlock()
	if err := n.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("membership: update meta: %w", err)
	}
	return nil
}

// Leave announces a graceful departure to the peers (first as metadata,
// then memberlist's leave message) and waits up to timeout for each to
// spread; call Shutdown afterwards. Peers get a Leave event, not Failed.
func (n *Node) Leave(timeout time.Duration) error {
	n.mu.Lock()
	var m Meta
	_ = json.Unmarshal(n.meta, &m)
	n.mu.Unlock()
	m.Leaving = true
	if err := n.SetMeta(m, timeout); err != nil {
		return err
	}
	if err := n.ml.Leave(timeout); err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	return nil
}

// Shutdown stops gossip at once, without telling peers (they will declare
// this node failed), and closes the Events channel. Safe to call twice.
func (n *Node) Shutdown() error {
	err := n.ml.Shutdown()
	n.closeEvents()
	if err != nil {
		return fmt.Errorf("membership: shutdown: %w", err)
	}
	return nil
}

func (n *Node) closeEvents() {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		close(n.stop)
	}
	n.mu.Unlock()
	<-n.stopped
}

func member(nd *memberlist.Node) Member {
	m := Member{Name: nd.Name, Addr: nd.Address()}
	_ = json.Unmarshal(nd.Meta, &m.Meta)
	return m
}

// push records an event in the member map and queues it; called by
// memberlist's event delegate, which must not block.
func (n *Node) push(ev Event) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch ev.Kind {
	case Join, Update:
		n.members[ev.Member.Name] = ev.Member
	case Leave, Failed:
		delete(n.members, ev.Member.Name)
	}
	if n.closed {
		return
	}
	n.queue = append(n.queue, ev)
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// forward moves queued events to the Events channel until closeEvents.
func (n *Node) forward() {
	defer close(n.stopped)
	defer close(n.events)
	for {
		n.mu.Lock()
		var ev *Event
		if len(n.queue) > 0 {
			e := n.queue[0]
			n.queue = n.queue[1:]
			ev = &e
		}
		n.mu.Unlock()
		if ev == nil {
			select {
			case <-n.wake:
				continue
			case <-n.stop:
				return
			}
		}
		select {
		case n.events <- *ev:
		case <-n.stop:
			return
		}
	}
}

// delegate serves this node's metadata; Switchyard sends no user messages
// over gossip.
type delegate Node

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

// eventDelegate turns memberlist callbacks into queued Events.
type eventDelegate Node

func (d *eventDelegate) NotifyJoin(nd *memberlist.Node) {
	(*Node)(d).push(Event{Kind: Join, Member: member(nd)})
}

func (d *eventDelegate) NotifyLeave(nd *memberlist.Node) {
	m := member(nd)
	kind := Failed
	if m.Meta.Leaving {
		kind = Leave
	}
	(*Node)(d).push(Event{Kind: kind, Member: m})
}

// NotifyUpdate reports metadata changes, except the Leaving mark (the
// Leave event follows).
func (d *eventDelegate) NotifyUpdate(nd *memberlist.Node) {
	m := member(nd)
	if m.Meta.Leaving {
		(*Node)(d).mu.Lock()
		(*Node)(d).members[m.Name] = m
		(*Node)(d).mu.Unlock()
		return
	}
	(*Node)(d).push(Event{Kind: Update, Member: m})
}
