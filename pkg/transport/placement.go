package transport

import (
	"context"
	"errors"
	"sync"

	"github.com/switchyard/switchyard/pkg/cluster"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// PlacementSource gives a RemoteExecutor the placement of its model. The
// control plane implements it over etcd watches; StaticPlacement and
// CachedPlacement cover tests and simple setups.
//
// Implementations must be safe for concurrent use. The placements returned
// are shared and must not be modified by anyone after being returned.
type PlacementSource interface {
	// Current returns the newest placement known, without blocking; nil
	// only before any is known (callers then Refresh).
	Current() *cluster.Placement
	// Refresh re-reads the placement from its authority after an owner
	// reported a stale placement, and returns it; Current returns it from
	// then on. It may block (e.g. to wait for a newer epoch) until ctx ends.
	Refresh(ctx context.Context) (*cluster.Placement, error)
}

// StaticPlacement is a PlacementSource holding one placement, replaced
// with Set; Refresh returns the current one.
type StaticPlacement struct {
	mu sync.Mutex
	p  *cluster.Placement
}

// NewStaticPlacement returns a source serving p.
func NewStaticPlacement(p *cluster.Placement) *StaticPlacement { return &StaticPlacement{p: p} }

// Set replaces the placement.
func (s *StaticPlacement) Set(p *cluster.Placement) {
	s.mu.Lock()
	s.p = p
	s.mu.Unlock()
}

// Current implements PlacementSource.
func (s *StaticPlacement) Current() *cluster.Placement {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p
}

// Refresh implements PlacementSource.
func (s *StaticPlacement) Refresh(context.Context) (*cluster.Placement, error) {
	return s.Current(), nil
}

// CachedPlacement is a PlacementSource that serves a cached placement and
// re-reads it with Fetch on Refresh (e.g. Coordinator.GetPlacement, or a
// test's "authority" variable).
type CachedPlacement struct {
	fetch func(context.Context) (*cluster.Placement, error)

	mu        sync.Mutex
	p         *cluster.Placement
	refreshes int
}

// NewCachedPlacement returns a source serving initial until Refresh calls
// fetch.
func NewCachedPlacement(initial *cluster.Placement, fetch func(context.Context) (*cluster.Placement, error)) *CachedPlacement {
	return &CachedPlacement{p: initial, fetch: fetch}
}

// Current implements PlacementSource.
func (c *CachedPlacement) Current() *cluster.Placement {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.p
}

// Refresh implements PlacementSource. A fetched placement older than the
// cached one is ignored.
func (c *CachedPlacement) Refresh(ctx context.Context) (*cluster.Placement, error) {
	p, err := c.fetch(ctx)
	if err != nil {
		return nil, err
	}
	if p == nil {
		return nil, errors.New("transport: placement fetch returned nil")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refreshes++
	if c.p == nil || p.Epoch >= c.p.Epoch {
		c.p = p
	}
	return c.p, nil
}

// Refreshes counts Refresh calls that fetched a placement.
func (c *CachedPlacement) Refreshes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.refreshes
}

// PlacementToProto converts a placement to its wire form (coordinator.proto).
func PlacementToProto(p *cluster.Placement) *pb.Placement {
	out := &pb.Placement{Model: p.Model, Epoch: uint64(p.Epoch)}
	for _, row := range p.Owners {
		lo := &pb.LayerOwners{}
		for _, ws := range row {
			o := &pb.Owners{}
			for _, w := range ws {
				o.Workers = append(o.Workers, string(w))
			}
			lo.Experts = append(lo.Experts, o)
		}
		out.Layers = append(out.Layers, lo)
	}
	for _, id := range p.WorkerIDs() {
		out.Workers = append(out.Workers, WorkerInfoToProto(p.Workers[id]))
	}
	return out
}

// PlacementFromProto is the inverse of PlacementToProto.
func PlacementFromProto(m *pb.Placement) *cluster.Placement {
	p := &cluster.Placement{Model: m.GetModel(), Epoch: cluster.Epoch(m.GetEpoch()), Workers: map[cluster.WorkerID]cluster.WorkerInfo{}}
	p.Owners = make([][][]cluster.WorkerID, len(m.GetLayers()))
	for l, lo := range m.GetLayers() {
		if len(lo.GetExperts()) == 0 {
			continue
		}
		p.Owners[l] = make([][]cluster.WorkerID, len(lo.GetExperts()))
		for e, o := range lo.GetExperts() {
			for _, w := range o.GetWorkers() {
				p.Owners[l][e] = append(p.Owners[l][e], cluster.WorkerID(w))
			}
		}
	}
	for _, w := range m.GetWorkers() {
		info := WorkerInfoFromProto(w)
		p.Workers[info.ID] = info
	}
	return p
}

// WorkerInfoToProto converts a worker registration to its wire form.
func WorkerInfoToProto(w cluster.WorkerInfo) *pb.WorkerInfo {
	return &pb.WorkerInfo{
		Id: string(w.ID), Addr: w.Addr, GossipAddr: w.GossipAddr, Cores: int32(w.Cores),
		MemBytes: w.MemBytes, Protocol: int32(w.Protocol), Model: w.Model, Version: w.Version,
	}
}

// WorkerInfoFromProto is the inverse of WorkerInfoToProto.
func WorkerInfoFromProto(w *pb.WorkerInfo) cluster.WorkerInfo {
	return cluster.WorkerInfo{
		ID: cluster.WorkerID(w.GetId()), Addr: w.GetAddr(), GossipAddr: w.GetGossipAddr(), Cores: int(w.GetCores()),
		MemBytes: w.GetMemBytes(), Protocol: int(w.GetProtocol()), Model: w.GetModel(), Version: w.GetVersion(),
	}
}
