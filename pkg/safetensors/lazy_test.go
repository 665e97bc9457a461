package safetensors

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// countingReaderAt records every byte range read.
type countingReaderAt struct {
	r      io.ReaderAt
	mu     sync.Mutex
	ranges [][2]int64 // [off, off+len)
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.ranges = append(c.ranges, [2]int64{off, off + int64(len(p))})
	c.mu.Unlock()
	return c.r.ReadAt(p, off)
}

func (c *countingReaderAt) take() [][2]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.ranges
	c.ranges = nil
	return r
}

// Opening reads only the length and the header; reading a tensor reads only
// that tensor's bytes.
func TestReadsAreLazy(t *testing.T) {
	b := encode(t, []Tensor{
		F32Tensor("big", []int{1 << 18}, seq(1, 1<<18)), // 1 MiB
		F32Tensor("small", []int{3}, seq(2, 3)),
		F32AsBF16Tensor("mid", []int{1000}, seq(3, 1000)),
	}, nil)
	c := &countingReaderAt{r: bytes.NewReader(b)}
	f, err := NewFile(c, int64(len(b)), "lazy.safetensors")
	if err != nil {
		t.Fatal(err)
	}
	hdrEnd := f.dataOff
	if got := c.take(); !slices.Equal(got, [][2]int64{{0, 8}, {8, hdrEnd}}) {
		t.Errorf("open read %v, want only [0,8) and [8,%d)", got, hdrEnd)
	}
	for _, name := range []string{"small", "mid", "big"} {
		info, _ := f.Info(name)
		if _, err := f.Float32(name); err != nil {
			t.Fatal(err)
		}
		var total int64
		for _, r := range c.take() {
			if r[0] < info.Offset || r[1] > info.Offset+info.Size {
				t.Errorf("reading %s touched [%d,%d), outside its [%d,%d)", name, r[0], r[1], info.Offset, info.Offset+info.Size)
			}
			total += r[1] - r[0]
		}
		if total != info.Size {
			t.Errorf("reading %s read %d bytes, want %d", name, total, info.Size)
		}
	}
}

// Reading one small tensor of a file whose other tensor is 4 GiB (sparse, so
// the test costs no disk) reads only that tensor.
func TestSparseHugeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge.safetensors")
	const huge = 4 << 30
	hdr := fmt.Sprintf(`{"experts.0":{"dtype":"BF16","shape":[%d],"data_offsets":[0,%d]},"router":{"dtype":"F32","shape":[2],"data_offsets":[%d,%d]}}`,
		huge/2, huge, huge, huge+8)
	b := crafted(hdr, 0)
	fh, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fh.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := fh.Truncate(int64(len(b)) + huge + 8); err != nil {
		t.Skipf("no sparse files here: %v", err)
	}
	if _, err := fh.WriteAt(le.AppendUint32(le.AppendUint32(nil, 0x3f800000), 0x40000000), int64(len(b))+huge); err != nil {
		t.Fatal(err)
	}
	fh.Close()

	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := &countingReaderAt{r: f.r}
	f.r = c
	got, err := f.Float32("router", 2)
	if err != nil || !slices.Equal(got, []float32{1, 2}) {
		t.Fatalf("router = %v, %v", got, err)
	}
	if rs := c.take(); len(rs) != 1 || rs[0][1]-rs[0][0] != 8 {
		t.Errorf("reads %v, want one of 8 bytes", rs)
	}
	if info, _ := f.Info("experts.0"); info.Size != huge {
		t.Errorf("info %+v", info)
	}
}

// Many goroutines reading random tensors of a sharded set at once, into
// their own buffers and through the allocating accessors, all get the right
// data (run with -race).
func TestConcurrentReads(t *testing.T) {
	dir := t.TempDir()
	want := expertTensors(4, 8)
	if err := WriteSharded(dir, want, nil, 8<<10); err != nil {
		t.Fatal(err)
	}
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			var buf []float32
			for range 200 {
				w := want[rng.IntN(len(want))]
				if w.DType != F32 {
					continue
				}
				src := []float32(w.src.(f32Source))
				var got []float32
				var err error
				if rng.IntN(2) == 0 {
					got, err = s.Float32(w.Name, w.Shape...)
				} else {
					buf = slices.Grow(buf[:0], len(src))[:len(src)]
					err = s.ReadFloat32(w.Name, buf, w.Shape...)
					got = buf
				}
				if err == nil && !slices.Equal(got, src) {
					err = fmt.Errorf("%s: got data starting %v, want %v", w.Name, got[0], src[0])
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
