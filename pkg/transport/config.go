package transport

import (
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
)

const (
	// DefaultChunkBytes is the payload size of one ExpertFrame: 1 MiB, the
	// low end of the 1-4 MiB range that fills a link with gRPC (DESIGN §7).
	DefaultChunkBytes = 1 << 20
	// DefaultMaxMessageBytes bounds one gRPC message in both directions:
	// room for a 4 MiB chunk from a peer configured differently, plus the
	// frame header.
	DefaultMaxMessageBytes = 8 << 20
	// DefaultWindowChunks is the per-stream flow-control window in chunks:
	// the sender may have this many chunks unacknowledged.
	DefaultWindowChunks = 4
)

// ClientConfig configures a Pool and the RemoteExecutors that use it.
// Zero fields take the defaults of DefaultClientConfig.
type ClientConfig struct {
	// Worker is the calling worker's id, sent as ExpertFrame.source (logs
	// and owner counters). Optional.
	Worker cluster.WorkerID
	// Model is the fingerprint of the model the caller runs
	// (model.Config.Fingerprint). Required: owners refuse other models.
	Model string
	// Protocol is the wire protocol version announced to peers; zero means
	// cluster.ProtocolVersion (only tests set another).
	Protocol int
	// Job, when set, is the training job whose scope on the owners every
	// call of the pool addresses (handshake metadata MDJob; the owners
	// check Model against the job's, see ExpertServer.AddJob). Empty: the
	// owners' serving scope.
	Job string

	// ChunkBytes is the payload size of one request frame (default 1 MiB).
	ChunkBytes int
	// MaxMessageBytes bounds one gRPC message sent or received (default
	// 8 MiB); it must exceed ChunkBytes plus the frame header.
	MaxMessageBytes int
	// WindowChunks sets the gRPC per-stream flow-control window to this
	// many chunks (default 4, at least 2); the connection window is four
	// times that, for concurrent streams to the same peer.
	WindowChunks int

	// CallTimeout is the deadline of a Compute call whose context has none
	// (default 10 s).
	CallTimeout time.Duration
	// AttemptTimeout bounds one exchange with one worker (default 3 s): a
	// peer that has not answered by then is treated as failed and its rows
	// go to another replica, if the call's deadline leaves time. A negative
	// value disables the limit (an attempt may use the whole deadline).
	AttemptTimeout time.Duration
	// MaxStaleRetries is how many times one Compute call re-reads the
	// placement after stale-placement errors before giving up (default 3).
	MaxStaleRetries int
	// LoadWait is how long one Compute call waits for copies that answer
	// NOT_OWNED when no other copy of an expert is left: their owners are
	// most likely loading what a new placement just gave them (default 5 s;
	// always bounded by the call's deadline too).
	LoadWait time.Duration
	// DownFor is how long a worker that failed an exchange is avoided by
	// later calls when another replica exists (default 5 s). A worker is
	// still tried when it is the only replica left.
	DownFor time.Duration

	// KeepaliveTime is the idle time after which the client pings a peer
	// (default 10 s, gRPC's minimum); KeepaliveTimeout is how long it waits
	// for the ping's answer before closing the connection (default 5 s).
	// Servers permit pings this frequent (ServerConfig.KeepaliveMinTime).
	KeepaliveTime, KeepaliveTimeout time.Duration

	// TLS, when set, makes every connection mutual TLS with these
	// credentials, and a worker dialled as ID w must present the
	// certificate of worker/w (auth.Is): an address in etcd that another
	// process answers on is refused. Nil: plaintext (the embedded default
	// on loopback).
	TLS *auth.Credentials

	// DialOptions are appended to the pool's own options (e.g. a custom
	// dialer in tests); they apply to gRPC connections, not to lanes.
	DialOptions []grpc.DialOption

	// GRPCOnly sends expert requests on gRPC streams even to workers that
	// serve expert lanes (default false: a lane per persistent stream,
	// falling back to gRPC for a worker whose listener does not speak
	// them; see lane.go). SWITCHYARD_EXPERT_LANES=0 in the environment
	// sets it (for comparisons, or a network that must see HTTP/2).
	GRPCOnly bool

	// LanePoll is how long a caller waiting for a worker's answer on an
	// expert lane polls its socket (non-blocking reads, yielding between
	// tries) before it sleeps until the answer arrives. Polling saves the
	// wake-up of a sleeping thread on an idle CPU (about 100 us a message
	// on the 2-vCPU VMs measured; see internal/rawsock), and burns the CPU
	// it polls on: set it where the front end has its cores to itself,
	// longer than the owners' usual answer time (a layer's expert GEMMs).
	// Plain TCP and TLS lanes alike; Linux only; gRPC streams never poll.
	// Default 0: SWITCHYARD_LANE_POLL in the environment (a Go duration,
	// e.g. "10ms"), else no polling; negative: no polling.
	LanePoll time.Duration
}

// LanePollEnv names the environment variable that gives ClientConfig's
// and ServerConfig's LanePoll when they are zero (a Go duration).
const LanePollEnv = "SWITCHYARD_LANE_POLL"

// lanePoll resolves a LanePoll setting: d itself unless zero, then the
// environment's (an error for an unparsable or negative value). The
// result is > 0 to poll.
func lanePoll(d time.Duration) (time.Duration, error) {
	if d != 0 {
		return d, nil
	}
	v, ok := os.LookupEnv(LanePollEnv)
	if !ok || v == "" {
		return 0, nil
	}
	e, err := time.ParseDuration(v)
	if err != nil || e < 0 {
		return 0, fmt.Errorf("%s=%q: want a duration >= 0, e.g. 10ms", LanePollEnv, v)
	}
	return e, nil
}

// DefaultClientConfig returns the defaults, with Model and Worker unset.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		Protocol:         cluster.ProtocolVersion,
		ChunkBytes:       DefaultChunkBytes,
		MaxMessageBytes:  DefaultMaxMessageBytes,
		WindowChunks:     DefaultWindowChunks,
		CallTimeout:      10 * time.Second,
		AttemptTimeout:   3 * time.Second,
		MaxStaleRetries:  3,
		LoadWait:         5 * time.Second,
		DownFor:          5 * time.Second,
		KeepaliveTime:    10 * time.Second,
		KeepaliveTimeout: 5 * time.Second,
	}
}

// frameHeaderRoom is the space reserved for an ExpertFrame's header fields
// next to its payload when checking MaxMessageBytes (generous: a header
// lists at most a layer's experts).
const frameHeaderRoom = 64 << 10

// withDefaults fills zero fields and validates, reporting every problem.
func (c ClientConfig) withDefaults() (ClientConfig, error) {
	d := DefaultClientConfig()
	if c.Protocol == 0 {
		c.Protocol = d.Protocol
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = d.ChunkBytes
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = max(d.MaxMessageBytes, c.ChunkBytes+frameHeaderRoom)
	}
	if c.WindowChunks == 0 {
		c.WindowChunks = d.WindowChunks
	}
	if os.Getenv("SWITCHYARD_EXPERT_LANES") == "0" {
		c.GRPCOnly = true
	}
	var errs []error
	var err error
	if c.LanePoll, err = lanePoll(c.LanePoll); err != nil {
		errs = append(errs, fmt.Errorf("transport: client config: %w", err))
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = d.CallTimeout
	}
	if c.AttemptTimeout == 0 {
		c.AttemptTimeout = d.AttemptTimeout
	}
	if c.MaxStaleRetries == 0 {
		c.MaxStaleRetries = d.MaxStaleRetries
	}
	if c.LoadWait == 0 {
		c.LoadWait = d.LoadWait
	}
	if c.DownFor == 0 {
		c.DownFor = d.DownFor
	}
	if c.KeepaliveTime == 0 {
		c.KeepaliveTime = d.KeepaliveTime
	}
	if c.KeepaliveTimeout == 0 {
		c.KeepaliveTimeout = d.KeepaliveTimeout
	}
	if c.Model == "" {
		errs = append(errs, errors.New("transport: client config: Model (fingerprint) is required"))
	}
	if c.ChunkBytes < 0 {
		errs = append(errs, fmt.Errorf("transport: client config: ChunkBytes %d < 0", c.ChunkBytes))
	}
	if c.MaxMessageBytes < c.ChunkBytes+frameHeaderRoom {
		errs = append(errs, fmt.Errorf("transport: client config: MaxMessageBytes %d must be at least ChunkBytes %d + %d", c.MaxMessageBytes, c.ChunkBytes, frameHeaderRoom))
	}
	if c.WindowChunks < 2 {
		errs = append(errs, fmt.Errorf("transport: client config: WindowChunks %d < 2 (want at least two chunks in flight)", c.WindowChunks))
	}
	if c.CallTimeout < 0 {
		errs = append(errs, fmt.Errorf("transport: client config: CallTimeout %v < 0", c.CallTimeout))
	}
	if c.MaxStaleRetries < 0 {
		errs = append(errs, fmt.Errorf("transport: client config: MaxStaleRetries %d < 0", c.MaxStaleRetries))
	}
	if c.KeepaliveTime < 0 || c.KeepaliveTimeout < 0 {
		errs = append(errs, fmt.Errorf("transport: client config: keepalive %v/%v < 0", c.KeepaliveTime, c.KeepaliveTimeout))
	}
	return c, errors.Join(errs...)
}

// ServerConfig configures an ExpertServer. Zero fields take the defaults
// of DefaultServerConfig.
type ServerConfig struct {
	// Worker is this worker's id (Health, Stats, error messages). Optional.
	Worker cluster.WorkerID
	// Model is the fingerprint of the model served. Required: requests
	// from callers with another fingerprint are refused.
	Model string
	// Protocol is the wire protocol version spoken; zero means
	// cluster.ProtocolVersion (only tests set another).
	Protocol int
	// Hidden is D, the model width: every request row has D values.
	// Required.
	Hidden int

	// ChunkBytes is the payload size of one response frame (default 1 MiB).
	ChunkBytes int
	// MaxMessageBytes bounds one gRPC message sent or received (default
	// 8 MiB); it must exceed ChunkBytes plus the frame header.
	MaxMessageBytes int
	// WindowChunks sets the per-stream flow-control window in chunks
	// (default 4, at least 2); the connection window is four times that.
	WindowChunks int
	// MaxRequestBytes bounds one request's tensor (default 256 MiB);
	// larger requests are refused before any buffer is allocated.
	MaxRequestBytes int64
	// MaxInFlightBytes bounds the request and answer bytes of the requests
	// a server holds at once, over every stream and caller (default 1 GiB,
	// at least 2 x MaxRequestBytes): a request waits, unread (gRPC flow
	// control then holds its sender), until its share fits, so no number of
	// callers or open streams can make a worker hold more. A request larger
	// than the budget runs alone.
	MaxInFlightBytes int64
	// MaxConcurrentStreams bounds the gRPC streams one connection may have
	// open (default 256): a front end keeps about one persistent stream per
	// concurrent exchange; a peer opening more waits for one to end.
	MaxConcurrentStreams uint32

	// TLS, when set, serves mutual TLS only (plaintext connections fail
	// the handshake) and authorizes each call by the caller's certificate:
	// the serving scope answers front ends and clients (auth.RoleFrontend,
	// auth.RoleClient), a training job's scope only the workers its rank
	// named (JobScope.SetMembers), Health and Stats any identity of the
	// cluster's CA. Nil: plaintext, no authorization.
	TLS *auth.Credentials

	// BatchWindow is how long the GEMM goroutine may wait, after the first
	// request of a batch arrived, for more requests before it runs. Zero
	// (the default) never waits: it runs whatever is queued whenever it
	// becomes free (see the package comment). Keep it well below the
	// clients' AttemptTimeout, or waiting requests count as a failed peer.
	BatchWindow time.Duration
	// BatchRequests ends the wait early: with BatchWindow > 0, the batch
	// runs as soon as this many requests for one layer are queued (e.g. the
	// number of peers in a lockstep group). Zero waits the whole window.
	BatchRequests int

	// KeepaliveTime is the idle time after which the server pings a client
	// (default 30 s) and KeepaliveTimeout how long it waits for the answer
	// (default 10 s). KeepaliveMinTime is the most frequent client ping the
	// server tolerates (default 5 s; must not exceed the clients'
	// KeepaliveTime or they are disconnected with "too_many_pings").
	KeepaliveTime, KeepaliveTimeout, KeepaliveMinTime time.Duration

	// LanePoll is how long the reader of an expert lane waits for the
	// caller's next request by polling its socket before it sleeps (see
	// ClientConfig.LanePoll): set it where the worker has its cores to
	// itself, longer than the usual gap between a decoding front end's
	// requests (its attention for a layer). Default 0: SWITCHYARD_LANE_POLL,
	// else no polling; negative: no polling.
	LanePoll time.Duration

	// Observer, when set, is told what the serving scope computes (for
	// metrics; training scopes are not observed).
	Observer *ServerObserver
}

// ServerObserver receives an ExpertServer's serving work as it happens.
// Every func may be nil; they run on the server's goroutines (the GEMM
// goroutine included) and must return quickly.
type ServerObserver struct {
	// Request: one expert request answered over the network with results
	// (not an error frame): the caller's name (its handshake Source),
	// payload bytes received and sent, and how long its rows waited for
	// their batch to start.
	Request func(peer string, bytesIn, bytesOut int, queued time.Duration)
	// Expert: one expert's GEMM over rows token rows, and its time.
	Expert func(id expert.ID, rows int, took time.Duration)
	// Batch: one batch of the GEMM goroutine (every scope's inference
	// requests in it), its rows and time.
	Batch func(rows int, took time.Duration)
}

// DefaultServerConfig returns the defaults, with Worker, Model and Hidden
// unset.
func DefaultServerConfig() ServerConfig {
	return ServerConfig{
		Protocol:             cluster.ProtocolVersion,
		ChunkBytes:           DefaultChunkBytes,
		MaxMessageBytes:      DefaultMaxMessageBytes,
		WindowChunks:         DefaultWindowChunks,
		MaxRequestBytes:      256 << 20,
		MaxConcurrentStreams: 256,
		MaxInFlightBytes:     1 << 30,
		KeepaliveTime:        30 * time.Second,
		KeepaliveTimeout:     10 * time.Second,
		KeepaliveMinTime:     5 * time.Second,
	}
}

func (c ServerConfig) withDefaults() (ServerConfig, error) {
	d := DefaultServerConfig()
	if c.Protocol == 0 {
		c.Protocol = d.Protocol
	}
	if c.ChunkBytes == 0 {
		c.ChunkBytes = d.ChunkBytes
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = max(d.MaxMessageBytes, c.ChunkBytes+frameHeaderRoom)
	}
	if c.WindowChunks == 0 {
		c.WindowChunks = d.WindowChunks
	}
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = d.MaxRequestBytes
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = d.MaxConcurrentStreams
	}
	if c.MaxInFlightBytes == 0 {
		c.MaxInFlightBytes = max(d.MaxInFlightBytes, 2*c.MaxRequestBytes)
	}
	if c.KeepaliveTime == 0 {
		c.KeepaliveTime = d.KeepaliveTime
	}
	if c.KeepaliveTimeout == 0 {
		c.KeepaliveTimeout = d.KeepaliveTimeout
	}
	if c.KeepaliveMinTime == 0 {
		c.KeepaliveMinTime = d.KeepaliveMinTime
	}
	var errs []error
	var err error
	if c.LanePoll, err = lanePoll(c.LanePoll); err != nil {
		errs = append(errs, fmt.Errorf("transport: server config: %w", err))
	}
	if c.Model == "" {
		errs = append(errs, errors.New("transport: server config: Model (fingerprint) is required"))
	}
	if c.Hidden <= 0 {
		errs = append(errs, fmt.Errorf("transport: server config: Hidden %d must be positive", c.Hidden))
	}
	if c.ChunkBytes < 0 {
		errs = append(errs, fmt.Errorf("transport: server config: ChunkBytes %d < 0", c.ChunkBytes))
	}
	if c.MaxMessageBytes < c.ChunkBytes+frameHeaderRoom {
		errs = append(errs, fmt.Errorf("transport: server config: MaxMessageBytes %d must be at least ChunkBytes %d + %d", c.MaxMessageBytes, c.ChunkBytes, frameHeaderRoom))
	}
	if c.WindowChunks < 2 {
		errs = append(errs, fmt.Errorf("transport: server config: WindowChunks %d < 2", c.WindowChunks))
	}
	if c.MaxRequestBytes < 0 {
		errs = append(errs, fmt.Errorf("transport: server config: MaxRequestBytes %d < 0", c.MaxRequestBytes))
	}
	if c.MaxInFlightBytes < 0 {
		errs = append(errs, fmt.Errorf("transport: server config: MaxInFlightBytes %d < 0", c.MaxInFlightBytes))
	}
	if c.BatchWindow < 0 || c.BatchRequests < 0 {
		errs = append(errs, fmt.Errorf("transport: server config: BatchWindow %v / BatchRequests %d < 0", c.BatchWindow, c.BatchRequests))
	}
	return c, errors.Join(errs...)
}

// windows returns the per-stream and per-connection flow-control windows
// for a chunk size: gRPC's own minimum is 64 KiB, its maximum 2^31-1.
func windows(chunk, chunks int) (stream, conn int32) {
	s := int64(max(chunk, 16<<10)) * int64(chunks)
	s = min(max(s, 64<<10), 1<<29)
	return int32(s), int32(min(4*s, 1<<30))
}
