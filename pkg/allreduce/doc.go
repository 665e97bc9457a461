// Package allreduce holds the pure core of Switchyard's all-reduce: which
// chunk every rank sends, receives and reduces at every step, the rules
// that say when each may happen, and the wire formats of the chunks. It
// does no I/O; pkg/collective runs these programs over gRPC streams.
//
// Vocabulary:
//
//	n      ranks in the group, numbered 0..n-1
//	r      this rank
//	L      elements (float32) in the buffer being reduced
//	cell   a contiguous range of at most chunkElems elements; every chunk on
//	       the wire carries exactly one cell. A program's cells tile [0, L).
//	step   a stage of the schedule; sends of step t may overlap receives of
//	       step t and any other step as far as the rules below allow.
//
// Two algorithms:
//
//   - Ring (bandwidth-optimal; Patarasuk & Yuan 2009, NCCL, Horovod): the
//     buffer is split into n segments (the first L mod n one element
//     longer) and each segment into cells. Reduce-scatter, steps
//     t = 0..n-2: r sends segment (r-t) mod n to r+1 and receives segment
//     (r-t-1) mod n from r-1, adding it into its own. All-gather, steps
//     t = n-1+u, u = 0..n-2: r sends segment (r+1-u) mod n and receives
//     segment (r-u) mod n, overwriting its own. Every rank sends and
//     receives 2(n-1)/n * L elements, the lower bound.
//   - RecursiveDoubling (latency-optimal): in round k, r exchanges its
//     whole buffer with r XOR 2^k and adds. A non-power-of-two n folds the
//     first 2(n-p) ranks pairwise (p the largest power of two <= n) into
//     one step before and one after: ceil(log2 n) steps if n is a power
//     of two, ceil(log2 n)+1 otherwise, so at most 2*ceil(log2 n).
//
// Execution rules. A program lists its sends and receives in order per
// peer; a source's sends to r and r's receives from that source match one
// for one (same step and cell, in the same order), so FIFO streams suffice.
// A runner keeps, per cell, how many receives have been applied and how
// many sends have released the cell (a send releases its cell once the
// cell's values are no longer read: after packing into a private buffer,
// or, when the payload references the buffer itself, once the destination
// has acknowledged the chunk). Then:
//
//	send (t, c)   may start when applied[c] >= NeedApplied: every receive
//	              on c from an earlier step has been applied.
//	receive (t, c) may be applied when applied[c] == NeedApplied (receives
//	              on c apply in step order) and released[c] >=
//	              NeedReleased (no send of step <= t still reads c).
//
// These rules are all the synchronisation there is: no barrier between
// steps. A cell travels on as soon as its previous step's data arrived,
// so up to (segment length / cell length) chunks are in flight per link
// and the ring runs as a pipeline (cell k of step t+1 leaves while cell k+1
// of step t arrives).
//
// Proof sketch for Ring (the tests check each claim by simulation):
//   - Matching: r's step-t send goes to r+1 and names segment (r-t);
//     r+1's step-t receive comes from r and names segment ((r+1)-t-1) =
//     (r-t). Same in all-gather: (r+1-u) = ((r+1)-u). Both split segments
//     into cells identically (the grid depends only on n, L, chunkElems),
//     so per-link order matches.
//   - Correctness (induction on t): after reduce-scatter step t, rank r
//     holds in segment (r-t-1) the sum of the inputs of ranks r-t-1..r
//     (t+2 ranks). At t = n-2, segment (r+1) holds the sum of all n ranks.
//     All-gather step u receives segment (r-u), which rank r-1 holds
//     complete (by induction from its own segment r), so after n-1 steps
//     every rank holds every segment complete.
//   - Each element is added exactly n-1 times in total (once per
//     reduce-scatter step, at the one rank receiving its segment) and
//     every rank sends exactly one segment (L/n elements, rounded) per step.
//   - Deadlock freedom: the rules only ever wait for a receive on the same
//     cell at an earlier step, or for a release of a send that was already
//     started; chunks of a link are consumed in order without waiting on
//     the consumer's own sends, so the earliest unfinished (step, cell)
//     in the whole group can always progress.
//   - Lossy wire formats (bf16): the owner of each finished segment stores
//     the value it sends rounded to the wire format (Transfer.Round), so
//     all ranks end with bit-identical buffers. RecursiveDoubling rounds
//     its own value before adding the partner's, so both partners compute
//     wire(a) + wire(b), the same float32 (addition commutes).
package allreduce
