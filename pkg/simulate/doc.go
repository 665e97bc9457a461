// Package simulate predicts what a Switchyard cluster of many hosts does
// from what one machine can measure: a discrete-event model of hosts (each
// with cores and a full-duplex network interface of a rate and a one-way
// latency) running the real schedules of the code where they are pure.
// Pure: no sockets, no clocks; costs come from a Calibration measured on
// real kernels and transports (cmd/switchyard's `simulate calibrate`).
//
// Built so far (docs/ARCHITECTURE.md, "Simulator"): collectives (the
// all-reduce programs of pkg/allreduce, chunk by chunk: each send takes
// the sender's interface for bytes/rate after a per-message CPU cost on
// one of its cores, arrives a latency later, is serialized on the
// receiver's interface and costs the receiver a per-message CPU cost; a
// rank starts a step once the receives it depends on are applied).
package simulate
