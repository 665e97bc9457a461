package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/switchyard/switchyard/internal/status"
	"github.com/switchyard/switchyard/pkg/expert"
)

// StatusJSON writes a status snapshot as indented JSON (`switchyard
// status --json`).
func StatusJSON(w io.Writer, s *status.Snapshot) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// maxMatrixExperts is the widest layer printed as a full per-expert token
// row; wider layers get a one-line summary (use --json for everything).
const maxMatrixExperts = 32

// StatusText renders a status snapshot for people (`switchyard status`).
func StatusText(w io.Writer, s *status.Snapshot) error {
	b := &strings.Builder{}
	leader := s.Leader
	if leader == "" {
		leader = "(none)"
	}
	fmt.Fprintf(b, "cluster %s, leader %s, %d workers\n\n", s.Cluster, leader, len(s.Workers))
	if len(s.Workers) > 0 {
		tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WORKER\tADDR\tGOSSIP\tLEASE\tTTL\tCORES\tMEM\tPROTO\tMODEL\tEXPERTS")
		for _, wk := range s.Workers {
			held := 0
			for _, m := range s.Models {
				held += len(m.Owned[wk.ID])
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%ds/%ds\t%d\t%s\t%d\t%s\t%d\n", wk.ID, wk.Addr, dash(wk.GossipAddr), wk.Lease,
				wk.TTLSeconds, wk.GrantedTTLSeconds, wk.Cores, size(wk.MemBytes), wk.Protocol, wk.Model, held)
		}
		tw.Flush()
		b.WriteString("\n")
	}
	for _, m := range s.Models {
		r := m.Record
		fmt.Fprintf(b, "model %s (%s, %s) %s\n", r.Fingerprint, r.Name, r.Family, r.Path)
		fmt.Fprintf(b, "  %d MoE layers x %d experts, %s per expert, %s dense per worker\n",
			len(r.MoELayers), r.Experts, size(r.ExpertBytes), size(r.DenseBytes))
		writeVerdict(b, m)
		if m.Placement == nil {
			b.WriteString("  placement: none yet\n\n")
			continue
		}
		fmt.Fprintf(b, "  placement epoch %d (etcd revision %d)\n", m.Placement.Epoch, m.PlacementRev)
		for _, id := range m.Placement.WorkerIDs() {
			fmt.Fprintf(b, "    %s (%d): %s\n", id, len(m.Owned[id]), ranges(m.Owned[id]))
		}
		writeTokens(b, m)
		b.WriteString("\n")
	}
	if len(s.Jobs) > 0 {
		tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tSTATE\tATTEMPT\tRANKS\tSTEP\tLOSS\tHELD-OUT\tTOKENS/S\tCHECKPOINT")
		for _, j := range s.Jobs {
			sp, st := j.Spec, j.Status
			ranks := make([]string, len(sp.Assigned))
			for i, w := range sp.Assigned {
				ranks[i] = string(w)
			}
			steps := sp.Job.Steps
			if sp.Golden != nil {
				steps = sp.Golden.Steps
			}
			eval := "-"
			if st.EvalLoss != 0 {
				eval = fmt.Sprintf("%.4f", st.EvalLoss)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d/%d\t%.4f\t%s\t%.0f\t%s\n", sp.ID, sp.State, sp.Attempt, dash(strings.Join(ranks, ",")),
				st.Step, steps, st.Loss, eval, st.TokensPerS, dash(st.Checkpoint))
			if sp.Error != "" {
				fmt.Fprintf(tw, "  error: %s\n", sp.Error)
			}
		}
		tw.Flush()
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeVerdict prints the leader's verdict: one line when the model is
// placed as the leader wants, else unindented "model <fp>: ..." lines
// saying why it cannot be placed and which experts have no live copy.
func writeVerdict(b *strings.Builder, m status.Model) {
	s := m.PlacementStatus
	if s == nil {
		return
	}
	if s.OK {
		fmt.Fprintf(b, "  placement status: ok at epoch %d (%s)\n", s.Epoch, s.Time.Format(time.RFC3339))
		return
	}
	fp := m.Record.Fingerprint
	if s.NeedBytes > 0 && s.HaveBytes >= 0 && s.NeedBytes > s.HaveBytes {
		copies := ""
		if eb := m.Record.ExpertBytes; eb > 0 {
			copies = fmt.Sprintf(" for %d expert copies", s.NeedBytes/eb)
		}
		fmt.Fprintf(b, "model %s: cannot place: need %s%s, workers have %s (short by %s)\n",
			fp, human(s.NeedBytes), copies, human(s.HaveBytes), human(s.NeedBytes-s.HaveBytes))
	} else {
		fmt.Fprintf(b, "model %s: cannot place: %s\n", fp, s.Error)
	}
	if len(s.Unplaced) > 0 {
		fmt.Fprintf(b, "model %s: %d experts have no live copy (epoch %d keeps them on workers that left): %s\n",
			fp, len(s.Unplaced), s.Epoch, ranges(s.Unplaced))
	}
	fmt.Fprintf(b, "  (leader's verdict at %s)\n", s.Time.Format(time.RFC3339))
}

// human prints a byte count with a binary unit: "1.50 GiB", "96.0 KiB".
func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func writeTokens(b *strings.Builder, m status.Model) {
	if len(m.Tokens) == 0 {
		b.WriteString("  tokens: none reported\n")
		return
	}
	byLayer := map[int]map[int]uint64{}
	for _, t := range m.Tokens {
		if byLayer[t.Layer] == nil {
			byLayer[t.Layer] = map[int]uint64{}
		}
		byLayer[t.Layer][t.Expert] = t.Tokens
	}
	b.WriteString("  tokens per expert:\n")
	E := m.Record.Experts
	tw := tabwriter.NewWriter(b, 0, 4, 1, ' ', tabwriter.AlignRight)
	if E <= maxMatrixExperts {
		fmt.Fprint(tw, "    \t")
		for e := 0; e < E; e++ {
			fmt.Fprintf(tw, "E%d\t", e)
		}
		fmt.Fprintln(tw, "total\t")
	}
	for _, l := range m.Record.MoELayers {
		row := byLayer[l]
		var total, hi uint64
		lo, hot := ^uint64(0), 0
		for e := 0; e < E; e++ {
			n := row[e]
			total += n
			if n > hi {
				hi, hot = n, e
			}
			lo = min(lo, n)
		}
		if E <= maxMatrixExperts {
			fmt.Fprintf(tw, "    L%d\t", l)
			for e := 0; e < E; e++ {
				fmt.Fprintf(tw, "%d\t", row[e])
			}
			fmt.Fprintf(tw, "%d\t\n", total)
		} else {
			fmt.Fprintf(tw, "    L%d\ttotal %d\tmin %d\tmax %d (E%d)\t\n", l, total, lo, hi, hot)
		}
	}
	tw.Flush()
}

// ranges prints experts compactly per layer: "L1: 0-3,6  L2: 1".
func ranges(ids []expert.ID) string {
	if len(ids) == 0 {
		return "-"
	}
	var parts []string
	for i := 0; i < len(ids); {
		l := ids[i].Layer
		var es []int
		for ; i < len(ids) && ids[i].Layer == l; i++ {
			es = append(es, ids[i].Expert)
		}
		var rs []string
		for j := 0; j < len(es); {
			k := j
			for k+1 < len(es) && es[k+1] == es[k]+1 {
				k++
			}
			if k == j {
				rs = append(rs, strconv.Itoa(es[j]))
			} else {
				rs = append(rs, fmt.Sprintf("%d-%d", es[j], es[k]))
			}
			j = k + 1
		}
		parts = append(parts, fmt.Sprintf("L%d: %s", l, strings.Join(rs, ",")))
	}
	return strings.Join(parts, "  ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func size(n int64) string {
	switch {
	case n == 0:
		return "-"
	case n >= 1<<30:
		return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%dB", n)
}
