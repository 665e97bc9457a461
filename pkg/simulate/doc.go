// Package simulate predicts what a Switchyard cluster of many hosts does
// from what one machine can measure: a discrete-event model of hosts (each
// with cores and a full-duplex network interface of a rate and a one-way
// latency) running the real schedules of the code where they are pure.
// Pure: no sockets, no clocks; costs come from a Calibration measured on
// real kernels and transports (cmd/switchyard's `simulate calibrate`).
//
// Models: collectives (collective.go: the all-reduce programs of
// pkg/allreduce, chunk by chunk: each send takes the sender's interface
// for bytes/rate after a per-message CPU cost on one of its cores, arrives
// a latency later, is serialized on the receiver's interface and costs the
// receiver a per-message CPU cost; a rank starts a step once the receives
// it depends on are applied), serving (serve.go, skew.go: front ends'
// decode steps, the per-layer exchange with the experts' owners, the real
// placement and dispatch plan, recovery after a worker's death) and a
// training step (train.go: data + expert parallel, as pkg/train runs it).
// Costs come from a Calibration (cluster.go), hardware from a
// ClusterSpec. See docs/ARCHITECTURE.md, "Simulator", and docs/scale.
package simulate
