// Command chaos is the fault-injection driver of scripts/chaos.sh (DESIGN
// section 9). It runs inside host h0 of an emulated cluster
// (scripts/netns/cluster.sh, namespaces NAME-h0..NAME-h5 and NAME-br),
// starts and supervises every process of the cluster (ip netns exec),
// runs an uninterrupted reference training job, then a serving load and
// the same training job while it injects seeded random faults one at a
// time, measures each fault's detection and recovery time from etcd, and
// checks the invariants:
//
//	(a) no serving request fails (the faults never take both copies of an expert)
//	(b) the training job reaches Done with exactly `steps` losses
//	(c) every checkpoint the job wrote verifies its checksums and loads
//	(d) the final checkpoint equals the uninterrupted run's bit for bit
//
// It prints a table and the last line "chaos: F faults, V invariant
// violations", writes the same to --report, and exits 0 only with 0
// violations.
package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/internal/coordinator"
	"github.com/switchyard/switchyard/internal/jobs"
	"github.com/switchyard/switchyard/internal/status"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/train"
)

var (
	flagWork     = flag.String("work", "", "work directory (the workers' data root; holds in/model, in/tokenizer.json, in/opticks.txt)")
	flagBin      = flag.String("bin", "", "directory with the switchyard and coordinator binaries")
	flagNet      = flag.String("net", "chaos", "namespace prefix (SY_CLUSTER)")
	flagSubnet   = flag.String("subnet", "10.99.0", "subnet prefix (SY_SUBNET)")
	flagFaults   = flag.Int("faults", 30, "most faults to inject")
	flagSeconds  = flag.Int("seconds", 240, "seconds of fault injection (no fault starts after)")
	flagSeed     = flag.Int64("seed", 0, "fault seed (0: from the clock)")
	flagSteps    = flag.Int("steps", 40, "training steps")
	flagClients  = flag.Int("clients", 3, "concurrent serving clients")
	flagReport   = flag.String("report", "", "also write the report here")
	flagRecovery = flag.Duration("recovery-timeout", 90*time.Second, "longest wait for a fault's recovery")
	flagKinds    = flag.String("kinds", "", "comma-separated fault kinds to draw from (empty: all of "+strings.Join(kinds, ",")+")")
	flagHosts    = flag.String("hosts", "", "comma-separated hosts (1-5) where the link-down and throttle faults strike (empty: any of them)")
)

const clusterName = "chaos"

// etcdMembers is the size of the etcd cluster, one member on each of the
// hosts h0..h(etcdMembers-1): a member restart or a member's link going
// down leaves a quorum.
const etcdMembers = 3

type env struct {
	work, bin, net, subnet string
	etcdURL                string           // every member's client URL, comma-separated (--etcd)
	etcdURLs               []string         // the same, one each
	etcds                  map[string]*proc // e0..e2
	sup                    *supervisor
	workers                map[string]*proc // w2..w5
	coords                 map[string]*proc // c1, c2
	hostOf                 map[string]int   // process name -> host index
	cli                    *clientv3.Client
	reg                    *registry.Registry
	store                  *jobs.Store
	ld                     *loader
	out                    io.Writer
}

func (e *env) ns(h int) string { return fmt.Sprintf("%s-h%d", e.net, h) }
func (e *env) ip(h int) string { return fmt.Sprintf("%s.%d", e.subnet, h+1) }

func (e *env) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "chaos: %s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: error:", err)
		fmt.Printf("chaos: 0 faults, 1 invariant violations\n")
		os.Exit(1)
	}
}

// obs is what the poller read from etcd at one moment.
type jobRun struct {
	id, out    string
	start, end time.Time
	spec       *jobs.Spec
}

type obs struct {
	t          time.Time
	err        error
	leader     string
	leaderKey  string            // the election key (its lease changes with every new term)
	workers    map[string]string // id -> lease
	epoch      uint64
	replicated bool // every expert has >= 2 copies on registered workers
	allHold    bool // every registered worker holds experts
	jobID      string
	jobState   jobs.State
	jobAttempt int
	jobStep    int
}

func (o *obs) workerKey() string {
	var ks []string
	for id, l := range o.workers {
		ks = append(ks, id+"="+l)
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}

type poller struct {
	mu    sync.Mutex
	last  *obs
	jobID string
	subs  []chan *obs
}

func (p *poller) setJob(id string) { p.mu.Lock(); p.jobID = id; p.mu.Unlock() }

func (p *poller) latest() *obs { p.mu.Lock(); defer p.mu.Unlock(); return p.last }

func (p *poller) subscribe() chan *obs {
	ch := make(chan *obs, 1024)
	p.mu.Lock()
	p.subs = append(p.subs, ch)
	p.mu.Unlock()
	return ch
}

func (p *poller) unsubscribe(ch chan *obs) {
	p.mu.Lock()
	p.subs = slices.DeleteFunc(p.subs, func(c chan *obs) bool { return c == ch })
	p.mu.Unlock()
}

func (p *poller) run(ctx context.Context, e *env) {
	for ctx.Err() == nil {
		o := observe(ctx, e, p)
		p.mu.Lock()
		p.last = o
		for _, ch := range p.subs {
			select {
			case ch <- o:
			default:
			}
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func observe(ctx context.Context, e *env, p *poller) *obs {
	o := &obs{t: time.Now(), workers: map[string]string{}}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	snap, err := status.Take(cctx, e.reg)
	if err != nil {
		o.err = err
		return o
	}
	o.leader = snap.Leader
	if _, k, err := e.reg.Leader(cctx); err == nil {
		o.leaderKey = k
	}
	for _, w := range snap.Workers {
		o.workers[string(w.ID)] = w.Lease
	}
	if len(snap.Models) > 0 && snap.Models[0].Placement != nil {
		pl := snap.Models[0].Placement
		o.epoch = uint64(pl.Epoch)
		o.replicated = true
		holds := map[string]bool{}
		for _, layer := range pl.Owners {
			for _, owners := range layer {
				live := 0
				for _, w := range owners {
					if _, ok := o.workers[string(w)]; ok {
						live++
						holds[string(w)] = true
					}
				}
				if live < 2 {
					o.replicated = false
				}
			}
		}
		o.allHold = len(o.workers) > 0
		for id := range o.workers {
			if !holds[id] {
				o.allHold = false
			}
		}
	}
	p.mu.Lock()
	id := p.jobID
	p.mu.Unlock()
	o.jobID = id
	if id != "" {
		if sp, _, err := e.store.Get(cctx, id); err == nil {
			o.jobState, o.jobAttempt = sp.State, sp.Attempt
		}
		if st, err := e.store.Status(cctx, id); err == nil {
			o.jobStep = st.Step
		}
	}
	return o
}

// healthy: a leader, all 4 workers registered, every expert on 2 live
// workers, every worker holding experts, and the job (if any) running or
// finished.
func (o *obs) healthy() bool {
	if o == nil || o.err != nil || o.leader == "" || o.leaderKey == "" || len(o.workers) != 4 || !o.replicated || !o.allHold {
		return false
	}
	switch o.jobState {
	case "", jobs.Running, jobs.Done:
		return true
	}
	return false
}

func run() error {
	e := &env{work: *flagWork, bin: *flagBin, net: *flagNet, subnet: *flagSubnet, out: os.Stdout}
	if e.work == "" || e.bin == "" {
		return fmt.Errorf("--work and --bin are required")
	}
	mix, err := parseMix(*flagKinds, *flagHosts)
	if err != nil {
		return err
	}
	seed := *flagSeed
	if seed == 0 {
		seed = time.Now().UnixNano() % 1000000
	}
	t0 := time.Now()
	e.sup = &supervisor{t0: t0}
	defer e.sup.stopAll()
	logs := filepath.Join(e.work, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	sy := filepath.Join(e.bin, "switchyard")
	model := filepath.Join(e.work, "in", "model")
	// --- control plane: a 3-member etcd (e0 on h0, e1 on h1, e2 on h2),
	// coordinators c1 (h0) and c2 (h1).
	e.etcds = map[string]*proc{}
	e.hostOf = map[string]int{}
	var initial []string
	for h := range etcdMembers {
		initial = append(initial, fmt.Sprintf("e%d=http://%s:2380", h, e.ip(h)))
		e.etcdURLs = append(e.etcdURLs, "http://"+e.ip(h)+":2379")
	}
	e.etcdURL = strings.Join(e.etcdURLs, ",")
	for h := range etcdMembers {
		name := fmt.Sprintf("e%d", h)
		m := e.sup.add(name, e.ns(h), filepath.Join(logs, name+".log"), sy, "etcd", "--name", name,
			"--listen-client-urls", e.etcdURLs[h], "--listen-peer-urls", fmt.Sprintf("http://%s:2380", e.ip(h)),
			"--initial-cluster", strings.Join(initial, ","), "--data-dir", filepath.Join(e.work, name),
			"--log-level", cmp.Or(os.Getenv("CHAOS_ETCD_LOG_LEVEL"), "error"))
		if err := e.sup.start(m); err != nil {
			return err
		}
		e.etcds[name], e.hostOf[name] = m, h
	}
	for _, m := range e.etcds { // members wait for each other's quorum
		if err := waitLog(m.log, "etcd: ready", 60*time.Second); err != nil {
			return err
		}
	}
	e.coords = map[string]*proc{}
	for i, name := range []string{"c1", "c2"} {
		c := e.sup.add(name, e.ns(i), filepath.Join(logs, name+".log"), filepath.Join(e.bin, "coordinator"),
			"--etcd", e.etcdURL, "--cluster", clusterName, "--model", model, "--replicas", "2", "--expect-workers", "4", "--name", name,
			"--session-ttl", cmp.Or(os.Getenv("CHAOS_SESSION_TTL"), coordinator.DefaultSessionTTL.String()))
		if err := e.sup.start(c); err != nil {
			return err
		}
		e.coords[name], e.hostOf[name] = c, i
	}
	// --- workers w2..w5 on h2..h5 (fixed ports: a restarted one comes back at the same address).
	e.workers = map[string]*proc{}
	for h := 2; h <= 5; h++ {
		name := fmt.Sprintf("w%d", h)
		w := e.sup.add(name, e.ns(h), filepath.Join(logs, name+".log"), sy, "worker", "--etcd", e.etcdURL, "--cluster", clusterName,
			"--id", name, "--listen", e.ip(h)+":7070", "--gossip", e.ip(h)+":7946", "--model", model,
			"--data-root", e.work, "--wait", "--job-step-timeout", "20s")
		if err := e.sup.start(w); err != nil {
			return err
		}
		e.workers[name], e.hostOf[name] = w, h
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if e.cli, err = registry.DialTLS(ctx, e.etcdURLs, nil); err != nil {
		return err
	}
	defer e.cli.Close()
	if e.reg, err = registry.New(e.cli, clusterName); err != nil {
		return err
	}
	e.store = jobs.NewStore(e.cli, clusterName)
	pol := &poller{}
	go pol.run(ctx, e)
	if err := waitFor(120*time.Second, func() bool { return pol.latest().healthy() }); err != nil {
		return fmt.Errorf("cluster not placed with 2 copies on 4 workers: %w (last %+v)", err, pol.latest())
	}
	e.logf("cluster up: leader %s, workers %s, epoch %d", pol.latest().leader, pol.latest().workerKey(), pol.latest().epoch)

	// --- front end on h0.
	url := "http://" + e.ip(0) + ":8000"
	fe := e.sup.add("frontend", e.ns(0), filepath.Join(logs, "frontend.log"), sy, "serve", "--model", model,
		"--etcd", e.etcdURL, "--cluster", clusterName, "--listen", e.ip(0)+":8000", "--served-model-name", "m")
	if err := e.sup.start(fe); err != nil {
		return err
	}
	if err := waitFor(90*time.Second, func() bool {
		r, err := http.Get(url + "/health")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	}); err != nil {
		return fmt.Errorf("front end not healthy: %w", err)
	}
	e.logf("front end healthy at %s", url)

	// --- serving load for the whole run.
	ld := &loader{url: url, clients: *flagClients}
	e.ld = ld
	lctx, lcancel := context.WithCancel(ctx)
	defer lcancel()
	var lwg sync.WaitGroup
	lwg.Add(1)
	go func() { defer lwg.Done(); ld.run(lctx) }()
	loadStart := time.Now()

	// --- reference: the same job, uninterrupted, on the same cluster.
	steps := *flagSteps
	jobCfg := func(out string) train.JobConfig {
		cfg := train.DefaultJobConfig()
		cfg.Out, cfg.Text, cfg.Tokenizer = out, "in/opticks.txt", "in/tokenizer.json"
		cfg.Preset = "dsv3-micro"
		cfg.Steps, cfg.Batch, cfg.SeqLen = steps, 4, 32
		cfg.EvalEvery, cfg.EvalMax, cfg.SaveEvery = 0, 4, 4
		cfg.Step.Schedule.Warmup, cfg.Step.Schedule.Total = 4, steps
		return cfg
	}
	refStart := time.Now()
	if err := e.store.Submit(ctx, jobs.Spec{ID: "chaos-ref", Job: jobCfg("ref"), Workers: 3, MaxAttempts: 1}); err != nil {
		return err
	}
	refSp, err := waitJob(ctx, e.store, "chaos-ref", 10*time.Minute)
	if err != nil {
		return err
	}
	if refSp.State != jobs.Done {
		return fmt.Errorf("reference job %s: %s", refSp.State, refSp.Error)
	}
	refDur := time.Since(refStart)
	e.logf("reference job done in %v (attempt %d, ranks %v)", refDur.Round(time.Second), refSp.Attempt, refSp.Assigned)
	if err := waitFor(60*time.Second, func() bool { return pol.latest().healthy() }); err != nil {
		return fmt.Errorf("cluster not healthy after the reference job: %w", err)
	}

	// --- chaos: the same job again and again (a new one as soon as the
	// last is done, out run-1, run-2, ...) while faults are injected.
	chaosStart := time.Now()
	faultsOver := make(chan struct{})
	var runs []*jobRun
	var runsMu sync.Mutex
	jobsDone := make(chan struct{})
	go func() {
		defer close(jobsDone)
		for k := 1; ; k++ {
			select {
			case <-faultsOver:
				if k > 1 {
					return
				}
			default:
			}
			jr := &jobRun{id: fmt.Sprintf("chaos-run-%d", k), out: fmt.Sprintf("run-%d", k), start: time.Now()}
			if err := e.store.Submit(ctx, jobs.Spec{ID: jr.id, Job: jobCfg(jr.out), Workers: 3, MaxAttempts: jobs.MaxAttemptsCap}); err != nil {
				jr.spec = &jobs.Spec{State: "not submitted", Error: err.Error()}
			} else {
				pol.setJob(jr.id)
				sp, err := waitJob(ctx, e.store, jr.id, 10*time.Minute)
				if err != nil && sp == nil {
					sp = &jobs.Spec{State: "unknown", Error: err.Error()}
				} else if err != nil {
					sp.Error = err.Error() + "; " + sp.Error
				}
				jr.spec = sp
			}
			jr.end = time.Now()
			runsMu.Lock()
			runs = append(runs, jr)
			runsMu.Unlock()
			if jr.spec.State != jobs.Done {
				return // it will not get better: report it
			}
		}
	}()
	e.logf("chaos: seed %d, up to %d faults in %d s", seed, *flagFaults, *flagSeconds)
	rng := rand.New(rand.NewSource(seed))
	var faults []*fault
	slot := time.Duration(*flagSeconds) * time.Second / time.Duration(max(*flagFaults, 1))
	next := time.Now().Add(3 * time.Second)
	recoveryFailed := false
	for len(faults) < *flagFaults && time.Since(chaosStart) < time.Duration(*flagSeconds)*time.Second {
		time.Sleep(time.Until(next))
		if time.Since(chaosStart) >= time.Duration(*flagSeconds)*time.Second {
			break
		}
		// One fault at a time: the previous one has recovered.
		if !pol.latest().healthy() {
			if err := waitFor(*flagRecovery, func() bool { return pol.latest().healthy() }); err != nil {
				e.logf("cluster not healthy before fault %d: stop injecting", len(faults)+1)
				recoveryFailed = true
				break
			}
		}
		f := e.pickFault(rng, pol.latest(), mix)
		f.n = len(faults) + 1
		e.inject(f, pol, chaosStart)
		faults = append(faults, f)
		e.logf("fault %d %s %s: detected %s, recovered %s: %s", f.n, f.kind, f.target, secs(f.detect), secs(f.recover), f.outcome)
		if f.recover < 0 {
			recoveryFailed = true
			break
		}
		next = f.at.Add(slot)
		if n := time.Now().Add(2 * time.Second); n.After(next) {
			next = n
		}
	}
	close(faultsOver)
	<-jobsDone
	chaosDur := time.Since(chaosStart)

	time.Sleep(2 * time.Second)
	lcancel()
	lwg.Wait()
	loadDur := time.Since(loadStart)
	e.sup.stopAll()

	// --- invariants.
	var inv []string
	violations := 0
	viol := func(ok bool, format string, args ...any) {
		tag := "ok  "
		if !ok {
			tag = "FAIL"
			violations++
		}
		inv = append(inv, tag+" "+fmt.Sprintf(format, args...))
	}
	res := ld.snapshot()
	var failed []result
	for _, r := range res {
		if r.err != "" {
			failed = append(failed, r)
		}
	}
	viol(len(failed) == 0, "(a) serving: %d requests by %d clients over %.0f s, %d failed", len(res), *flagClients, loadDur.Seconds(), len(failed))
	for i, r := range failed {
		if i == 10 {
			inv = append(inv, fmt.Sprintf("       ... %d more", len(failed)-10))
			break
		}
		inv = append(inv, fmt.Sprintf("       failed at %+.1f s (chaos time), took %.1f s: %s", r.start.Sub(chaosStart).Seconds(), r.end.Sub(r.start).Seconds(), oneLine(r.err)))
	}
	violations += max(len(failed)-1, 0) // every failed request is a violation

	refDir := filepath.Join(e.work, "ref", fmt.Sprintf("checkpoint-%07d", steps))
	refState, refErr := train.ReadTrainerState(refDir)
	var bBad, cBad, dBad []string
	nCkpt, nFiles, attempts := 0, 0, 0
	for _, jr := range runs {
		sp := jr.spec
		attempts += max(sp.Attempt-1, 0)
		finalDir := filepath.Join(e.work, jr.out, fmt.Sprintf("checkpoint-%07d", steps))
		var st *train.TrainerState
		if sp.State != jobs.Done {
			bBad = append(bBad, fmt.Sprintf("%s: %s after %d attempts: %s", jr.id, sp.State, sp.Attempt, oneLine(sp.Error)))
		} else if st, err = train.ReadTrainerState(finalDir); err != nil {
			bBad = append(bBad, jr.id+": "+oneLine(err.Error()))
		} else if st.Step != steps || len(st.Losses) != steps {
			bBad = append(bBad, fmt.Sprintf("%s: final state step %d with %d losses, want %d", jr.id, st.Step, len(st.Losses), steps))
		}
		for _, h := range sp.History {
			inv = append(inv, fmt.Sprintf("       %s attempt failed (retried): %s", jr.id, oneLine(h)))
		}
		ckpts, _ := filepath.Glob(filepath.Join(e.work, jr.out, "checkpoint-*"))
		for _, c := range ckpts {
			if strings.HasSuffix(c, ".tmp") {
				continue
			}
			nCkpt++
			if err := train.VerifyCheckpoint(c); err != nil {
				cBad = append(cBad, jr.out+"/"+filepath.Base(c)+": "+oneLine(err.Error()))
				continue
			}
			cmd := exec.Command(sy, "generate", "--model", c, "--prompt", "x", "--max-tokens", "1")
			if out, err := cmd.CombinedOutput(); err != nil {
				cBad = append(cBad, jr.out+"/"+filepath.Base(c)+": generate: "+oneLine(string(out)))
			}
		}
		if sp.State != jobs.Done {
			continue
		}
		same, files, why := compareCheckpoints(refDir, finalDir)
		nFiles = files
		lossSame := refErr == nil && st != nil && slices.Equal(refState.Losses, st.Losses)
		if !same || !lossSame {
			dBad = append(dBad, fmt.Sprintf("%s: %s; loss lists identical: %v", jr.id, why, lossSame))
		}
	}
	viol(len(runs) > 0 && len(bBad) == 0, "(b) training: %d jobs run back to back under the faults (%d failed attempts retried); %d reached Done with exactly %d losses",
		len(runs), attempts, len(runs)-len(bBad), steps)
	for _, x := range bBad {
		inv = append(inv, "       "+x)
	}
	viol(nCkpt > 0 && len(cBad) == 0, "(c) checkpoints: %d written, %d verify their checksums and load (switchyard generate)", nCkpt, nCkpt-len(cBad))
	for _, x := range cBad {
		inv = append(inv, "       "+x)
	}
	viol(len(runs) > 0 && len(dBad) == 0, "(d) bitwise: %d final checkpoints (%d model*.safetensors each) vs the uninterrupted 3-worker run: %d equal (every SHA-256 and the loss list)",
		len(runs), nFiles, len(runs)-len(dBad))
	for _, x := range dBad {
		inv = append(inv, "       "+x)
	}

	// --- report.
	var b strings.Builder
	fmt.Fprintf(&b, "chaos: %s, %s, load average %s\n", time.Now().UTC().Format(time.RFC3339), cpuModel(), loadAvg())
	fmt.Fprintf(&b, "chaos: seed %d, --faults %d --seconds %d; cluster %s-h0..h5 (%s.1-6, 1gbit tbf): etcd members e0..e2 on h0..h2, h0 c1+front end, h1 c2, h2..h5 workers w2..w5, qwen2_moe golden, --replicas 2\n",
		seed, *flagFaults, *flagSeconds, e.net, e.subnet)
	fmt.Fprintf(&b, "chaos: job dsv3-micro steps %d batch 4 seq-len 32 save-every 4 on 3 of 4 workers; reference run %.0f s; chaos phase %.0f s; %d serving clients\n",
		steps, refDur.Seconds(), chaosDur.Seconds(), *flagClients)
	fmt.Fprintf(&b, "%-3s %7s  %-19s %-8s %9s %10s  %s\n", "#", "time s", "kind", "target", "detect s", "recover s", "outcome")
	for _, f := range faults {
		fmt.Fprintf(&b, "%-3d %7.1f  %-19s %-8s %9s %10s  %s\n", f.n, f.at.Sub(chaosStart).Seconds(), f.kind, f.target, secs(f.detect), secs(f.recover), f.outcome)
	}
	fmt.Fprintln(&b, summary(faults))
	if recoveryFailed {
		viol(false, "(e) recovery: the cluster did not return to 2 live copies on 4 workers within %v", *flagRecovery)
	}
	for _, l := range inv {
		fmt.Fprintln(&b, "invariant "+l)
	}
	if len(e.sup.unexpected) > 0 {
		for _, u := range e.sup.unexpected {
			fmt.Fprintln(&b, "notice: process exited unprompted (restarted): "+u)
		}
	}
	fmt.Fprintf(&b, "chaos: %d faults, %d invariant violations\n", len(faults), violations)
	fmt.Print(b.String())
	if *flagReport != "" {
		if err := os.WriteFile(*flagReport, []byte(b.String()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
		}
	}
	if violations > 0 {
		os.Exit(1)
	}
	return nil
}

// summary is the line of detection and recovery statistics: the median
// and the largest detection time over the faults etcd showed, the same for
// recovery over every fault, and detection by kind.
func summary(faults []*fault) string {
	var det, rec []time.Duration
	byKind := map[string][]time.Duration{}
	for _, f := range faults {
		if f.detect >= 0 {
			det = append(det, f.detect)
			byKind[f.kind] = append(byKind[f.kind], f.detect)
		}
		if f.recover >= 0 {
			rec = append(rec, f.recover)
		}
	}
	med := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "-"
		}
		slices.Sort(ds)
		m := ds[len(ds)/2]
		if len(ds)%2 == 0 {
			m = (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
		}
		return fmt.Sprintf("median %.2f s, max %.2f s", m.Seconds(), ds[len(ds)-1].Seconds())
	}
	var kinds []string
	for _, k := range slices.Sorted(maps.Keys(byKind)) {
		kinds = append(kinds, fmt.Sprintf("%s %s (%d)", k, med(byKind[k]), len(byKind[k])))
	}
	return fmt.Sprintf("summary: detection (where etcd showed the fault, %d of %d) %s; recovery (%d) %s; detection by kind: %s",
		len(det), len(faults), med(det), len(rec), med(rec), strings.Join(kinds, "; "))
}

func secs(d time.Duration) string {
	if d < 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", d.Seconds())
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 240 {
		s = s[:240] + "..."
	}
	return s
}

func waitFor(d time.Duration, ok func() bool) error {
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", d)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}

func waitLog(path, what string, d time.Duration) error {
	return waitFor(d, func() bool {
		b, _ := os.ReadFile(path)
		return strings.Contains(string(b), what)
	})
}

func waitJob(ctx context.Context, s *jobs.Store, id string, d time.Duration) (*jobs.Spec, error) {
	deadline := time.Now().Add(d)
	for {
		sp, _, err := s.Get(ctx, id)
		if err == nil && sp.State.Terminal() {
			return sp, nil
		}
		if time.Now().After(deadline) {
			if sp != nil {
				return sp, fmt.Errorf("job %s still %s after %v", id, sp.State, d)
			}
			return nil, fmt.Errorf("job %s: %v after %v", id, err, d)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// compareCheckpoints compares the SHA-256 of every model*.safetensors file.
func compareCheckpoints(ref, got string) (bool, int, string) {
	rf, _ := filepath.Glob(filepath.Join(ref, "model*.safetensors"))
	gf, _ := filepath.Glob(filepath.Join(got, "model*.safetensors"))
	if len(rf) == 0 {
		return false, 0, "reference has no model*.safetensors in " + ref
	}
	names := func(fs []string) []string {
		var out []string
		for _, f := range fs {
			out = append(out, filepath.Base(f))
		}
		return out
	}
	if !slices.Equal(names(rf), names(gf)) {
		return false, len(gf), fmt.Sprintf("file sets differ: ref %d files, run %d files", len(rf), len(gf))
	}
	var diff []string
	for i := range rf {
		a, err1 := sha(rf[i])
		b, err2 := sha(gf[i])
		if err1 != nil || err2 != nil || a != b {
			diff = append(diff, filepath.Base(rf[i]))
		}
	}
	if len(diff) > 0 {
		return false, len(rf), fmt.Sprintf("%d differ (%s)", len(diff), strings.Join(diff[:min(len(diff), 5)], ", "))
	}
	return true, len(rf), "all SHA-256 equal"
}

func sha(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	n := 0
	model := "?"
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			n++
			if i := strings.Index(l, ":"); i >= 0 {
				model = strings.TrimSpace(l[i+1:])
			}
		}
	}
	return fmt.Sprintf("%d x %s", n, model)
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
