package transport

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var (
	// ErrIncompatible is wrapped by errors refusing a peer with another
	// protocol version or model fingerprint.
	ErrIncompatible = errors.New("incompatible peer")
	// ErrBadRequest is wrapped by errors for malformed expert requests.
	ErrBadRequest = errors.New("bad expert request")
	// ErrDraining is wrapped by errors from a worker that is shutting down;
	// callers retry on another replica.
	ErrDraining = errors.New("worker draining")
	// ErrPeerUnavailable is wrapped by errors from a peer that could not be
	// reached or did not answer in time.
	ErrPeerUnavailable = errors.New("peer unavailable")
	// ErrNoReplica is wrapped by Compute's error when an expert has no
	// replica left to try.
	ErrNoReplica = errors.New("no live replica")
	// ErrNoForward is wrapped by errors refusing a training backward whose
	// forward is not held: never sent or failed, already consumed by an
	// earlier backward (a duplicate), or replaced by a newer forward (a
	// stale backward).
	ErrNoForward = errors.New("no saved training forward")
	// ErrUnknownJob is wrapped by errors refusing a call for a training job
	// the worker has no scope for (ExpertServer.AddJob): the job has not
	// started on the worker yet, or has ended there. It wraps
	// ErrIncompatible, whose reason (INCOMPATIBLE) it travels with.
	ErrUnknownJob = fmt.Errorf("%w: unknown training job", ErrIncompatible)
)

// errorDomain is the google.rpc.ErrorInfo domain of Switchyard's errors.
const errorDomain = "switchyard.dev"

// errorTable is the one mapping between Go errors, wire reasons and gRPC
// codes, used in both directions: the server labels an error with the
// first entry whose err matches (errors.Is); the client turns a reason back
// into a *RemoteError that matches the entry's err (NOT_OWNED also matches
// cluster.ErrStalePlacement, since the cure is the same: re-read the
// placement; DRAINING also matches ErrPeerUnavailable: try another
// replica).
var errorTable = []struct {
	err    error
	reason pb.ErrorReason
	code   codes.Code
}{
	{expert.ErrNotOwned, pb.ErrorReason_ERROR_REASON_NOT_OWNED, codes.FailedPrecondition},
	{cluster.ErrStalePlacement, pb.ErrorReason_ERROR_REASON_STALE_PLACEMENT, codes.FailedPrecondition},
	{ErrIncompatible, pb.ErrorReason_ERROR_REASON_INCOMPATIBLE, codes.FailedPrecondition},
	{ErrBadRequest, pb.ErrorReason_ERROR_REASON_BAD_REQUEST, codes.InvalidArgument},
	{ErrDraining, pb.ErrorReason_ERROR_REASON_DRAINING, codes.Unavailable},
	{ErrNoForward, pb.ErrorReason_ERROR_REASON_NO_FORWARD, codes.FailedPrecondition},
	{expert.ErrNotFloat32, pb.ErrorReason_ERROR_REASON_NOT_FLOAT32, codes.FailedPrecondition},
}

// classify labels a server-side error with its wire reason and gRPC code.
func classify(err error) (pb.ErrorReason, codes.Code) {
	for _, e := range errorTable {
		if errors.Is(err, e.err) {
			return e.reason, e.code
		}
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return pb.ErrorReason_ERROR_REASON_UNSPECIFIED, codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return pb.ErrorReason_ERROR_REASON_UNSPECIFIED, codes.Canceled
	}
	return pb.ErrorReason_ERROR_REASON_UNSPECIFIED, codes.Internal
}

// errorFrame encodes a per-request error for an ExpertFrame.
func errorFrame(err error) *pb.ErrorStatus {
	reason, code := classify(err)
	st := &pb.ErrorStatus{Reason: reason, Code: int32(code), Message: err.Error()}
	var no *notOwnedError
	if errors.As(err, &no) {
		st.Missing = no.missing
	}
	return st
}

// notOwnedError is an owner's NOT_OWNED refusal with the experts it lacks.
type notOwnedError struct {
	missing []int32 // of the request's layer, ascending
	err     error   // wraps expert.ErrNotOwned
}

func (e *notOwnedError) Error() string { return e.err.Error() }
func (e *notOwnedError) Unwrap() error { return e.err }

// statusError turns a server-side error into a gRPC status error carrying
// its reason as a google.rpc.ErrorInfo detail.
func statusError(err error) error {
	reason, code := classify(err)
	st := status.New(code, err.Error())
	if reason != pb.ErrorReason_ERROR_REASON_UNSPECIFIED {
		if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: errorDomain}); derr == nil {
			st = d
		}
	}
	return st.Err()
}

// RemoteError is an error a peer reported, decoded through errorTable:
// errors.Is(err, X) holds for the table entry of its Reason (and
// NOT_OWNED also matches cluster.ErrStalePlacement).
type RemoteError struct {
	Reason pb.ErrorReason
	Code   codes.Code
	Msg    string // the peer's message
	// Missing: for NOT_OWNED, the request's experts the peer lacks (nil:
	// not said, treat every expert of the request as missing).
	Missing []int32
}

func (e *RemoteError) Error() string { return e.Msg }

// Is implements errors.Is through errorTable.
func (e *RemoteError) Is(target error) bool {
	if e.Reason == pb.ErrorReason_ERROR_REASON_NOT_OWNED && target == cluster.ErrStalePlacement {
		return true
	}
	if e.Reason == pb.ErrorReason_ERROR_REASON_DRAINING && target == ErrPeerUnavailable {
		return true
	}
	for _, t := range errorTable {
		if t.reason == e.Reason {
			return t.err == target
		}
	}
	return false
}

// GRPCStatus lets status.FromError see the original code.
func (e *RemoteError) GRPCStatus() *status.Status { return status.New(e.Code, e.Msg) }

// fromErrorFrame decodes a per-request error frame.
func fromErrorFrame(s *pb.ErrorStatus) error {
	return &RemoteError{Reason: s.Reason, Code: codes.Code(s.Code), Msg: s.Message, Missing: s.Missing}
}

// fromRPCError decodes an error returned by a gRPC call: statuses with a
// Switchyard ErrorInfo become RemoteErrors; transport-level failures
// (unreachable peer, reset stream, deadline) wrap ErrPeerUnavailable;
// anything else is returned as is.
func fromRPCError(err error) error {
	if err == nil {
		return nil
	}
	var re *RemoteError
	if errors.As(err, &re) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == errorDomain {
			if r, ok := pb.ErrorReason_value[info.Reason]; ok {
				return &RemoteError{Reason: pb.ErrorReason(r), Code: st.Code(), Msg: st.Message()}
			}
		}
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.Internal, codes.Unknown:
		return fmt.Errorf("%w: %s: %s", ErrPeerUnavailable, st.Code(), st.Message())
	}
	return err
}

// PeerError is a training exchange that failed on one worker: which
// worker, at which address ("in process" for the caller's own scope), in
// which operation. errors.Is(err, ErrPeerUnavailable) tells whether the
// worker could not be reached (its process or host is likely gone) from an
// answer it gave.
type PeerError struct {
	Worker cluster.WorkerID
	Addr   string
	Op     string // e.g. "forward of layer 3"
	Err    error
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("transport: %s on worker %s (%s): %v", e.Op, e.Worker, e.Addr, e.Err)
}

func (e *PeerError) Unwrap() error { return e.Err }
