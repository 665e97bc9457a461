// Package worker is the Switchyard worker runtime: the process that holds
// the routed experts the placement gives it, and nothing else of the model,
// and serves those experts to its peers over gRPC. Front ends hold the
// dense weights; training jobs load their own.
//
// A worker holds only what it serves from its first second: its memory is
// the runtime (RuntimeReserve) plus its experts. Config.MemBytes is its
// memory limit; it registers ExpertBudget(MemBytes) = MemBytes -
// RuntimeReserve as WorkerInfo.MemBytes, which the placement fills, and
// never holds more expert bytes than that (see Worker.apply).
//
// A Worker, once Run:
//
//  1. opens the model folder (lazily: model.Open reads no weights; the
//     worker reads the config and, later, only the experts it owns);
//  2. serves the Worker gRPC service (transport.ExpertServer over an
//     expert.Store that starts empty) on Config.ListenAddr;
//  3. starts gossip (pkg/membership) on Config.GossipAddr;
//  4. registers in etcd under a lease of Config.LeaseTTL that the etcd
//     client keeps alive (pkg/registry), retrying while the cluster has no
//     model yet or a dead predecessor's key still holds the ID, and
//     registering again whenever the lease is lost; it then joins the
//     gossip of the workers it finds in etcd. Joining is bounded unless
//     Config.Wait: etcd must answer within Config.ConnectTimeout (30 s),
//     the first registration succeed within Config.RegisterTimeout (60 s;
//     a cluster that serves no model fails with the clusters this etcd
//     has, so a wrong name shows), and an ID held by another lease must be
//     freed within that lease's TTL plus DuplicateIDMargin (a killed
//     predecessor's is; a live worker's is not); else Run fails with one
//     error wrapping ErrGaveUp. Retries log each new failure at once, then
//     one line every RetryLogInterval with the time elapsed;
//  5. watches its model's placement: for every new epoch it loads the
//     experts it now owns and does not hold (model.LoadExpert reads only
//     their tensors), then raises the server's epoch, then drops the
//     experts it no longer owns, and returns the freed memory to the OS;
//     when the old and new experts together would not fit its budget it
//     drops first, then loads, and a load that still would not fit fails
//     the apply (retried with backoff);
//  6. reports per-expert token counts to etcd every Config.StatsInterval
//     (and at once after each epoch change).
//  7. unless Config.NoJobs, runs the ranks of the training jobs the
//     scheduler assigns to it (internal/jobrunner; each job loads its own
//     weights).
//
// When Run's context ends the worker leaves gracefully: it revokes its
// lease (the coordinator re-places its experts at once), leaves gossip and
// drains the gRPC server (in-flight requests finish, new ones are refused
// with DRAINING so callers move to another replica).
//
// Registration is refused, and Run fails with a clear error, when the
// worker opened a model the cluster does not serve or speaks another
// protocol version (registry.ErrModelMismatch, registry.ErrProtocolMismatch).
// The data plane checks both again on every call (transport's handshake).
//
// Clients of the cluster (verify, serving) route with a RemoteExecutor over
// an EtcdPlacement, and can wait for a placement to be in force on every
// worker with WaitServing.
package worker
