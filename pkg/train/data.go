package train

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"unicode/utf8"
)

// ErrBadText is wrapped by errors about the training text.
var ErrBadText = errors.New("unusable training text")

// ReadText reads a UTF-8 training text file. An empty file or invalid
// UTF-8 is an error naming the file (and the byte offset of the first bad
// sequence).
func ReadText(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("train: %w", err)
	}
	if len(b) == 0 {
		return "", fmt.Errorf("train: %s: %w: the file is empty", path, ErrBadText)
	}
	if !utf8.Valid(b) {
		off := 0
		for off < len(b) {
			r, n := utf8.DecodeRune(b[off:])
			if r == utf8.RuneError && n <= 1 {
				break
			}
			off += n
		}
		return "", fmt.Errorf("train: %s: %w: not valid UTF-8 (first bad byte at offset %d)", path, ErrBadText, off)
	}
	return string(b), nil
}

// Data serves training batches of token windows: the token stream is cut
// into non-overlapping windows of SeqLen tokens; the first (1-HeldOut) of
// them are training windows, visited in a fresh seeded random order every
// epoch, the rest are held out for evaluation. The batch of a step is a
// pure function of (Seed, step), so a resumed run sees exactly the batches
// the uninterrupted run would have.
type Data struct {
	SeqLen int
	Batch  int
	Seed   uint64
	train  [][]int32 // training windows
	eval   [][]int32 // held-out windows
	perm   []int     // order of the current epoch
	epoch  int       // epoch perm belongs to (-1: none)
}

// NewData cuts tokens into windows. heldOut is the fraction of windows kept
// for evaluation (at least one when heldOut > 0).
func NewData(tokens []int32, seqLen, batch int, heldOut float64, seed uint64) (*Data, error) {
	if seqLen < 2 || batch < 1 {
		return nil, fmt.Errorf("train: sequence length %d (>= 2) and batch %d (>= 1)", seqLen, batch)
	}
	if heldOut < 0 || heldOut >= 1 {
		return nil, fmt.Errorf("train: held-out fraction %g must be in [0, 1)", heldOut)
	}
	n := len(tokens) / seqLen
	nEval := 0
	if heldOut > 0 {
		nEval = max(1, int(float64(n)*heldOut))
	}
	if n-nEval < batch {
		return nil, fmt.Errorf("train: %w: %d tokens make %d windows of %d (%d held out), fewer than one batch of %d",
			ErrBadText, len(tokens), n, seqLen, nEval, batch)
	}
	d := &Data{SeqLen: seqLen, Batch: batch, Seed: seed, epoch: -1}
	for i := 0; i < n; i++ {
		w := tokens[i*seqLen : (i+1)*seqLen]
		if i < n-nEval {
			d.train = append(d.train, w)
		} else {
			d.eval = append(d.eval, w)
		}
	}
	return d, nil
}

// TrainWindows is the number of training windows (one epoch).
func (d *Data) TrainWindows() int { return len(d.train) }

// EvalWindows returns the held-out windows.
func (d *Data) EvalWindows() [][]int32 { return d.eval }

// BatchAt returns the batch of step (0-based): windows step*Batch ..
// step*Batch+Batch-1 of the infinite sequence of epochs, each epoch a
// permutation of the training windows seeded by (Seed, epoch).
func (d *Data) BatchAt(step int) [][]int32 {
	out := make([][]int32, d.Batch)
	for b := range out {
		i := step*d.Batch + b
		epoch, pos := i/len(d.train), i%len(d.train)
		if epoch != d.epoch {
			d.perm = rand.New(rand.NewPCG(d.Seed, uint64(epoch))).Perm(len(d.train))
			d.epoch = epoch
		}
		out[b] = d.train[d.perm[pos]]
	}
	return out
}

// Epoch returns the (fractional) epoch reached after step steps.
func (d *Data) Epoch(step int) float64 {
	return float64(step*d.Batch) / float64(len(d.train))
}
