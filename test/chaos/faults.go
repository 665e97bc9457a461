package main

import (
	"context"
	"fmt"
	"math/rand"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// fault is one injected fault and what was measured about it.
type fault struct {
	n       int
	kind    string // one of kinds
	target  string // process name or host
	host    int
	proc    *proc
	at      time.Time
	detect  time.Duration // -1: nothing observed
	recover time.Duration // -1: not recovered within the bound
	outcome string
}

// kinds of fault. isolate-etcd-leader is a link-down of the host of etcd's
// raft leader (leadership is first moved off h0, whose link stays up).
var kinds = []string{"kill-worker", "stop-worker", "kill-leader", "restart-etcd", "link-down", "throttle", "isolate-etcd-leader"}

// Hold times of the faults that are undone.
const (
	restartDelay = 1 * time.Second // a supervisor restarts a killed process after this
	stopHold     = 4 * time.Second // SIGSTOP .. SIGCONT
	linkHold     = 6 * time.Second // link down .. up (longer than the leader's eviction of a silent worker, ~2 s)
	throttleHold = 5 * time.Second // 1% of the rate
)

// faultMix is the fault kinds drawn from and the hosts link faults hit
// (--kinds, --hosts; empty: every kind, hosts h1..h5).
type faultMix struct {
	kinds []string
	hosts []int
}

// parseMix reads --kinds and --hosts.
func parseMix(kindList, hostList string) (faultMix, error) {
	m := faultMix{kinds: kinds, hosts: []int{1, 2, 3, 4, 5}}
	if kindList != "" {
		m.kinds = nil
		for _, k := range strings.Split(kindList, ",") {
			if !slices.Contains(kinds, k) {
				return m, fmt.Errorf("--kinds: unknown fault kind %q (known: %s)", k, strings.Join(kinds, ","))
			}
			m.kinds = append(m.kinds, k)
		}
	}
	if hostList != "" {
		m.hosts = nil
		for _, h := range strings.Split(hostList, ",") {
			n, err := strconv.Atoi(strings.TrimPrefix(h, "h"))
			if err != nil || n < 1 || n > 5 {
				return m, fmt.Errorf("--hosts: %q is not a host 1..5 (h0 holds the driver)", h)
			}
			m.hosts = append(m.hosts, n)
		}
	}
	return m, nil
}

func (e *env) pickFault(rng *rand.Rand, o *obs, mix faultMix) *fault {
	f := &fault{kind: mix.kinds[rng.Intn(len(mix.kinds))], detect: -1, recover: -1}
	wnames := []string{"w2", "w3", "w4", "w5"}
	switch f.kind {
	case "kill-worker", "stop-worker":
		f.target = wnames[rng.Intn(len(wnames))]
		f.proc, f.host = e.workers[f.target], e.hostOf[f.target]
	case "kill-leader":
		if c, ok := e.coords[o.leader]; ok {
			f.target, f.proc, f.host = o.leader, c, e.hostOf[o.leader]
		} else { // no leader known: kill a worker instead
			f.kind = "kill-worker"
			f.target = wnames[rng.Intn(len(wnames))]
			f.proc, f.host = e.workers[f.target], e.hostOf[f.target]
		}
	case "restart-etcd":
		f.target = fmt.Sprintf("e%d", rng.Intn(etcdMembers))
		f.proc, f.host = e.etcds[f.target], e.hostOf[f.target]
	case "isolate-etcd-leader":
		h, err := e.etcdLeaderOff0(rng)
		if err != nil {
			e.logf("isolate-etcd-leader: %v: a link-down instead", err)
			f.kind = "link-down"
			return e.linkFault(f, rng, mix)
		}
		f.host, f.target = h, fmt.Sprintf("h%d(e%d)", h, h)
	case "link-down", "throttle":
		return e.linkFault(f, rng, mix)
	}
	return f
}

// linkFault picks the host whose link f (link-down, throttle) strikes.
func (e *env) linkFault(f *fault, rng *rand.Rand, mix faultMix) *fault {
	f.host = mix.hosts[rng.Intn(len(mix.hosts))] // never h0: etcd, the front end and the driver live there
	name := "c2"
	if f.host >= 2 {
		name = fmt.Sprintf("w%d", f.host)
	}
	f.target = fmt.Sprintf("h%d(%s)", f.host, name)
	return f
}

// etcdLeaderOff0 returns the host of etcd's raft leader, first moving the
// leadership from e0 (on h0, which is never cut off) to e1 or e2.
func (e *env) etcdLeaderOff0(rng *rand.Rand) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ids := make([]uint64, len(e.etcdURLs))
	var leader uint64
	for h, url := range e.etcdURLs {
		st, err := e.cli.Status(ctx, url)
		if err != nil {
			return 0, fmt.Errorf("status of e%d: %w", h, err)
		}
		ids[h], leader = st.Header.MemberId, st.Leader
	}
	lh := slices.Index(ids, leader)
	if lh < 0 {
		return 0, fmt.Errorf("leader %x is none of the members", leader)
	}
	if lh != 0 {
		return lh, nil
	}
	to := 1 + rng.Intn(len(ids)-1)
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.etcdURLs[:1], DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	if _, err := cli.MoveLeader(ctx, ids[to]); err != nil {
		return 0, fmt.Errorf("move leadership from e0 to e%d: %w", to, err)
	}
	return to, nil
}

func (e *env) sh(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// shape sets both directions of host h's link to rate (as cluster.sh does:
// burst max(rate/250 bytes, 64 KiB); uplink queue 200 ms, downlink 20 ms).
func (e *env) shape(h int, bps int64) error {
	burst := max(bps/8/250, 65536)
	rate := fmt.Sprintf("%dbit", bps)
	if err := e.sh("ip", "netns", "exec", e.ns(h), "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
		"rate", rate, "burst", fmt.Sprint(burst), "latency", "200ms"); err != nil {
		return err
	}
	return e.sh("ip", "netns", "exec", e.net+"-br", "tc", "qdisc", "replace", "dev", fmt.Sprintf("v%d", h), "root", "tbf",
		"rate", rate, "burst", fmt.Sprint(burst), "latency", "20ms")
}

// act injects f and undoes it (restart, SIGCONT, link up, rate restored);
// it returns when the fault is undone.
func (e *env) act(f *fault) error {
	switch f.kind {
	case "kill-worker", "kill-leader":
		if err := f.proc.kill(); err != nil {
			return err
		}
		time.Sleep(restartDelay)
		return e.sup.start(f.proc)
	case "restart-etcd":
		// SIGKILL one member; a supervisor starts it again on its data
		// directory, and the fault is undone once it answers again.
		if err := f.proc.kill(); err != nil {
			return err
		}
		time.Sleep(restartDelay)
		if err := e.sup.start(f.proc); err != nil {
			return err
		}
		url := e.etcdURLs[f.host]
		return waitFor(60*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := e.cli.Status(ctx, url)
			return err == nil
		})
	case "stop-worker":
		if err := f.proc.signal(syscall.SIGSTOP, false); err != nil {
			return err
		}
		time.Sleep(stopHold)
		return f.proc.signal(syscall.SIGCONT, false)
	case "link-down", "isolate-etcd-leader":
		dev := fmt.Sprintf("v%d", f.host)
		if err := e.sh("ip", "-n", e.net+"-br", "link", "set", "dev", dev, "down"); err != nil {
			return err
		}
		time.Sleep(linkHold)
		return e.sh("ip", "-n", e.net+"-br", "link", "set", "dev", dev, "up")
	case "throttle":
		if err := e.shape(f.host, 10_000_000); err != nil { // 1% of 1 Gbit/s
			return err
		}
		time.Sleep(throttleHold)
		return e.shape(f.host, 1_000_000_000)
	}
	return fmt.Errorf("unknown fault %q", f.kind)
}

// inject runs f while watching etcd: detection is the first change from
// the state before the fault (a worker's registration/lease, the leader,
// the placement epoch, the job's attempt); recovery is the first healthy
// observation (leader, 4 workers, 2 live copies of every expert, every
// worker holding experts, the job running or done) after the fault was
// undone.
func (e *env) inject(f *fault, pol *poller, chaosStart time.Time) {
	base := pol.latest()
	ch := pol.subscribe()
	defer pol.unsubscribe(ch)
	undone := make(chan error, 1)
	f.at = time.Now()
	go func() { undone <- e.act(f) }()
	var undoneAt time.Time
	var actErr error
	seen := map[string]bool{}
	var changes []string
	note := func(s string) {
		if !seen[s] {
			seen[s] = true
			changes = append(changes, s)
		}
	}
	deadline := time.NewTimer(*flagRecovery)
	defer deadline.Stop()
	for {
		select {
		case actErr = <-undone:
			undoneAt = time.Now()
			undone = nil
			if actErr != nil {
				f.outcome = "fault action failed: " + actErr.Error()
			}
			continue
		case <-deadline.C:
			f.outcome = fmt.Sprintf("NOT RECOVERED within %v; saw: %s", *flagRecovery, strings.Join(changes, ", "))
			return
		case o := <-ch:
			if o.err != nil {
				note("etcd read error")
				continue
			}
			changed := false
			if o.leaderKey != base.leaderKey {
				note(fmt.Sprintf("new leader term %s->%s", orNone(base.leader), orNone(o.leader)))
				changed = true
			}
			if o.workerKey() != base.workerKey() {
				for id, l := range base.workers {
					if nl, ok := o.workers[id]; !ok {
						note(id + " lease gone")
					} else if nl != l {
						note(id + " re-registered")
					}
				}
				changed = true
			}
			if o.epoch != base.epoch {
				note("placement epoch changed")
				changed = true
			}
			if !o.replicated {
				note("under-replicated")
			}
			if o.jobID == base.jobID && o.jobAttempt != base.jobAttempt && base.jobState != "" && !base.jobState.Terminal() {
				note(fmt.Sprintf("job attempt %d->%d", base.jobAttempt, o.jobAttempt))
				changed = true
			}
			if changed && f.detect < 0 {
				f.detect = o.t.Sub(f.at)
			}
			if !undoneAt.IsZero() && o.t.After(undoneAt) && o.healthy() && f.backFrom(base, o) {
				f.recover = o.t.Sub(f.at)
				// serving failures during this fault
				nf := 0
				for _, r := range e.ld.snapshot() {
					if r.err != "" && r.end.After(f.at) && r.start.Before(o.t) {
						nf++
					}
				}
				if f.outcome == "" {
					if len(changes) == 0 {
						f.outcome = "masked: no membership/placement/job change"
					} else {
						f.outcome = "recovered; saw " + strings.Join(changes, ", ")
					}
				}
				if nf > 0 {
					f.outcome += fmt.Sprintf("; %d requests FAILED", nf)
				}
				if o.jobState != "" {
					f.outcome += fmt.Sprintf("; job %s step %d", o.jobState, o.jobStep)
				}
				return
			}
		}
	}
}

// backFrom: a killed process is back, not just not yet noticed: a killed
// worker registered anew (a new lease), a killed leader replaced by a new
// term (a new election key).
func (f *fault) backFrom(base, o *obs) bool {
	switch f.kind {
	case "kill-worker":
		l, ok := o.workers[f.target]
		return ok && l != base.workers[f.target]
	case "kill-leader":
		return o.leaderKey != base.leaderKey
	}
	return true
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
