package allreduce

import (
	"bytes"
	"fmt"
	"math/rand"
)

// The simulator runs every rank's program in one goroutine, with a FIFO per
// link, choosing among the enabled actions at random. It follows the same
// rules a runner does (State), so a schedule bug, a rule bug or a deadlock
// shows here without sockets.

type simConfig struct {
	format Format
	// zeroCopy: a send's payload references the sender's buffer until the
	// destination takes the chunk off the link (the runner's F32 path).
	// The simulator fails if the referenced bytes change in between.
	zeroCopy bool
	window   int // chunks sent but not yet taken off the link, per link
	inbox    int // chunks taken off the link but not yet applied, per link
	seed     int64
}

type simMsg struct {
	src, step, cell int
	payload         []byte
	live            []byte // zeroCopy: the sender's memory the payload refers to
}

type simStats struct {
	reductions []int   // per element: Reduce applications, summed over ranks
	sentElems  [][]int // [rank][step] elements sent
	sentMsgs   [][]int // [rank][step] chunks sent
	recvMsgs   [][]int // [rank][step] chunks received
	actions    int
}

// simulate runs progs (one per rank) on bufs (modified in place).
func simulate(progs []*Program, bufs [][]float32, cfg simConfig) (*simStats, error) {
	n := len(progs)
	rng := rand.New(rand.NewSource(cfg.seed))
	states := make([]*State, n)
	sendQ := make([][][]Transfer, n) // [rank][peer]
	recvQ := make([][][]Transfer, n)
	fifo := make([][][]simMsg, n) // [src][dst]: on the link
	inbox := make([][][]simMsg, n)
	st := &simStats{reductions: make([]int, progs[0].Elems)}
	for r, p := range progs {
		if p.N != n || p.Rank != r || p.Elems != progs[0].Elems || len(p.Cells) != len(progs[0].Cells) {
			return nil, fmt.Errorf("program %d: inconsistent header %+v", r, p)
		}
		for c := range p.Cells {
			if p.Cells[c] != progs[0].Cells[c] {
				return nil, fmt.Errorf("rank %d cell %d = %+v, rank 0 has %+v", r, c, p.Cells[c], progs[0].Cells[c])
			}
		}
		states[r] = NewState(p)
		sendQ[r] = make([][]Transfer, n)
		recvQ[r] = make([][]Transfer, n)
		fifo[r] = make([][]simMsg, n)
		inbox[r] = make([][]simMsg, n)
		for q := range n {
			sendQ[r][q] = p.SendsTo(q)
			recvQ[r][q] = p.RecvsFrom(q)
		}
		st.sentElems = append(st.sentElems, make([]int, p.Steps))
		st.sentMsgs = append(st.sentMsgs, make([]int, p.Steps))
		st.recvMsgs = append(st.recvMsgs, make([]int, p.Steps))
	}
	cellOf := func(r, c int) []float32 {
		cell := progs[r].Cells[c]
		return bufs[r][cell.Off : cell.Off+cell.Len]
	}
	peers := make([][]int, n)
	for r, p := range progs {
		peers[r] = p.Peers()
	}
	var fail error
	for {
		var actions []func()
		for r := range n {
			for _, q := range peers[r] {
				if len(sendQ[r][q]) > 0 && len(fifo[r][q]) < cfg.window {
					t := sendQ[r][q][0]
					if states[r].CanSend(&t) {
						actions = append(actions, func() {
							sendQ[r][q] = sendQ[r][q][1:]
							src := cellOf(r, t.Cell)
							m := simMsg{src: r, step: t.Step, cell: t.Cell}
							if cfg.zeroCopy {
								m.live = AsBytes(src)
								m.payload = bytes.Clone(m.live)
							} else {
								m.payload = make([]byte, cfg.format.Size()*len(src))
								cfg.format.Pack(m.payload, src, t.Round)
								states[r].Released(t.Cell)
							}
							fifo[r][q] = append(fifo[r][q], m)
							st.sentElems[r][t.Step] += len(src)
							st.sentMsgs[r][t.Step]++
						})
					}
				}
				if len(fifo[q][r]) > 0 && len(inbox[q][r]) < cfg.inbox {
					actions = append(actions, func() { // r takes a chunk from q off the link
						m := fifo[q][r][0]
						fifo[q][r] = fifo[q][r][1:]
						if m.live != nil {
							if !bytes.Equal(m.live, m.payload) {
								fail = fmt.Errorf("rank %d modified cell %d (step %d) while sending it to %d", q, m.cell, m.step, r)
							}
							states[q].Released(m.cell)
						}
						inbox[q][r] = append(inbox[q][r], m)
					})
				}
				if len(recvQ[r][q]) > 0 && len(inbox[q][r]) > 0 {
					t := recvQ[r][q][0]
					if states[r].CanApply(&t) {
						actions = append(actions, func() {
							recvQ[r][q] = recvQ[r][q][1:]
							m := inbox[q][r][0]
							inbox[q][r] = inbox[q][r][1:]
							if m.step != t.Step || m.cell != t.Cell {
								fail = fmt.Errorf("rank %d expected step %d cell %d from %d, got step %d cell %d", r, t.Step, t.Cell, q, m.step, m.cell)
								return
							}
							format := cfg.format
							if cfg.zeroCopy {
								format = F32
							}
							if err := format.Apply(cellOf(r, t.Cell), m.payload, t.Op); err != nil {
								fail = fmt.Errorf("rank %d step %d cell %d: %v", r, t.Step, t.Cell, err)
								return
							}
							if t.Op == Reduce {
								c := progs[r].Cells[t.Cell]
								for i := c.Off; i < c.Off+c.Len; i++ {
									st.reductions[i]++
								}
							}
							st.recvMsgs[r][t.Step]++
							states[r].Applied(t.Cell)
						})
					}
				}
			}
		}
		if len(actions) == 0 {
			break
		}
		actions[rng.Intn(len(actions))]()
		st.actions++
		if fail != nil {
			return st, fail
		}
	}
	for r, p := range progs {
		if p.RoundAtEnd {
			for i, x := range bufs[r] {
				bufs[r][i] = cfg.format.Round(x)
			}
		}
	}
	for r := range n {
		for q := range n {
			if len(sendQ[r][q]) > 0 || len(recvQ[r][q]) > 0 || len(fifo[r][q]) > 0 || len(inbox[r][q]) > 0 {
				return st, fmt.Errorf("deadlock: rank %d peer %d: %d sends, %d receives pending, %d on the link, %d in the inbox",
					r, q, len(sendQ[r][q]), len(recvQ[r][q]), len(fifo[r][q]), len(inbox[r][q]))
			}
		}
	}
	return st, nil
}
