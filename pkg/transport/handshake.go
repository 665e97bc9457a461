package transport

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Handshake metadata keys (see worker.proto): sent by clients on every
// call, and by servers in the response header.
const (
	MDProtocol = "switchyard-protocol" // decimal cluster.ProtocolVersion
	MDModel    = "switchyard-model"    // model fingerprint
	// MDJob names the training job whose scope on the server a call
	// addresses (ClientConfig.Job, ExpertServer.AddJob); absent for the
	// serving scope. The model is checked against that scope's.
	MDJob = "switchyard-job"
)

// identity is what one side of a call announces.
type identity struct {
	protocol int
	model    string
	job      string // "" for the serving scope
}

func (id identity) pairs() []string {
	p := []string{MDProtocol, strconv.Itoa(id.protocol), MDModel, id.model}
	if id.job != "" {
		p = append(p, MDJob, id.job)
	}
	return p
}

// serves names the scope in messages: "serves" or "serves for job X".
func (id identity) serves() string {
	if id.job == "" {
		return "serves"
	}
	return fmt.Sprintf("serves for job %q", id.job)
}

func firstValue(md metadata.MD, key string) (string, bool) {
	if v := md.Get(key); len(v) > 0 {
		return v[0], true
	}
	return "", false
}

// checkCaller is the server side: it compares the caller's metadata with
// the server's identity (who names the server in messages).
func (id identity) checkCaller(ctx context.Context, who string) error {
	md, _ := metadata.FromIncomingContext(ctx)
	p, okp := firstValue(md, MDProtocol)
	m, okm := firstValue(md, MDModel)
	switch {
	case !okp || !okm:
		return fmt.Errorf("%w: caller sent no %s/%s metadata; worker %s speaks protocol %d, %s model %q",
			ErrIncompatible, MDProtocol, MDModel, who, id.protocol, id.serves(), id.model)
	case p != strconv.Itoa(id.protocol):
		return fmt.Errorf("%w: protocol version mismatch: caller speaks %s, worker %s speaks %d",
			ErrIncompatible, p, who, id.protocol)
	case m != id.model:
		return fmt.Errorf("%w: model mismatch: caller runs %q, worker %s %s %q",
			ErrIncompatible, m, who, id.serves(), id.model)
	}
	return nil
}

// checkServer is the client side: it compares the server's response
// header with the client's identity.
func (id identity) checkServer(md metadata.MD) error {
	p, okp := firstValue(md, MDProtocol)
	m, okm := firstValue(md, MDModel)
	j, _ := firstValue(md, MDJob)
	switch {
	case !okp || !okm:
		return fmt.Errorf("%w: server sent no %s/%s header; we speak protocol %d, model %q",
			ErrIncompatible, MDProtocol, MDModel, id.protocol, id.model)
	case p != strconv.Itoa(id.protocol):
		return fmt.Errorf("%w: protocol version mismatch: server speaks %s, we speak %d",
			ErrIncompatible, p, id.protocol)
	case m != id.model:
		return fmt.Errorf("%w: model mismatch: server serves %q, we run %q",
			ErrIncompatible, m, id.model)
	case j != id.job:
		// A server that predates job scopes ignores MDJob and answers from
		// its serving scope.
		return fmt.Errorf("%w: job scope mismatch: server answered for job %q, we train job %q",
			ErrIncompatible, j, id.job)
	}
	return nil
}

// unaryInterceptor adds the handshake metadata to every unary call and
// checks the server's header on success.
func (id identity) unaryInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx = metadata.AppendToOutgoingContext(ctx, id.pairs()...)
	var hdr metadata.MD
	if err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&hdr))...); err != nil {
		return fromRPCError(err)
	}
	return id.checkServer(hdr)
}

// streamInterceptor adds the handshake metadata to every stream and checks
// the server's header when the first message arrives.
func (id identity) streamInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, id.pairs()...)
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, fromRPCError(err)
	}
	return &checkedStream{ClientStream: cs, id: id}, nil
}

type checkedStream struct {
	grpc.ClientStream
	id      identity
	checked bool
}

func (s *checkedStream) RecvMsg(m any) error {
	if err := s.ClientStream.RecvMsg(m); err != nil {
		if err == io.EOF {
			return err
		}
		return fromRPCError(err)
	}
	if !s.checked {
		s.checked = true
		md, err := s.Header()
		if err != nil {
			return err
		}
		if err := s.id.checkServer(md); err != nil {
			return err
		}
	}
	return nil
}
