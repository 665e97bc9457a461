package transport

import (
	"math/big"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/pkg/expert"
	pb "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// FuzzExpertHeader feeds arbitrary ExpertFrame headers (as a peer sends
// them: protobuf bytes) to the server's header check. Invariant: a header
// it accepts declares n > 0 rows whose float32 payload, computed exactly,
// fits MaxRequestBytes, and matches the header's row counts and shape; no
// input panics.
func FuzzExpertHeader(f *testing.F) {
	const hidden, maxBytes = 4096, 256 << 20
	seed := func(fr *pb.ExpertFrame) {
		b, err := proto.Marshal(fr)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(&pb.ExpertFrame{Experts: []int32{0, 1}, Rows: []int32{2, 3}, Shape: []int64{5, hidden}, Dtype: pb.DType_DTYPE_F32})
	seed(&pb.ExpertFrame{Experts: []int32{0, 1}, Rows: []int32{1<<31 - 1, 1<<31 - 1}, Shape: []int64{1<<32 - 2, hidden}, Dtype: pb.DType_DTYPE_F32})
	seed(&pb.ExpertFrame{Experts: []int32{0}, Rows: []int32{-1}, Shape: []int64{-1, hidden}, Dtype: pb.DType_DTYPE_F32})
	seed(&pb.ExpertFrame{Experts: []int32{0}, Rows: []int32{16384}, Shape: []int64{16384, hidden}, Dtype: pb.DType_DTYPE_F32})
	seed(&pb.ExpertFrame{Experts: []int32{0}, Rows: []int32{16385}, Shape: []int64{16385, hidden}, Dtype: pb.DType_DTYPE_F32})
	seed(&pb.ExpertFrame{Experts: []int32{0}, Rows: []int32{1}, Shape: []int64{1, hidden}, Dtype: pb.DType_DTYPE_F32, Phase: pb.Phase_PHASE_TRAIN_FORWARD, Source: "r", TrainSeq: 1})

	srv, err := NewExpertServer(expert.NewStore(), ServerConfig{Model: testModel, Hidden: hidden, MaxRequestBytes: maxBytes})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(srv.Stop)
	f.Fuzz(func(t *testing.T, raw []byte) {
		fr := &pb.ExpertFrame{}
		if proto.Unmarshal(raw, fr) != nil {
			return
		}
		n, err := srv.checkHeader(srv.serving, fr)
		if err != nil {
			return
		}
		sum := new(big.Int)
		for _, r := range fr.Rows {
			sum.Add(sum, big.NewInt(int64(r)))
		}
		bytes := new(big.Int).Mul(sum, big.NewInt(hidden*4))
		switch {
		case n <= 0 || sum.Cmp(big.NewInt(int64(n))) != 0:
			t.Fatalf("accepted n = %d for row counts summing to %v", n, sum)
		case bytes.Cmp(big.NewInt(maxBytes)) > 0:
			t.Fatalf("accepted %v payload bytes over the %d limit", bytes, maxBytes)
		case len(fr.Shape) != 2 || fr.Shape[0] != int64(n) || fr.Shape[1] != hidden:
			t.Fatalf("accepted shape %v for %d rows", fr.Shape, n)
		}
	})
}

// TestHeaderRowsCannotOverflow: a header whose rows x hidden x 4 wraps
// int64 (2^18 experts of 2^31-1 rows at hidden 8192: about 2^64 bytes,
// which wraps to -8 GiB) was accepted by a check that multiplied, and the
// wrapped size then sized the request's buffer. It is refused.
func TestHeaderRowsCannotOverflow(t *testing.T) {
	const hidden = 8192
	srv, err := NewExpertServer(expert.NewStore(), ServerConfig{Model: testModel, Hidden: hidden})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	const k = 1 << 18
	fr := &pb.ExpertFrame{Dtype: pb.DType_DTYPE_F32, Experts: make([]int32, k), Rows: make([]int32, k)}
	for i := range k {
		fr.Experts[i], fr.Rows[i] = int32(i), 1<<31-1
	}
	n := new(big.Int).Mul(big.NewInt(k), big.NewInt(1<<31-1))
	// Shape[0] is the true row count mod 2^64 (what a peer would claim so
	// that the shape check agrees with the wrapped sum).
	fr.Shape = []int64{n.Int64(), hidden}
	if _, err := srv.checkHeader(srv.serving, fr); err == nil || !strings.Contains(err.Error(), "rows") {
		t.Fatalf("a header of %v rows (%v bytes) was accepted: %v", n, new(big.Int).Mul(n, big.NewInt(hidden*4)), err)
	}
}
