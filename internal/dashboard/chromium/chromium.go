// Package chromium drives a headless Chromium from tests: it loads a page,
// lets its scripts run, and returns the resulting DOM or a screenshot. It
// is plain (non-test) code so any package's tests can import it; it needs
// only a Chromium binary on PATH (Debian package "chromium").
package chromium

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Names are the executables Find looks for on PATH, in order.
var Names = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// ErrNotFound is what Find returns (wrapped) when no Chromium is on PATH.
var ErrNotFound = errors.New(`chromium: no Chromium on PATH (looked for ` +
	`chromium, chromium-browser, google-chrome, google-chrome-stable); ` +
	`install the Debian package "chromium" (apt-get install chromium)`)

// Find returns the path of the first of Names on PATH.
func Find() (string, error) {
	for _, n := range Names {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
	}
	return "", ErrNotFound
}

// DumpDOM loads url in a headless Chromium, lets the page run for budget of
// virtual time, and returns the DOM serialized as HTML (what the scripts
// made of the page, not the page's source).
//
// Why a --virtual-time-budget and not a real-time wait (--timeout): with
// a budget, Chromium runs the page's timers on a virtual clock that jumps
// over idle time, so a page polling every 2 s gets several polls in well
// under a second of real time, and the clock stands still while a network
// fetch is pending, so fetch()ed data is rendered however slow the server
// (the dashboard's tests check both: a server answering after 1 s of real
// time with a 500 ms budget, and four polls in a 7 s budget). The DOM is
// dumped when the budget is spent. Without a budget --dump-dom dumps at
// the load event, before any timer, racing the page's first fetch; a real
// time --timeout would make every test wait out its full length. A budget
// of 500 ms to 1 s is enough for a page that renders after its first
// fetch. The real time DumpDOM takes (Chromium starts in 1 to 3 s) is
// bounded by ctx only.
func DumpDOM(ctx context.Context, url string, budget time.Duration) (string, error) {
	out, err := run(ctx, budget, "--dump-dom", url)
	if err != nil {
		return "", err
	}
	if !bytes.Contains(out, []byte("<html")) {
		return "", fmt.Errorf("chromium: --dump-dom of %s printed no document (%d bytes)", url, len(out))
	}
	return string(out), nil
}

// Screenshot loads url in a headless Chromium with a width x height
// window, lets the page run for budget of virtual time (see DumpDOM), and
// saves a PNG of the viewport to file.
func Screenshot(ctx context.Context, url, file string, width, height int, budget time.Duration) error {
	if width <= 0 || height <= 0 {
		return fmt.Errorf("chromium: bad window size %dx%d", width, height)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	_ = os.Remove(abs) // so a stale file is not taken for the new one
	if _, err := run(ctx, budget,
		"--screenshot="+abs,
		"--window-size="+strconv.Itoa(width)+","+strconv.Itoa(height),
		"--hide-scrollbars",
		url); err != nil {
		return err
	}
	if fi, err := os.Stat(abs); err != nil || fi.Size() == 0 {
		return fmt.Errorf("chromium: no screenshot written to %s", abs)
	}
	return nil
}

// flags are given to every run:
//
//   - --headless: the new headless mode (the old one left the chromium
//     binary in Chromium 132, as chrome-headless-shell); --dump-dom,
//     --screenshot and --virtual-time-budget work in both.
//   - --no-sandbox: tests run as root in containers, where Chromium's
//     sandbox cannot start.
//   - --disable-gpu, --disable-dev-shm-usage: no GPU in CI; containers
//     often have a 64 MiB /dev/shm, too small for Chromium's shared memory.
//   - the rest keep a throwaway profile quiet and off the network: no
//     first-run UI, no component updates, no background requests, no
//     extensions (Debian's launcher loads its own otherwise), no sync.
var flags = []string{
	"--headless",
	"--no-sandbox",
	"--disable-gpu",
	"--disable-dev-shm-usage",
	"--no-first-run",
	"--no-default-browser-check",
	"--disable-extensions",
	"--disable-component-update",
	"--disable-background-networking",
	"--disable-sync",
	"--disable-default-apps",
	"--mute-audio",
	"--run-all-compositor-stages-before-draw",
}

// stderrTail is how much of Chromium's stderr an error quotes.
const stderrTail = 2000

// run starts Chromium with flags, a fresh user-data-dir (removed after)
// and the virtual-time budget, followed by args; it returns its stdout.
// A Chromium killed by a signal it did not get from us (it has crashed,
// rarely, on a loaded machine) is run once more.
func run(ctx context.Context, budget time.Duration, args ...string) ([]byte, error) {
	bin, err := Find()
	if err != nil {
		return nil, err
	}
	out, err := run1(ctx, bin, budget, args)
	var exit *exec.ExitError
	if err != nil && ctx.Err() == nil && errors.As(err, &exit) && exit.ExitCode() == -1 {
		out, err = run1(ctx, bin, budget, args)
	}
	return out, err
}

// run1 runs Chromium once.
func run1(ctx context.Context, bin string, budget time.Duration, args []string) ([]byte, error) {
	dir, err := os.MkdirTemp("", "chromium-profile-")
	if err != nil {
		return nil, err
	}
	defer removeAll(dir)

	all := append([]string{}, flags...)
	all = append(all, "--user-data-dir="+dir)
	if budget > 0 {
		all = append(all, "--virtual-time-budget="+strconv.FormatInt(budget.Milliseconds(), 10))
	}
	all = append(all, args...)

	cmd := exec.CommandContext(ctx, bin, all...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.Dir = dir
	// Chromium's helper processes may outlive a killed browser holding the
	// pipes; do not wait for them past this.
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("chromium: %w%s", ctx.Err(), tail(stderr.Bytes()))
	}
	if err != nil {
		return nil, fmt.Errorf("chromium: %s: %w%s", bin, err, tail(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// tail formats the end of Chromium's stderr for an error, less the
// D-Bus complaints it logs in every container without a session bus.
func tail(b []byte) string {
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) != "" && !strings.Contains(l, ":ERROR:dbus/") {
			keep = append(keep, l)
		}
	}
	s := strings.Join(keep, "\n")
	if s == "" {
		return " (nothing on stderr but D-Bus errors)"
	}
	if len(s) > stderrTail {
		s = "…" + s[len(s)-stderrTail:]
	}
	return "; stderr:\n" + s
}

// removeAll removes dir, retrying briefly: Chromium's helper processes can
// still be writing to the profile just after the browser exits.
func removeAll(dir string) {
	for i := 0; i < 20; i++ {
		if err := os.RemoveAll(dir); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
