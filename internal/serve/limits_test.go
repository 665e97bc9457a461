package serve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/pkg/model"
)

// paced lets the real model it wraps take a step only on each tick, so a
// generation lasts at least its token count times the tick, however fast
// the machine (a slower one only makes it longer).
type paced struct {
	Model
	tick <-chan time.Time
}

func (p paced) Forward(ctx context.Context, seqs []Seq, tokens [][]int32) ([]float32, error) {
	select {
	case <-p.tick:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return p.Model.Forward(ctx, seqs, tokens)
}

func newPaced(t *testing.T, m Model, every time.Duration) paced {
	tk := time.NewTicker(every)
	t.Cleanup(tk.Stop)
	return paced{Model: m, tick: tk.C}
}

// dialRaw opens a plain TCP connection to the test server; rcvBuf > 0 sets
// its SO_RCVBUF before connecting (so the TCP window is small from the
// start).
func dialRaw(t *testing.T, ts *testServer, rcvBuf int) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 10 * time.Second}
	if rcvBuf > 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvBuf)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	c, err := d.Dial("tcp", ts.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// smallSendBuffers makes every accepted connection's kernel send buffer
// small and fixed (no autotuning), so that a client that stops reading
// blocks the server's writes after a few KiB, as it would over a real
// network once the buffers in between are full.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(4096)
	}
	return c, err
}

// readClosed reads c until the server closes it (EOF or a reset) and
// returns what it sent; it fails the test if c is still open after
// limit.
func readClosed(t *testing.T, c net.Conn, limit time.Duration) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(limit))
	got, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection is still open after %v (got %q)", limit, got)
	}
	return got
}

// A client that sends its headers, or its headers and then its body, a
// byte at a time and never finishes is cut once Config.ReadHeaderTimeout,
// or ReadTimeout, has passed (a body cut short gets 408 when the
// connection still takes it); it never reaches the scheduler.
func TestSlowClientCut(t *testing.T) {
	g := loadGolden(t, "mixtral")
	const headerTimeout, readTimeout = 200 * time.Millisecond, 600 * time.Millisecond
	ts := start(t, FromModel(g.m), Config{ReadHeaderTimeout: headerTimeout, ReadTimeout: readTimeout})
	for _, tc := range []struct {
		name    string
		head    string // sent at once
		trickle string // then a byte every 20 ms, over and over
		within  time.Duration
	}{
		{"headers", "POST /v1/completions HTTP/1.1\r\nHost: x\r\n", "X-Slow: aaaa\r\n", headerTimeout},
		{"body", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n{\"prompt\": \"", "a", readTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The server's timeouts start when it accepts the connection,
			// which is after the dial began: time from before the dial.
			t0 := time.Now()
			c := dialRaw(t, ts, 0)
			if _, err := io.WriteString(c, tc.head); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			trickled := make(chan struct{})
			go func() {
				defer close(trickled)
				tick := time.NewTicker(20 * time.Millisecond)
				defer tick.Stop()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					case <-tick.C:
					}
					if _, err := c.Write([]byte{tc.trickle[i%len(tc.trickle)]}); err != nil {
						return // cut
					}
				}
			}()
			// Without the timeout the trickle would go on for minutes
			// (1 MB at 50 bytes/s); allow for a busy machine.
			got := readClosed(t, c, tc.within+10*time.Second)
			took := time.Since(t0)
			close(stop)
			<-trickled
			if took < tc.within {
				t.Errorf("cut after %v, before the timeout of %v", took, tc.within)
			}
			// net/http answers a request whose headers came too slowly
			// with a plain 400 itself; a body cut short gets our 408.
			if len(got) > 0 && !strings.HasPrefix(string(got), "HTTP/1.1 408 ") && !(tc.name == "headers" && strings.HasPrefix(string(got), "HTTP/1.1 400 ")) {
				t.Errorf("answer %q, want 408 (or 400 for headers) or none", got)
			}
			if tc.name == "body" && len(got) > 0 && !strings.Contains(string(got), `"code":"request_timeout"`) {
				t.Errorf("408 not in OpenAI's shape: %q", got)
			}
			t.Logf("cut after %v (timeout %v): %q", took.Round(time.Millisecond), tc.within, firstLine(got))
		})
	}
	if st := ts.Stats(); st.Steps != 0 {
		t.Errorf("%d model steps ran for requests never received", st.Steps)
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\r\n")
	return s
}

// A client that asks for a long stream and then never reads it (a raw
// connection with a tiny receive buffer, the server's send buffer small
// too) has its write fail within Config.WriteTimeout: the handler ends,
// the request counts as 499, and its sequence leaves the scheduler with
// its KV cache long before max_tokens, freeing the only slot for the next
// request. Generation is paced (a step per 10 ms) so that max_tokens
// would take seconds.
func TestStalledReaderReleasesSlot(t *testing.T) {
	g := loadGolden(t, "mixtral")
	const writeTimeout = 300 * time.Millisecond
	ts := startOn(t, newPaced(t, FromModel(g.m), 10*time.Millisecond), Config{MaxSeqs: 1, WriteTimeout: writeTimeout},
		func(ln net.Listener) net.Listener { return smallSendBuffers{ln} })
	maxTokens := 256 - len(g.prompts[0])
	c := dialRaw(t, ts, 1024)
	body := mustJSON(map[string]any{"prompt": g.prompts[0], "max_tokens": maxTokens, "stream": true, "ignore_eos": true, "return_token_ids": true})
	if _, err := fmt.Fprintf(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
		t.Fatal(err)
	}
	// Never read c.
	waitFor(t, "the stream to start", func() bool { return ts.Stats().Active == 1 })
	t0 := time.Now()
	waitFor(t, "the stalled request to end as 499", func() bool {
		return ts.metric(t, "switchyard_serve_requests_total", map[string]string{"endpoint": "completions", "code": "499"}) == 1
	})
	waitFor(t, "its slot to be freed", func() bool { return ts.Stats().Active == 0 })
	n := ts.metric(t, "switchyard_serve_generation_tokens_total", nil)
	t.Logf("slot freed %v after the stream started, after %v of %d tokens", time.Since(t0).Round(time.Millisecond), n, maxTokens)
	if st := ts.Stats(); st.KVCacheBytes != 0 {
		t.Errorf("KV cache still holds %d bytes", st.KVCacheBytes)
	}
	if n >= float64(maxTokens) {
		t.Errorf("%v tokens generated: the sequence ran to max_tokens %d instead of being cancelled", n, maxTokens)
	}
	// The slot serves the next request.
	if r := ts.complete(t, "/v1/completions", map[string]any{"prompt": g.prompts[1], "max_tokens": 3, "temperature": 0}); r.Usage.CompletionTokens != 3 {
		t.Errorf("next request: %+v", r)
	}
}

// Config.MaxConns caps the open connections: with two open (idle, before
// any request), a third is not served until one of them closes, and then
// it is.
func TestMaxConns(t *testing.T) {
	g := loadGolden(t, "mixtral")
	ts := start(t, FromModel(g.m), Config{MaxConns: 2})
	first := dialRaw(t, ts, 0)
	dialRaw(t, ts, 0)
	waitFor(t, "two open connections", func() bool { return ts.metric(t, "switchyard_serve_open_connections", nil) == 2 })
	third := dialRaw(t, ts, 0) // the kernel completes the handshake; the server does not take it
	if _, err := io.WriteString(third, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = third.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := third.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a third connection over the cap of 2 was served: read %d bytes, %v", n, err)
	}
	if n := ts.metric(t, "switchyard_serve_open_connections", nil); n != 2 {
		t.Errorf("open_connections %v, want 2", n)
	}
	first.Close()
	_ = third.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(third), nil)
	if err != nil {
		t.Fatalf("the third connection after the first closed: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/health on the third connection: %d", resp.StatusCode)
	}
}

// The scheduler ends a sequence whose prompt and generated tokens fill the
// model's context with finish_reason "length", whatever max_tokens says:
// a job submitted directly, past the API's check, with max_tokens MaxInt
// stops at the context. A prompt that leaves no room is refused.
func TestSchedulerStopsAtContext(t *testing.T) {
	g := loadGolden(t, "mixtral")
	ts := start(t, FromModel(g.m), Config{})
	ctxLen := g.m.Cfg.MaxPos
	for _, P := range []int{ctxLen - 5, ctxLen - 1, 3} {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		r := &genRequest{ctx: ctx, arrived: time.Now(), out: newMailbox(),
			job: &job{prompt: longPrompt(P), maxTokens: math.MaxInt, sampler: model.SamplerConfig{Temperature: 1, TopP: 1, Seed: 7}}}
		if e := ts.submit(r); e != nil {
			t.Fatalf("prompt %d: %v", P, e)
		}
		gen := 0
		var last *event
		waitFor(t, fmt.Sprintf("the sequence of a %d-token prompt to end", P), func() bool {
			for _, ev := range r.out.take() {
				gen += len(ev.IDs)
				if gen > ctxLen-P {
					t.Fatalf("prompt %d: %d tokens generated, beyond the context of %d", P, gen, ctxLen)
				}
				if ev.last() {
					last = &ev
				}
			}
			return last != nil
		})
		if last.Err != nil || last.Finish != "length" || gen != ctxLen-P || last.Usage.TotalTokens != ctxLen {
			t.Errorf("prompt %d: ended with %q (err %v) after %d tokens, usage %+v; want length after %d", P, last.Finish, last.Err, gen, last.Usage, ctxLen-P)
		}
	}
	for _, P := range []int{ctxLen, ctxLen + 10, 0} {
		r := &genRequest{ctx: context.Background(), arrived: time.Now(), out: newMailbox(),
			job: &job{prompt: longPrompt(P), maxTokens: 1, sampler: model.SamplerConfig{Temperature: 1, TopP: 1}}}
		if e := ts.submit(r); e == nil || e.Status != http.StatusBadRequest {
			t.Errorf("a prompt of %d tokens in a context of %d: %v, want 400", P, ctxLen, e)
		}
	}
	if st := ts.Stats(); st.Active != 0 || st.Queued != 0 {
		t.Errorf("left behind: %+v", st)
	}
}
