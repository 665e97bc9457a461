package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// File names of a Hugging Face model folder.
const (
	// IndexFile maps tensor names to shard files in a sharded checkpoint:
	// {"metadata": {"total_size": <bytes>}, "weight_map": {name: file}}.
	IndexFile = "model.safetensors.index.json"
	// ModelFile is the single weights file of an unsharded checkpoint.
	ModelFile = "model.safetensors"
)

// shardName matches the shard files that WriteSharded and Hugging Face
// write: model-00001-of-00003.safetensors.
var shardName = regexp.MustCompile(`^.+-[0-9]{5}-of-[0-9]{5}\.safetensors$`)

// Set presents the safetensors files of a model folder as one namespace of
// tensor names. Shard files are opened on first use and stay open until
// Close; only their headers are read when they open. A Set implements
// Reader; all its methods are safe for concurrent use, except Close, which
// must not race with reads.
type Set struct {
	dir    string
	index  string            // path of the index file; "" when the set has none
	names  []string          // sorted
	where  map[string]*shard // tensor name -> shard holding it
	shards []*shard          // sorted by path
	closed atomic.Bool
}

type shard struct {
	path string
	mu   sync.Mutex           // serializes opening and closing
	f    atomic.Pointer[File] // nil until opened
}

// OpenDir opens the model folder dir. It uses, in this order of preference:
//   - model.safetensors.index.json (a sharded checkpoint): the index's
//     weight_map defines the names; every shard it lists must exist, and is
//     opened (header read and validated) on first use of one of its tensors.
//     A tensor listed in the index but absent from its shard is an
//     ErrCorrupt error when it is used; Verify checks the whole set at once.
//   - model.safetensors alone.
//   - every *.safetensors file in dir, all opened now; a name present in two
//     files is an ErrCorrupt error. Files named like shards
//     (name-00001-of-00002.safetensors) without an index are refused as an
//     incomplete checkpoint.
func OpenDir(dir string) (*Set, error) {
	idx := filepath.Join(dir, IndexFile)
	if ok, err := isFile(idx); err != nil {
		return nil, err
	} else if ok {
		return openIndexed(dir, idx)
	}
	single := filepath.Join(dir, ModelFile)
	if ok, err := isFile(single); err != nil {
		return nil, err
	} else if ok {
		return openFiles(dir, []string{single})
	}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, newErr(nil, dir, "", ioCause(err), "cannot read folder")
	}
	var paths []string
	for _, de := range des {
		if de.IsDir() || !strings.HasSuffix(de.Name(), ".safetensors") {
			continue
		}
		if shardName.MatchString(de.Name()) {
			return nil, newErr(ErrCorrupt, dir, "", fs.ErrNotExist, fmt.Sprintf(
				"shard file %s but no %s (incomplete checkpoint?)", de.Name(), IndexFile))
		}
		paths = append(paths, filepath.Join(dir, de.Name()))
	}
	if len(paths) == 0 {
		return nil, newErr(nil, dir, "", fs.ErrNotExist, fmt.Sprintf("no %s, %s or *.safetensors file", IndexFile, ModelFile))
	}
	return openFiles(dir, paths)
}

// OpenFiles opens the given safetensors files now and presents them as one
// Set; a name present in two files is an ErrCorrupt error. The folder of
// the first file is reported as the Set's Dir.
func OpenFiles(paths ...string) (*Set, error) {
	if len(paths) == 0 {
		return nil, newErr(nil, "", "", nil, "OpenFiles: no files given")
	}
	return openFiles(filepath.Dir(paths[0]), paths)
}

func openFiles(dir string, paths []string) (*Set, error) {
	s := &Set{dir: dir, where: make(map[string]*shard)}
	paths = slices.Clone(paths)
	sort.Strings(paths)
	for _, p := range paths {
		f, err := Open(p)
		if err != nil {
			s.Close()
			return nil, err
		}
		sh := &shard{path: p}
		sh.f.Store(f)
		s.shards = append(s.shards, sh)
		for _, name := range f.names {
			if other := s.where[name]; other != nil {
				s.Close()
				return nil, newErr(ErrCorrupt, p, name, nil, fmt.Sprintf("also present in %s", other.path))
			}
			s.where[name] = sh
		}
	}
	s.names = make([]string, 0, len(s.where))
	for name := range s.where {
		s.names = append(s.names, name)
	}
	sort.Strings(s.names)
	return s, nil
}

func openIndexed(dir, idx string) (*Set, error) {
	st, err := os.Stat(idx)
	if err != nil {
		return nil, newErr(nil, idx, "", ioCause(err), "cannot stat")
	}
	if st.Size() > MaxHeaderSize {
		return nil, newErr(ErrCorrupt, idx, "", nil, fmt.Sprintf("index is %d bytes, over the %d-byte limit", st.Size(), MaxHeaderSize))
	}
	data, err := os.ReadFile(idx)
	if err != nil {
		return nil, newErr(nil, idx, "", ioCause(err), "cannot read")
	}
	weightMap, err := parseIndex(idx, data)
	if err != nil {
		return nil, err
	}
	s := &Set{dir: dir, index: idx, where: make(map[string]*shard, len(weightMap))}
	for name := range weightMap {
		s.names = append(s.names, name)
	}
	sort.Strings(s.names)
	byFile := make(map[string]*shard)
	for _, name := range s.names {
		file := weightMap[name]
		local := filepath.Clean(filepath.FromSlash(file))
		if !filepath.IsLocal(local) {
			return nil, newErr(ErrCorrupt, idx, name, nil, fmt.Sprintf("shard %q is not a path inside the folder", file))
		}
		sh := byFile[local]
		if sh == nil {
			sh = &shard{path: filepath.Join(dir, local)}
			ok, err := isFile(sh.path)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, newErr(ErrCorrupt, idx, name, fs.ErrNotExist, fmt.Sprintf("shard %s is missing", sh.path))
			}
			byFile[local] = sh
			s.shards = append(s.shards, sh)
		}
		s.where[name] = sh
	}
	slices.SortFunc(s.shards, func(a, b *shard) int { return strings.Compare(a.path, b.path) })
	return s, nil
}

// parseIndex returns the weight_map of an index file. A tensor listed twice
// (so possibly in two shards) is an error, as is any other duplicate key.
func parseIndex(idx string, data []byte) (map[string]string, error) {
	p := &headerParser{file: idx, dec: json.NewDecoder(bytes.NewReader(data))}
	p.dec.UseNumber()
	tok, err := p.token("", "reading the index")
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('{') {
		return nil, p.corrupt("", nil, "index is not a JSON object")
	}
	var weightMap map[string]string
	seen := map[string]bool{}
	for p.dec.More() {
		tok, err := p.token("", "reading a key")
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, p.corrupt("", nil, "key %q appears twice", key)
		}
		seen[key] = true
		if key != "weight_map" {
			var skip json.RawMessage
			if err := p.dec.Decode(&skip); err != nil {
				return nil, p.corrupt("", err, "index is not valid JSON (key %q)", key)
			}
			continue
		}
		if tok, err = p.token("", "reading weight_map"); err != nil {
			return nil, err
		}
		if tok != json.Delim('{') {
			return nil, p.corrupt("", nil, "weight_map is not an object of strings")
		}
		weightMap = make(map[string]string)
		for p.dec.More() {
			tok, err := p.token("", "reading weight_map")
			if err != nil {
				return nil, err
			}
			name, _ := tok.(string)
			if tok, err = p.token(name, "reading weight_map"); err != nil {
				return nil, err
			}
			file, ok := tok.(string)
			if !ok || file == "" {
				return nil, p.corrupt(name, nil, "weight_map value is not a file name")
			}
			if prev, dup := weightMap[name]; dup {
				return nil, p.corrupt(name, nil, "listed twice in weight_map (shards %s and %s)", prev, file)
			}
			weightMap[name] = file
		}
		if _, err := p.token("", "closing weight_map"); err != nil {
			return nil, err
		}
	}
	if _, err := p.token("", "closing the index"); err != nil {
		return nil, err
	}
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, p.corrupt("", err, "data after the index's JSON object")
	}
	if weightMap == nil {
		return nil, p.corrupt("", nil, "index has no weight_map")
	}
	return weightMap, nil
}

// isFile reports whether path exists (following symlinks, as Hugging Face
// cache snapshots use them); other stat failures are errors.
func isFile(path string) (bool, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, newErr(nil, path, "", ioCause(err), "cannot stat")
	}
	return !st.IsDir(), nil
}

// Dir returns the folder the set was opened from.
func (s *Set) Dir() string { return s.dir }

// Files returns the paths of the set's files, sorted, in a new slice.
func (s *Set) Files() []string {
	out := make([]string, len(s.shards))
	for i, sh := range s.shards {
		out[i] = sh.path
	}
	return out
}

// FileOf returns the open file holding tensor name (opening it if needed),
// e.g. to read its Metadata. The File belongs to the Set: do not Close it.
func (s *Set) FileOf(name string) (*File, error) {
	return s.fileFor(name)
}

// Names implements Reader.
func (s *Set) Names() []string { return slices.Clone(s.names) }

// Has implements Reader.
func (s *Set) Has(name string) bool { return s.where[name] != nil }

// Info implements Reader.
func (s *Set) Info(name string) (TensorInfo, error) {
	f, err := s.fileFor(name)
	if err != nil {
		return TensorInfo{}, err
	}
	return f.Info(name)
}

// Raw implements Reader.
func (s *Set) Raw(name string) ([]byte, error) {
	f, err := s.fileFor(name)
	if err != nil {
		return nil, err
	}
	return f.Raw(name)
}

// ReadRaw implements Reader.
func (s *Set) ReadRaw(name string, dst []byte) error {
	f, err := s.fileFor(name)
	if err != nil {
		return err
	}
	return f.ReadRaw(name, dst)
}

// Float32 implements Reader.
func (s *Set) Float32(name string, wantShape ...int) ([]float32, error) {
	f, err := s.fileFor(name)
	if err != nil {
		return nil, err
	}
	return f.Float32(name, wantShape...)
}

// ReadFloat32 implements Reader.
func (s *Set) ReadFloat32(name string, dst []float32, wantShape ...int) error {
	f, err := s.fileFor(name)
	if err != nil {
		return err
	}
	return f.ReadFloat32(name, dst, wantShape...)
}

// BF16 implements Reader.
func (s *Set) BF16(name string, wantShape ...int) ([]uint16, error) {
	f, err := s.fileFor(name)
	if err != nil {
		return nil, err
	}
	return f.BF16(name, wantShape...)
}

// ReadBF16 implements Reader.
func (s *Set) ReadBF16(name string, dst []uint16, wantShape ...int) error {
	f, err := s.fileFor(name)
	if err != nil {
		return err
	}
	return f.ReadBF16(name, dst, wantShape...)
}

// Int64 implements Reader.
func (s *Set) Int64(name string, wantShape ...int) ([]int64, error) {
	f, err := s.fileFor(name)
	if err != nil {
		return nil, err
	}
	return f.Int64(name, wantShape...)
}

// ReadInt64 implements Reader.
func (s *Set) ReadInt64(name string, dst []int64, wantShape ...int) error {
	f, err := s.fileFor(name)
	if err != nil {
		return err
	}
	return f.ReadInt64(name, dst, wantShape...)
}

// Close closes every file the set opened. Later reads fail with an error
// wrapping fs.ErrClosed.
func (s *Set) Close() error {
	s.closed.Store(true)
	var errs []error
	for _, sh := range s.shards {
		sh.mu.Lock()
		if f := sh.f.Swap(nil); f != nil {
			errs = append(errs, f.Close())
		}
		sh.mu.Unlock()
	}
	return errors.Join(errs...)
}

// fileFor returns the open file holding name.
func (s *Set) fileFor(name string) (*File, error) {
	sh := s.where[name]
	if sh == nil {
		return nil, newErr(ErrNotFound, s.dir, name, nil, "not found")
	}
	f, err := s.open(sh)
	if err != nil {
		return nil, err
	}
	if !f.Has(name) {
		return nil, newErr(ErrCorrupt, sh.path, name, nil, fmt.Sprintf("listed in %s but missing from this shard", IndexFile))
	}
	return f, nil
}

// open returns sh's File, opening it on first use.
func (s *Set) open(sh *shard) (*File, error) {
	if f := sh.f.Load(); f != nil {
		return f, nil
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if f := sh.f.Load(); f != nil {
		return f, nil
	}
	if s.closed.Load() {
		return nil, newErr(nil, sh.path, "", fs.ErrClosed, "set is closed")
	}
	f, err := Open(sh.path)
	if err != nil {
		return nil, err
	}
	sh.f.Store(f)
	return f, nil
}

// maxVerifyErrors caps the problems Verify lists.
const maxVerifyErrors = 20

// Verify opens every file of the set and checks it is consistent: every
// indexed tensor is in its shard, no shard holds a tensor the index does
// not list or puts elsewhere, and no name is in two files. It returns nil
// or the problems found (the first 20), joined.
func (s *Set) Verify() error {
	var errs []error
	add := func(err error) bool {
		errs = append(errs, err)
		return len(errs) < maxVerifyErrors
	}
	found := make(map[string]string) // tensor -> path of the first file holding it
	opened := make(map[*shard]*File)
	for _, sh := range s.shards {
		f, err := s.open(sh)
		if err != nil {
			if !add(err) {
				return errors.Join(errs...)
			}
			continue
		}
		opened[sh] = f
		for _, name := range f.names {
			var err error
			switch other, dup := found[name]; {
			case dup:
				err = newErr(ErrCorrupt, sh.path, name, nil, fmt.Sprintf("also present in %s", other))
			case s.where[name] == nil:
				err = newErr(ErrCorrupt, sh.path, name, nil, fmt.Sprintf("present in this shard but not listed in %s", IndexFile))
			case s.where[name] != sh:
				err = newErr(ErrCorrupt, sh.path, name, nil, fmt.Sprintf("present in this shard but %s puts it in %s", IndexFile, s.where[name].path))
			}
			found[name] = sh.path
			if err != nil && !add(err) {
				return errors.Join(errs...)
			}
		}
	}
	for _, name := range s.names {
		sh := s.where[name]
		if f := opened[sh]; f != nil && !f.Has(name) {
			if !add(newErr(ErrCorrupt, sh.path, name, nil, fmt.Sprintf("listed in %s but missing from this shard", IndexFile))) {
				break
			}
		}
	}
	return errors.Join(errs...)
}
