package coordinator

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Service is the Coordinator gRPC service (proto/switchyard/v1,
// coordinator.proto): a read-only view of the cluster as etcd holds it,
// for clients that speak gRPC rather than etcd. Every coordinator serves
// it, leader or not (the answers come from etcd, not from the leader's
// memory). Register it with pb.RegisterCoordinatorServer.
type Service struct {
	pb.UnimplementedCoordinatorServer
	Registry *registry.Registry
	// Name is this coordinator's name in the election.
	Name string
}

// Status summarizes the cluster: the leader, the registered workers with
// the experts each holds (summed over the models' placements), and each
// model's placement epoch with its experts that have no live copy.
func (s *Service) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	leader, _, err := s.Registry.Leader(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	set, err := s.Registry.Workers(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	models, _, err := s.Registry.Models(ctx)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	live := map[cluster.WorkerID]bool{}
	for _, w := range set.Workers {
		live[w.ID] = true
	}
	owned := map[cluster.WorkerID]int{}
	resp := &pb.StatusResponse{Cluster: s.Registry.Cluster(), Coordinator: s.Name, Leader: leader, Protocol: cluster.ProtocolVersion}
	for _, m := range models {
		p, _, err := s.Registry.Placement(ctx, m.Fingerprint)
		if err != nil {
			return nil, status.Error(codes.Unavailable, err.Error())
		}
		ms := &pb.ModelStatus{Model: m.Fingerprint}
		if p != nil {
			ms.Epoch = uint64(p.Epoch)
			for _, row := range p.Owners {
				for _, ws := range row {
					for _, w := range ws {
						owned[w]++
					}
				}
			}
			ms.UnplacedExperts = int32(len(p.Unowned(func(w cluster.WorkerID) bool { return live[w] })))
		} else {
			ms.UnplacedExperts = int32(len(m.MoELayers) * m.Experts)
		}
		resp.Models = append(resp.Models, ms)
	}
	for _, w := range set.Workers {
		resp.Workers = append(resp.Workers, &pb.WorkerStatus{
			Info: transport.WorkerInfoToProto(w), State: pb.WorkerState_WORKER_STATE_ALIVE, ExpertsOwned: int32(owned[w.ID]),
		})
	}
	return resp, nil
}

// GetPlacement returns a model's placement, or only not_modified when the
// caller already knows its epoch. NotFound when the model has none yet.
func (s *Service) GetPlacement(ctx context.Context, req *pb.GetPlacementRequest) (*pb.GetPlacementResponse, error) {
	if req.GetModel() == "" {
		return nil, status.Error(codes.InvalidArgument, "coordinator: GetPlacement needs a model fingerprint")
	}
	p, _, err := s.Registry.Placement(ctx, req.GetModel())
	switch {
	case err != nil:
		return nil, status.Error(codes.Unavailable, err.Error())
	case p == nil:
		return nil, status.Errorf(codes.NotFound, "coordinator: model %s has no placement in cluster %q", req.GetModel(), s.Registry.Cluster())
	case req.GetKnownEpoch() != 0 && uint64(p.Epoch) == req.GetKnownEpoch():
		return &pb.GetPlacementResponse{NotModified: true}, nil
	}
	return &pb.GetPlacementResponse{Placement: transport.PlacementToProto(p)}, nil
}
