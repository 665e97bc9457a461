package safetensors

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// expertTensors is a toy MoE checkpoint: per layer a router and E experts
// with three matrices each, every tensor tagged with its index so a read of
// the wrong tensor shows.
func expertTensors(layers, experts int) []Tensor {
	var ts []Tensor
	tag := 0
	add := func(name string, shape ...int) {
		n := 1
		for _, s := range shape {
			n *= s
		}
		ts = append(ts, F32Tensor(name, shape, seq(tag, n)))
		tag++
	}
	add("model.embed_tokens.weight", 16, 8)
	for l := range layers {
		add(fmt.Sprintf("model.layers.%d.mlp.gate.weight", l), experts, 8)
		for e := range experts {
			for _, w := range []string{"gate_proj", "up_proj", "down_proj"} {
				add(fmt.Sprintf("model.layers.%d.mlp.experts.%d.%s.weight", l, e, w), 12, 8)
			}
		}
	}
	ts = append(ts, I64Tensor("step", nil, []int64{7}))
	ts = append(ts, BF16Tensor("model.norm.weight", []int{8}, []uint16{0x3f80, 0x4000, 0, 1, 2, 3, 4, 0xbf80}))
	return ts
}

// checkAll reads every tensor of r and compares it with the tensors written.
func checkAll(t *testing.T, r Reader, want []Tensor) {
	t.Helper()
	var names []string
	for _, w := range want {
		names = append(names, w.Name)
	}
	slices.Sort(names)
	if got := r.Names(); !slices.Equal(got, names) {
		t.Fatalf("names %v, want %v", got, names)
	}
	for _, w := range want {
		if !r.Has(w.Name) {
			t.Errorf("Has(%q) = false", w.Name)
		}
		switch w.DType {
		case F32:
			got, err := r.Float32(w.Name, w.Shape...)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, []float32(w.src.(f32Source))) {
				t.Fatalf("%s: wrong data, first %v", w.Name, got[:min(3, len(got))])
			}
		case I64:
			got := make([]int64, len(w.src.(i64Source)))
			if err := r.ReadInt64(w.Name, got); err != nil || !slices.Equal(got, []int64(w.src.(i64Source))) {
				t.Fatalf("%s: %v, %v", w.Name, got, err)
			}
		case BF16:
			got := make([]uint16, len(w.src.(u16Source)))
			if err := r.ReadBF16(w.Name, got, w.Shape...); err != nil || !slices.Equal(got, []uint16(w.src.(u16Source))) {
				t.Fatalf("%s: %v, %v", w.Name, got, err)
			}
		}
		info, err := r.Info(w.Name)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := r.Raw(w.Name)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, info.Size)
		if err := r.ReadRaw(w.Name, buf); err != nil || !slices.Equal(buf, raw) || int64(len(raw)) != info.Size {
			t.Fatalf("%s: ReadRaw disagrees with Raw: %v", w.Name, err)
		}
	}
}

func TestOpenDirSingleFile(t *testing.T) {
	dir := t.TempDir()
	want := expertTensors(2, 4)
	if err := Write(filepath.Join(dir, ModelFile), want, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	// Loose files beside model.safetensors are ignored.
	writeBytes(t, dir, "golden.safetensors", encode(t, []Tensor{F32Tensor("other", []int{1}, []float32{1})}, nil))
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkAll(t, s, want)
	if files := s.Files(); len(files) != 1 || filepath.Base(files[0]) != ModelFile {
		t.Errorf("files %v", files)
	}
	f, err := s.FileOf("step")
	if err != nil || f.Metadata()["format"] != "pt" {
		t.Errorf("FileOf: %v, %v", f, err)
	}
	_, err = s.Float32("model.layers.9.mlp.gate.weight")
	wantErr(t, err, ErrNotFound, dir, `tensor "model.layers.9.mlp.gate.weight"`)
}

func TestOpenDirLooseFiles(t *testing.T) {
	dir := t.TempDir()
	all := expertTensors(1, 2)
	if err := Write(filepath.Join(dir, "a.safetensors"), all[:3], nil); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, "b.safetensors"), all[3:], nil); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "config.json"), []byte("{}"), 0o644)
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkAll(t, s, all)
	s.Close()

	// The same name in two files is refused.
	if err := Write(filepath.Join(dir, "c.safetensors"), all[4:5], nil); err != nil {
		t.Fatal(err)
	}
	_, err = OpenDir(dir)
	wantErr(t, err, ErrCorrupt, filepath.Join(dir, "c.safetensors"), fmt.Sprintf("tensor %q: also present in %s", all[4].Name, filepath.Join(dir, "b.safetensors")))

	s, err = OpenFiles(filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	checkAll(t, s, all)
	s.Close()

	_, err = OpenDir(t.TempDir())
	wantErr(t, err, fs.ErrNotExist, "no model.safetensors.index.json, model.safetensors or *.safetensors file")
}

// A sharded checkpoint written by WriteSharded reads back through OpenDir;
// shards open only when one of their tensors is used.
func TestShardedRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := expertTensors(3, 4) // 1 + 3*(1+12) + 1 tensors
	const maxShard = 4 * 1024   // bytes: about ten 384-byte expert matrices per shard
	if err := WriteSharded(dir, want, map[string]string{"format": "pt"}, maxShard); err != nil {
		t.Fatal(err)
	}
	s, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	files := s.Files()
	if len(files) < 3 {
		t.Fatalf("only %d shards: %v", len(files), files)
	}
	for i, f := range files {
		if want := ShardFileName(i, len(files)); filepath.Base(f) != want {
			t.Errorf("shard %d is %s, want %s", i, f, want)
		}
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s: mode %v", f, st.Mode())
		}
	}
	for _, sh := range s.shards {
		if sh.f.Load() != nil {
			t.Fatalf("%s opened before use", sh.path)
		}
	}
	name := "model.layers.2.mlp.experts.3.down_proj.weight"
	info, err := s.Info(name)
	if err != nil {
		t.Fatal(err)
	}
	opened := 0
	for _, sh := range s.shards {
		if sh.f.Load() != nil {
			opened++
			if sh.path != info.File {
				t.Errorf("opened %s, tensor is in %s", sh.path, info.File)
			}
		}
	}
	if opened != 1 {
		t.Errorf("%d shards opened to read one tensor", opened)
	}
	checkAll(t, s, want)
	if err := s.Verify(); err != nil {
		t.Fatal(err)
	}
	// Every shard respects the limit, except one holding a single bigger tensor.
	for _, f := range files {
		sf, err := Open(f)
		if err != nil {
			t.Fatal(err)
		}
		var total int64
		for _, n := range sf.Names() {
			in, _ := sf.Info(n)
			total += in.Size
		}
		if total > maxShard && len(sf.Names()) > 1 {
			t.Errorf("%s holds %d bytes of data", f, total)
		}
		if sf.Metadata()["format"] != "pt" {
			t.Errorf("%s lacks metadata", f)
		}
		sf.Close()
	}
	idx, err := os.ReadFile(filepath.Join(dir, IndexFile))
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, w := range want {
		n, _ := byteSize(w.DType, w.Shape)
		total += n
	}
	if !strings.Contains(string(idx), fmt.Sprintf(`"total_size": %d`, total)) || !strings.HasSuffix(string(idx), "}\n") {
		t.Errorf("index:\n%s", idx)
	}

	// No second checkpoint into the same folder.
	err = WriteSharded(dir, want, nil, maxShard)
	wantErr(t, err, ErrInvalid, IndexFile, "already exists")
	if !errors.Is(err, fs.ErrExist) {
		t.Errorf("%v does not match fs.ErrExist", err)
	}

	// A read after Close fails instead of reopening.
	s.Close()
	_, err = s.Float32(name)
	if !errors.Is(err, fs.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
}

func TestPlanShards(t *testing.T) {
	cases := []struct {
		sizes []int64
		max   int64
		want  [][]int
	}{
		{nil, 10, [][]int{nil}},
		{[]int64{4, 4, 4}, 8, [][]int{{0, 1}, {2}}},
		{[]int64{4, 20, 4}, 8, [][]int{{0}, {1}, {2}}},
		{[]int64{8, 0, 8}, 8, [][]int{{0, 1}, {2}}},
		{[]int64{3, 3, 3, 3}, 100, [][]int{{0, 1, 2, 3}}},
	}
	for _, c := range cases {
		if got := planShards(c.sizes, c.max); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("planShards(%v, %d) = %v, want %v", c.sizes, c.max, got, c.want)
		}
	}
	err := WriteSharded(t.TempDir(), nil, nil, 0)
	wantErr(t, err, ErrInvalid, "max shard size 0 bytes")
}

// shardedDir writes a small three-shard checkpoint and returns its folder.
func shardedDir(t *testing.T) (string, []Tensor) {
	t.Helper()
	dir := t.TempDir()
	ts := []Tensor{
		F32Tensor("a", []int{4}, seq(1, 4)),
		F32Tensor("b", []int{4}, seq(2, 4)),
		F32Tensor("c", []int{4}, seq(3, 4)),
	}
	if err := WriteSharded(dir, ts, nil, 16); err != nil {
		t.Fatal(err)
	}
	return dir, ts
}

func writeIndex(t *testing.T, dir, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, IndexFile), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Inconsistent sharded checkpoints give clear errors.
func TestShardedErrors(t *testing.T) {
	s1, s2, s3 := ShardFileName(0, 3), ShardFileName(1, 3), ShardFileName(2, 3)

	t.Run("shard missing", func(t *testing.T) {
		dir, _ := shardedDir(t)
		os.Remove(filepath.Join(dir, s2))
		_, err := OpenDir(dir)
		wantErr(t, err, ErrCorrupt, IndexFile, `tensor "b"`, "shard "+filepath.Join(dir, s2)+" is missing")
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%v does not match fs.ErrNotExist", err)
		}
	})
	t.Run("tensor missing from its shard", func(t *testing.T) {
		dir, _ := shardedDir(t)
		writeIndex(t, dir, fmt.Sprintf(`{"weight_map":{"a":%q,"b":%q,"c":%q,"x":%q}}`, s1, s2, s3, s2))
		s, err := OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Float32("b"); err != nil {
			t.Fatal(err)
		}
		_, err = s.Float32("x")
		wantErr(t, err, ErrCorrupt, filepath.Join(dir, s2), `tensor "x": listed in model.safetensors.index.json but missing from this shard`)
		wantErr(t, s.Verify(), ErrCorrupt, `tensor "x": listed in`)
	})
	t.Run("name listed twice", func(t *testing.T) {
		dir, _ := shardedDir(t)
		writeIndex(t, dir, fmt.Sprintf(`{"weight_map":{"a":%q,"b":%q,"c":%q,"a":%q}}`, s1, s2, s3, s3))
		_, err := OpenDir(dir)
		wantErr(t, err, ErrCorrupt, IndexFile, `tensor "a": listed twice in weight_map (shards `+s1+" and "+s3+")")
	})
	t.Run("name in two shards", func(t *testing.T) {
		dir, ts := shardedDir(t)
		// Shard 3 also holds "a"; the index only says where one copy is.
		if err := Write(filepath.Join(dir, s3), []Tensor{ts[0], ts[2]}, nil); err != nil {
			t.Fatal(err)
		}
		s, err := OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		wantErr(t, s.Verify(), ErrCorrupt, filepath.Join(dir, s3), `tensor "a": also present in `+filepath.Join(dir, s1))
	})
	t.Run("tensor not in the index", func(t *testing.T) {
		dir, ts := shardedDir(t)
		if err := Write(filepath.Join(dir, s3), []Tensor{ts[2], F32Tensor("d", []int{1}, []float32{4})}, nil); err != nil {
			t.Fatal(err)
		}
		s, err := OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if s.Has("d") {
			t.Error("d is visible though the index does not list it")
		}
		err = s.Verify()
		wantErr(t, err, ErrCorrupt, filepath.Join(dir, s3), `tensor "d": present in this shard but not listed`)
	})
	t.Run("misfiled tensor", func(t *testing.T) {
		dir, _ := shardedDir(t)
		writeIndex(t, dir, fmt.Sprintf(`{"weight_map":{"a":%q,"b":%q,"c":%q}}`, s2, s1, s3))
		s, err := OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		_, err = s.Raw("a")
		wantErr(t, err, ErrCorrupt, `tensor "a": listed in`)
		wantErr(t, s.Verify(), ErrCorrupt, `tensor "a": present in this shard but model.safetensors.index.json puts it in`)
	})
	t.Run("corrupt shard", func(t *testing.T) {
		dir, _ := shardedDir(t)
		writeBytes(t, dir, s2, crafted(`{"b":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}`, 8))
		s, err := OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if _, err := s.Float32("a"); err != nil {
			t.Fatal(err)
		}
		_, err = s.Float32("b")
		wantErr(t, err, ErrCorrupt, filepath.Join(dir, s2), `tensor "b": data_offsets [0,8] hold 8 bytes, shape [4] F32 needs 16`)
	})
	t.Run("shards without index", func(t *testing.T) {
		dir, _ := shardedDir(t)
		os.Remove(filepath.Join(dir, IndexFile))
		_, err := OpenDir(dir)
		wantErr(t, err, ErrCorrupt, dir, "shard file "+s1+" but no model.safetensors.index.json")
	})
	indexCases := []struct{ name, body, sub string }{
		{"index not JSON", `{"weight_map":`, "index.json: header is not valid JSON"},
		{"index without weight_map", `{"metadata":{}}`, "index has no weight_map"},
		{"index duplicate key", `{"weight_map":{},"weight_map":{}}`, `key "weight_map" appears twice`},
		{"index escapes the folder", `{"weight_map":{"a":"../model-00001-of-00003.safetensors"}}`, `tensor "a": shard "../model-00001-of-00003.safetensors" is not a path inside the folder`},
		{"index absolute path", `{"weight_map":{"a":"/etc/passwd"}}`, `is not a path inside the folder`},
		{"index value not a string", `{"weight_map":{"a":3}}`, `tensor "a": weight_map value is not a file name`},
		{"index trailing data", `{"weight_map":{}} {}`, "data after the index"},
	}
	for _, c := range indexCases {
		t.Run(c.name, func(t *testing.T) {
			dir, _ := shardedDir(t)
			writeIndex(t, dir, c.body)
			_, err := OpenDir(dir)
			wantErr(t, err, ErrCorrupt, c.sub)
		})
	}
}
