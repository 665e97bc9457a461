// Package worker is the Switchyard worker runtime: the process that holds a
// dense replica of a model plus the routed experts the placement gives it,
// and serves those experts to its peers over gRPC.
//
// A Worker, once Run:
//
//  1. opens the model folder (lazily: model.Open reads no weights) and
//     loads the dense weights only (attention, norms, routers, shared
//     experts, embeddings), which it will use to run its own sequences;
//  2. serves the Worker gRPC service (transport.ExpertServer over an
//     expert.Store that starts empty) on Config.ListenAddr;
//  3. starts gossip (pkg/membership) on Config.GossipAddr;
//  4. registers in etcd under a lease of Config.LeaseTTL that the etcd
//     client keeps alive (pkg/registry), retrying while the cluster has no
//     model yet or a dead predecessor's key still holds the ID, and
//     registering again whenever the lease is lost; it then joins the
//     gossip of the workers it finds in etcd;
//  5. watches its model's placement: for every new epoch it loads the
//     experts it now owns and does not hold (model.LoadExpert reads only
//     their tensors), then raises the server's epoch, then drops the
//     experts it no longer owns, and returns the freed memory to the OS;
//  6. reports per-expert token counts to etcd every Config.StatsInterval
//     (and at once after each epoch change).
//
// When Run's context ends the worker leaves gracefully: it revokes its
// lease (the coordinator re-places its experts at once), leaves gossip and
// drains the gRPC server (in-flight requests finish, new ones are refused
// with DRAINING so callers move to another replica).
//
// Registration is refused, and Run fails with a clear error, when the
// worker loaded a model the cluster does not serve or speaks another
// protocol version (registry.ErrModelMismatch, registry.ErrProtocolMismatch).
// The data plane checks both again on every call (transport's handshake).
//
// Clients of the cluster (verify, serving) route with a RemoteExecutor over
// an EtcdPlacement, and can wait for a placement to be in force on every
// worker with WaitServing.
package worker
