// Package transport is Switchyard's expert data plane over gRPC: the
// all-to-all dispatch/combine exchange of one MoE layer between workers.
//
// An ExpertServer serves the routed experts of one worker (an
// *expert.Store) on the Worker service of proto/switchyard/v1. A
// RemoteExecutor is the caller's side: it implements expert.Executor, so a
// model.Model whose Experts is a RemoteExecutor runs its MoE layers on the
// cluster with no other change.
//
// # One exchange per layer and destination
//
// For each MoE layer, RemoteExecutor.Compute groups the plan's rows by the
// worker chosen to compute each expert and sends every destination ONE
// request holding all of its rows (gathered into a pooled buffer, experts in
// ascending order), on its own persistent stream (a lane or a gRPC
// stream, see Lanes); destinations run concurrently.
// The owner returns one output row per request row in the same order, and
// the client writes them straight into the plan-ordered output. Tokens are
// never sent one at a time.
//
// # Lanes
//
// A persistent stream is, by default, an expert lane (lane.go): the same
// ExpertFrames, handshake, authorization and errors on a TCP connection of
// its own (inside mutual TLS when the cluster has credentials), which the
// caller writes and reads from its own goroutine, instead of a gRPC stream,
// whose every message crosses several goroutines on each side. The
// worker's Serve listens for both on one port (pkg/demux). A pool falls
// back to gRPC streams for a worker that does not answer a lane's hello
// (ClientConfig.GRPCOnly, or SWITCHYARD_EXPERT_LANES=0, always uses gRPC).
//
// # Chunking
//
// Tensors travel as raw little-endian bytes in ExpertFrame.payload (the
// pkg/wire codec sends them by reference, never as protobuf float arrays),
// cut into chunks of ClientConfig.ChunkBytes / ServerConfig.ChunkBytes
// (default 1 MiB). The sender streams chunks back to back while the
// receiver reads; the per-stream flow-control window is set to
// WindowChunks chunks (default 4), so at least two chunks are in flight on
// a large request. gRPC message limits are set above the chunk size.
//
// # Batching on the owner
//
// Each ExpertServer has one GEMM goroutine. A fully received request is
// queued; when the goroutine becomes free it takes everything queued,
// groups the rows of all requests by (layer, expert), and runs ONE
// ComputeRows per expert over the concatenated rows of every peer, then
// scatters the results back. This "take everything queued when the GEMM
// worker becomes free" policy (continuous batching) adds no latency when the
// owner is idle and batches more the busier it is, which is what serving
// wants. A group whose peers each send exactly one request per layer at
// about the same time (e.g. a lockstep evaluation) can set
// ServerConfig.BatchWindow and BatchRequests: the goroutine then waits up
// to the window for BatchRequests requests of one layer before running, so
// an expert's GEMM sees all peers' rows. Training requests are not merged
// (see Training below).
//
// # Replicas and failures
//
// The placement comes from a PlacementSource. For each expert the client
// picks, among its replicas, the one with the fewest rows in flight from
// this client (ties to placement order, primary first), skipping workers
// that failed recently. Errors come back through one table (see
// errorTable): an owner that does not hold an expert or sees an older
// placement epoch answers NOT_OWNED / STALE_PLACEMENT, which the client
// maps to expert.ErrNotOwned / cluster.ErrStalePlacement, re-reads the
// placement (PlacementSource.Refresh) and retries, a bounded number of
// times. A peer that fails (connection error, or no answer within
// ClientConfig.AttemptTimeout) has its rows retried on another replica
// within the caller's deadline; when no live replica is left the call fails
// with an error naming the layer, the worker and its address. A call
// without a deadline gets ClientConfig.CallTimeout.
//
// # Training
//
// A RemoteTrainer is the caller's side of training (an expert.Trainer, the
// gRPC twin of expert.Sharded). ForwardTrain sends each owner ONE
// TRAIN_FORWARD request per layer with the rows of its experts; the owner
// computes them like an inference request and keeps the activations under
// the caller (ExpertFrame.source and job) and the layer
// (expert.Store.ForwardTrainFor). BackwardTrain sends each owner of that
// forward the dy rows of its experts in the same layout, with the
// forward's sequence number (ExpertFrame.train_seq); the owner computes dx
// and adds the weight gradients to its store (expert.Store.BackwardTrainFor),
// where its optimizer reads them. A backward without its forward, a
// duplicate or a stale one is refused with ErrNoForward; experts not held
// in float32 with expert.ErrNotFloat32. Owners run training requests one
// at a time on their GEMM goroutine, each for its own caller.
//
// Training uses each expert's first listed owner, always, and never fails
// over: the owner that saved the activations must run the backward, and
// one owner holds the gradients. A failed or silent owner fails the call
// within its deadline, naming the layer, the worker and its address.
//
// # Scopes: one server for serving and training
//
// A worker runs one ExpertServer. Its serving scope holds the serving
// placement's experts; each training job running on the worker adds a
// scope of its own (ExpertServer.AddJob: the job's store, model
// fingerprint and hidden size, saved forwards and counters). A caller
// addresses a job's scope with a pool whose ClientConfig.Job names the job;
// all scopes share the server's GEMM goroutine. A rank's own experts skip
// the network: RemoteTrainer.SetLocal runs their requests in process
// through the worker's scope of the job, on the same path (checks, saved
// forwards, GEMM goroutine) as a peer's request.
//
// # Handshake
//
// Every call carries the caller's protocol version and model fingerprint
// in gRPC metadata (MDProtocol, MDModel), and the training job it
// addresses, if any (MDJob); the server checks the call against that
// scope (the serving scope when no job is named), refuses a mismatch with
// FAILED_PRECONDITION naming both values, and answers with the scope's
// values in the response header, which the client checks in turn. A job
// the worker has no scope for is refused with ErrUnknownJob. All these
// refusals satisfy errors.Is(err, ErrIncompatible).
package transport
