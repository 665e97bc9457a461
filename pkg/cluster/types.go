// Package cluster holds the vocabulary shared by Switchyard's control and
// communication planes: worker identities, the placement table (which
// workers own which routed experts, at which epoch), and protocol version
// constants. It is pure data: no etcd, gRPC or memberlist imports.
package cluster

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/switchyard/switchyard/pkg/expert"
)

// ProtocolVersion is bumped on any incompatible change to the worker or
// coordinator wire protocol. Peers with a different version are refused.
const ProtocolVersion = 1

// WorkerID names a worker process; unique within a cluster (e.g. "w-3" or a
// pod name).
type WorkerID string

// Epoch numbers placements of one model; every change of owners bumps it.
// Expert requests carry the epoch the caller routed with, so an owner can
// tell a caller whose placement is stale.
type Epoch uint64

// WorkerInfo is what a worker registers under its lease.
type WorkerInfo struct {
	ID         WorkerID `json:"id"`
	Addr       string   `json:"addr"`        // gRPC host:port
	GossipAddr string   `json:"gossip_addr"` // memberlist host:port
	Cores      int      `json:"cores"`
	MemBytes   int64    `json:"mem_bytes"` // memory the worker may use for weights
	Protocol   int      `json:"protocol"`  // ProtocolVersion of the binary
	Model      string   `json:"model"`     // ModelFingerprint of the model it serves
	// Quantize is the format it holds routed experts in ("int8", "q4";
	// empty: the checkpoint's precision). It must match the model record's.
	Quantize string `json:"quantize,omitempty"`
	Version  string `json:"version"` // build version, informational
}

// Placement maps every routed expert of a model to the workers that hold a
// copy of it (replicas). It is written by the coordinator leader only.
type Placement struct {
	Model string `json:"model"` // ModelFingerprint
	Epoch Epoch  `json:"epoch"`
	// Owners[layer][expert] lists the workers holding that expert, primary
	// first. Layers without routed experts have nil rows.
	Owners [][][]WorkerID `json:"owners"`
	// Workers are the addresses of every worker named in Owners.
	Workers map[WorkerID]WorkerInfo `json:"workers"`
}

// ErrStalePlacement is returned (wrapped) by an owner when a request's epoch
// or routing no longer matches what it holds; the caller must re-read the
// placement and retry.
var ErrStalePlacement = errors.New("stale placement")

// OwnersOf returns the replicas of one expert (nil if none or out of range).
func (p *Placement) OwnersOf(id expert.ID) []WorkerID {
	if id.Layer < 0 || id.Layer >= len(p.Owners) || id.Expert < 0 || id.Expert >= len(p.Owners[id.Layer]) {
		return nil
	}
	return p.Owners[id.Layer][id.Expert]
}

// Owned lists the experts worker w holds, in (layer, expert) order.
func (p *Placement) Owned(w WorkerID) []expert.ID {
	var out []expert.ID
	for l, row := range p.Owners {
		for e, ws := range row {
			for _, x := range ws {
				if x == w {
					out = append(out, expert.ID{Layer: l, Expert: e})
					break
				}
			}
		}
	}
	return out
}

// Validate checks that every expert of every listed layer has at least one
// owner and that every owner has an address.
func (p *Placement) Validate() error {
	var errs []error
	for l, row := range p.Owners {
		for e, ws := range row {
			if len(ws) == 0 {
				errs = append(errs, fmt.Errorf("placement: layer %d expert %d has no owner", l, e))
			}
			for _, w := range ws {
				if _, ok := p.Workers[w]; !ok {
					errs = append(errs, fmt.Errorf("placement: layer %d expert %d owner %q has no address", l, e, w))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// WorkerIDs returns the sorted IDs of the workers in the placement.
func (p *Placement) WorkerIDs() []WorkerID {
	ids := make([]WorkerID, 0, len(p.Workers))
	for id := range p.Workers {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

// Clone returns a deep copy of p (owner lists and worker map included).
func (p *Placement) Clone() Placement {
	out := *p
	out.Owners = make([][][]WorkerID, len(p.Owners))
	for l, row := range p.Owners {
		if row == nil {
			continue
		}
		out.Owners[l] = make([][]WorkerID, len(row))
		for e, ws := range row {
			out.Owners[l][e] = slices.Clone(ws)
		}
	}
	out.Workers = maps.Clone(p.Workers)
	return out
}

// Unowned lists, in (layer, expert) order, the experts none of whose
// owners satisfies live: those without a live copy.
func (p *Placement) Unowned(live func(WorkerID) bool) []expert.ID {
	var out []expert.ID
	for l, row := range p.Owners {
		for e, ws := range row {
			if !slices.ContainsFunc(ws, live) {
				out = append(out, expert.ID{Layer: l, Expert: e})
			}
		}
	}
	return out
}
