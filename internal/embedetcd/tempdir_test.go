package embedetcd

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const childEnv = "SWITCHYARD_EMBEDETCD_TEST_CHILD"

// TestChildServer is not a test: run by TestReclaimAfterKill as a child
// process (childEnv set), it starts a server with temporary data, prints
// "dir=<data dir>" and waits to be killed.
func TestChildServer(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		t.Skip("helper process for TestReclaimAfterKill")
	}
	srv, err := Start(context.Background(), TestConfig(""))
	if err != nil {
		fmt.Println("error=" + err.Error())
		os.Exit(1)
	}
	fmt.Println("dir=" + srv.Dir())
	select {} // until SIGKILL
}

// startChild runs TestChildServer in a child process and returns it with
// its server's data directory.
func startChild(t *testing.T) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "dir=") || strings.HasPrefix(l, "error=") {
				lines <- l
				return
			}
		}
		close(lines)
	}()
	select {
	case l, ok := <-lines:
		if !ok || !strings.HasPrefix(l, "dir=") {
			t.Fatalf("child: %q", l)
		}
		return cmd, strings.TrimPrefix(l, "dir=")
	case <-time.After(60 * time.Second): // generous: the machine may be busy
		t.Fatal("child server not started after 60 s")
	}
	return nil, ""
}

// TestReclaimAfterKill: a SIGKILLed process leaves its temporary data
// directory; the next Start removes it, but not that of a live process.
func TestReclaimAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	t.Setenv("TMPDIR", t.TempDir()) // a parent of our own, inherited by the children
	parent := TempParent()

	dead, deadDir := startChild(t)
	_, liveDir := startChild(t)
	deadRoot, liveRoot := filepath.Dir(deadDir), filepath.Dir(liveDir)
	for _, r := range []string{deadRoot, liveRoot} {
		if filepath.Dir(r) != parent {
			t.Fatalf("data dir %s is not under %s", r, parent)
		}
	}
	if err := dead.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	dead.Wait()
	if _, err := os.Stat(filepath.Join(deadDir, "member")); err != nil {
		t.Fatalf("a killed server's data should be left behind: %v", err)
	}
	// A foreign directory in the parent (not etcd-*) is never touched.
	foreign := filepath.Join(parent, "other")
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := Start(ctx, TestConfig(""))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if got := srv.Reclaimed(); !slices.Equal(got, []string{deadRoot}) {
		t.Errorf("Reclaimed() = %v, want [%s]", got, deadRoot)
	}
	if _, err := os.Stat(deadRoot); !os.IsNotExist(err) {
		t.Errorf("dead server's directory %s not removed: %v", deadRoot, err)
	}
	for _, d := range []string{liveDir, foreign} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s was touched: %v", d, err)
		}
	}
	own := filepath.Dir(srv.Dir())
	srv.Close()
	if _, err := os.Stat(own); !os.IsNotExist(err) {
		t.Errorf("Close left %s: %v", own, err)
	}
	if _, err := os.Stat(liveDir); err != nil {
		t.Errorf("live server's directory %s was removed: %v", liveDir, err)
	}
}

// TestLockHeldInProcess: a directory locked by another open file (even in
// this process) is not reclaimed; once unlocked it is.
func TestLockHeldInProcess(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	d, _, err := newTempDir()
	if err != nil {
		t.Fatal(err)
	}
	if got := reclaim(TempParent()); len(got) != 0 {
		t.Fatalf("reclaimed %v while locked", got)
	}
	d.lock.Close() // as if the process died
	if got := reclaim(TempParent()); !slices.Equal(got, []string{d.root}) {
		t.Fatalf("reclaimed %v, want [%s]", got, d.root)
	}
	// A half-removed directory without a lock file is reclaimed too.
	half := filepath.Join(TempParent(), tempPrefix+"half")
	if err := os.MkdirAll(filepath.Join(half, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if got := reclaim(TempParent()); !slices.Equal(got, []string{half}) {
		t.Fatalf("reclaimed %v, want [%s]", got, half)
	}
}
