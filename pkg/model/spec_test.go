package model

import (
	"math"
	"slices"
	"testing"
)

// TestTableCoversCheckpoints checks the weight table against each golden
// checkpoint: every tensor of the file has exactly one table entry and every
// entry names a tensor of the file, with its shape; each entry binds its own
// field (or routed-expert matrix), and after Load that field holds the
// file's values bit for bit; DenseParams lists the dense entries in table
// order.
func TestTableCoversCheckpoints(t *testing.T) {
	for _, name := range goldenModels {
		t.Run(name, func(t *testing.T) {
			m, store, _ := loadGoldenStore(t, name, false)
			ck, err := Open(goldenDir(name))
			if err != nil {
				t.Fatal(err)
			}
			defer ck.Close()
			table := m.Cfg.Tensors()

			entries := map[string]int{}
			for _, s := range table {
				entries[s.Name]++
			}
			for _, n := range ck.Set.Names() {
				if entries[n] != 1 {
					t.Errorf("checkpoint tensor %s has %d table entries, want 1", n, entries[n])
				}
			}
			if len(entries) != len(ck.Set.Names()) || len(table) != len(entries) {
				t.Errorf("table has %d entries (%d names), checkpoint %d tensors", len(table), len(entries), len(ck.Set.Names()))
			}

			bound := map[any]string{}
			var dense []string
			for _, s := range table {
				_, shape, ok := ck.Source.Info(s.Name)
				if !ok {
					t.Errorf("table entry %s is not in the checkpoint", s.Name)
					continue
				}
				if !slices.Equal(shape, s.Shape) {
					t.Errorf("%s: checkpoint shape %v, table %v", s.Name, shape, s.Shape)
				}
				var got []float32
				var field any
				if s.Role == RoleExpert {
					if s.Bind != nil || s.InFFN == nil {
						t.Fatalf("%s: a routed expert entry must have InFFN and no Bind", s.Name)
					}
					f := store.Get(s.Expert)
					if f == nil {
						t.Fatalf("%s: expert %v not loaded", s.Name, s.Expert)
					}
					mt := s.InFFN(f)
					got, field = mt.F32, mt
				} else {
					if s.Bind == nil || s.InFFN != nil {
						t.Fatalf("%s: a dense entry must have Bind and no InFFN", s.Name)
					}
					dense = append(dense, s.Name)
					switch slot := s.Bind(m); {
					case (slot.Mat == nil) == (slot.Vec == nil):
						t.Fatalf("%s: Bind must set exactly one of Mat and Vec", s.Name)
					case slot.Mat != nil:
						got, field = slot.Mat.F32, slot.Mat
					default:
						got, field = *slot.Vec, slot.Vec
					}
				}
				if prev, ok := bound[field]; ok {
					t.Errorf("%s and %s bind the same field", prev, s.Name)
				}
				bound[field] = s.Name
				want, err := ck.Source.Float32(s.Name)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != len(want) {
					t.Errorf("%s: bound field holds %d values, checkpoint %d", s.Name, len(got), len(want))
					continue
				}
				for i := range want {
					if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
						t.Errorf("%s: bound field differs from the checkpoint at %d: %g vs %g", s.Name, i, got[i], want[i])
						break
					}
				}
			}

			refs, err := m.DenseParams()
			if err != nil {
				t.Fatal(err)
			}
			var listed []string
			for _, r := range refs {
				listed = append(listed, r.Name)
				if r.Trained != !slices.ContainsFunc(table, func(s TensorSpec) bool { return s.Name == r.Name && s.Buffer }) {
					t.Errorf("%s: Trained %v disagrees with the table", r.Name, r.Trained)
				}
			}
			if !slices.Equal(listed, dense) {
				t.Errorf("DenseParams lists %v,\ntable's dense entries are %v", listed, dense)
			}
		})
	}
}
