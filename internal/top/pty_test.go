package top

// The real command under a pseudo-terminal: `switchyard top --url` built
// from cmd/switchyard, reading a fixture State from an httptest server.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/creack/pty"

	"github.com/switchyard/switchyard/internal/dashboard"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// goTool is the go command of this toolchain.
func goTool(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err != nil {
		t.Skip("no go command to build cmd/switchyard with")
	}
	return p
}

// switchyardBin builds cmd/switchyard once for the package's tests.
func switchyardBin(t *testing.T) string {
	t.Helper()
	goBin := goTool(t)
	binOnce.Do(func() {
		start := time.Now()
		out, err := exec.Command(goBin, "env", "GOMOD").Output()
		if err != nil {
			binErr = fmt.Errorf("go env GOMOD: %v", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		if binDir, binErr = os.MkdirTemp("", "switchyard-top-test"); binErr != nil {
			return
		}
		p := filepath.Join(binDir, "switchyard")
		cmd := exec.Command(goBin, "build", "-o", p, "./cmd/switchyard")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/switchyard: %v\n%s", err, out)
			return
		}
		binPath = p
		fmt.Fprintf(os.Stderr, "built cmd/switchyard in %v\n", time.Since(start).Round(time.Millisecond))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// stateServer serves a State at StatePath that the test may change, or an
// error.
type stateServer struct {
	mu   sync.Mutex
	st   *dashboard.State
	fail string
	*httptest.Server
}

func newStateServer(t *testing.T, st *dashboard.State) *stateServer {
	s := &stateServer{st: st}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != StatePath {
			http.NotFound(w, r)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if s.fail != "" {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": s.fail})
			return
		}
		_ = json.NewEncoder(w).Encode(s.st)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *stateServer) update(f func(st *dashboard.State)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.st)
}

// termOut collects what the command writes to its terminal.
type termOut struct {
	mu      sync.Mutex
	buf     []byte
	changed chan struct{} // a token when buf grew
	done    chan struct{} // closed when the reads ended (the command exited)
}

func readTerm(f *os.File) *termOut {
	o := &termOut{changed: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(o.done)
		b := make([]byte, 32<<10)
		for {
			n, err := f.Read(b)
			if n > 0 {
				o.mu.Lock()
				o.buf = append(o.buf, b[:n]...)
				o.mu.Unlock()
				select {
				case o.changed <- struct{}{}:
				default:
				}
			}
			if err != nil {
				return // EIO once the command exited
			}
		}
	}()
	return o
}

func (o *termOut) bytes() []byte {
	o.mu.Lock()
	defer o.mu.Unlock()
	return bytes.Clone(o.buf)
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// screenLines is a frame as it reads on the screen: escape codes and
// carriage returns dropped, one string per line.
func screenLines(frame []byte) []string {
	s := ansi.ReplaceAllString(strings.ReplaceAll(string(frame), "\r", ""), "")
	return strings.Split(s, "\n")
}

// waitFrame waits for a whole frame (one followed by the next) starting
// at or after offset from for which ok holds, and returns it with the
// offset where it ends.
func (o *termOut) waitFrame(t *testing.T, from int, timeout time.Duration, what string, ok func(ls []string) bool) ([]string, int) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		buf := o.bytes()
		sep := []byte(clearHome)
		var starts []int
		for i := from; ; {
			j := bytes.Index(buf[i:], sep)
			if j < 0 {
				break
			}
			starts = append(starts, i+j)
			i += j + len(sep)
		}
		for k := 0; k+1 < len(starts); k++ {
			ls := screenLines(buf[starts[k]+len(sep) : starts[k+1]])
			if ok(ls) {
				return ls, starts[k+1]
			}
		}
		select {
		case <-o.changed:
		case <-o.done:
			t.Fatalf("the command ended before a frame with %s; it wrote:\n%q", what, buf)
		case <-deadline.C:
			t.Fatalf("no frame with %s within %v; it wrote:\n%q", what, timeout, buf[max(0, len(buf)-4000):])
		}
	}
}

func has(ls []string, subs ...string) bool {
	frame := strings.Join(ls, "\n")
	for _, s := range subs {
		if !strings.Contains(frame, s) {
			return false
		}
	}
	return true
}

func widest(ls []string) int {
	w := 0
	for _, l := range ls {
		w = max(w, utf8.RuneCountInString(l))
	}
	return w
}

func TestTopUnderPTY(t *testing.T) {
	bin := switchyardBin(t)
	srv := newStateServer(t, fixture())

	cmd := exec.Command(bin, "top", "--url", srv.URL, "--interval", "200ms")
	cmd.Env = append(os.Environ(), "SWITCHYARD_API_KEY=")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	exited, waited := make(chan error, 1), make(chan struct{})
	go func() { exited <- cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		select {
		case <-waited:
		default: // the test failed before Ctrl-C
			_ = cmd.Process.Kill()
			<-waited
		}
	})
	out := readTerm(ptmx)
	const timeout = 30 * time.Second

	// The first frames: the fixture, within 100x30.
	ls, end := out.waitFrame(t, 0, timeout, "the workers, the hottest expert and the job", func(ls []string) bool {
		return has(ls, "w-alpha", "w-beta", "w-gamma", "w-delta", "L3/E2", "job-7f3a", "120/1000")
	})
	if !strings.HasPrefix(string(out.bytes()), hideCursor) {
		t.Errorf("the cursor was not hidden first: %q", out.bytes()[:20])
	}
	if len(ls) > 30 || widest(ls) > 100 {
		t.Errorf("frame of %d lines, %d columns in a 100x30 terminal:\n%s", len(ls), widest(ls), strings.Join(ls, "\n"))
	}
	if widest(ls) <= 60 {
		t.Errorf("a 100-column frame is only %d wide", widest(ls))
	}
	if i := index(ls, "HOT EXPERT"); i < 0 || !strings.HasPrefix(ls[i+1], "L3/E2") {
		t.Errorf("L3/E2 is not the hottest expert:\n%s", strings.Join(ls, "\n"))
	}

	// The cluster changes: the job advances, a worker falls late.
	srv.update(func(st *dashboard.State) {
		st.Jobs[0].Step = 340
		st.Workers[2].Healthy = false
	})
	ls, end = out.waitFrame(t, end, timeout, "the job at step 340 and w-gamma late", func(ls []string) bool {
		i := index(ls, "w-gamma")
		return has(ls, "340/1000", "workers 2/4 healthy") && i >= 0 && strings.Contains(ls[i], "LATE")
	})

	// A fetch error keeps the last state on screen.
	srv.mu.Lock()
	srv.fail = "dashboard: etcd down"
	srv.mu.Unlock()
	_, end = out.waitFrame(t, end, timeout, "the fetch error over the last state", func(ls []string) bool {
		return has(ls, "fetch failed", "503", "dashboard: etcd down", "340/1000")
	})
	srv.mu.Lock()
	srv.fail = ""
	srv.mu.Unlock()

	// Narrower: later frames fit 60 columns.
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 30, Cols: 60}); err != nil {
		t.Fatal(err)
	}
	fits := func(ls []string) bool { return widest(ls) <= 60 && len(ls) <= 30 && has(ls, "w-alpha", "job-7f3a") }
	_, end = out.waitFrame(t, end, timeout, "at most 60 columns", fits)
	ls, _ = out.waitFrame(t, end, timeout, "a next frame", func([]string) bool { return true })
	if !fits(ls) {
		t.Errorf("a frame after the resize is %d columns, %d lines:\n%s", widest(ls), len(ls), strings.Join(ls, "\n"))
	}

	// Ctrl-C: the terminal sends SIGINT; the command restores the
	// cursor and exits 0.
	if _, err := ptmx.Write([]byte{3}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after Ctrl-C: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still running 10 s after Ctrl-C")
	}
	select {
	case <-out.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the terminal did not close after the command exited")
	}
	buf := out.bytes()
	last := bytes.LastIndex(buf, []byte(clearHome))
	if !bytes.Contains(buf[last:], []byte(showCursor)) {
		t.Errorf("no cursor-show after the last frame: %q", buf[last:])
	}
}

func TestTopOnceWithoutTerminal(t *testing.T) {
	bin := switchyardBin(t)
	srv := newStateServer(t, fixture())

	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "top", "--url", srv.URL, "--once")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	s := stdout.String()
	if strings.Contains(s, "\x1b") {
		t.Errorf("--once wrote escape codes: %q", s)
	}
	ls := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	checkFits(t, ls, DefaultWidth, DefaultHeight)
	if !has(ls, "cluster prod-east", "w-alpha", "w-delta", "L3/E2", "job-7f3a", "120/1000", "serving", "model tiny-moe") {
		t.Errorf("--once frame:\n%s", s)
	}

	// A dashboard that fails: exit status 1 with its status and message.
	srv.mu.Lock()
	srv.fail = "dashboard: etcd down"
	srv.mu.Unlock()
	stdout.Reset()
	stderr.Reset()
	cmd = exec.Command(bin, "top", "--url", srv.URL, "--once")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v", err)
	}
	if e := stderr.String(); !strings.Contains(e, "503") || !strings.Contains(e, "dashboard: etcd down") {
		t.Errorf("stderr: %q", e)
	}
}
