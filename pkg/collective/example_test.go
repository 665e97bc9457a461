package collective_test

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/switchyard/switchyard/pkg/collective"
)

// Three members in one process (normally one per host): each contributes
// rank+1 and sends each peer its rank times ten.
func Example() {
	const n = 3
	liss := make([]net.Listener, n)
	addrs := make([]string, n)
	for r := range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		liss[r], addrs[r] = lis, lis.Addr().String()
	}
	out := make([]string, n)
	var wg sync.WaitGroup
	for r := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := collective.New(collective.Config{Group: "example/epoch-0", Rank: r, Peers: addrs}, liss[r])
			if err != nil {
				panic(err)
			}
			defer g.Close()
			ctx := context.Background()
			if err := g.Connect(ctx); err != nil {
				panic(err)
			}
			grads := []float32{float32(r + 1), float32(r + 1)}
			if err := g.AllReduce(ctx, grads); err != nil {
				panic(err)
			}
			send := make([][]byte, n)
			for s := range send {
				send[s] = []byte{byte(10 * r)}
			}
			recv, err := g.AllToAll(ctx, send, nil)
			if err != nil {
				panic(err)
			}
			out[r] = fmt.Sprintf("rank %d: sum %v, received %v", r, grads, recv)
			if err := g.Shutdown(ctx); err != nil {
				panic(err)
			}
		}()
	}
	wg.Wait()
	for _, line := range out {
		fmt.Println(line)
	}
	// Output:
	// rank 0: sum [6 6], received [[0] [10] [20]]
	// rank 1: sum [6 6], received [[0] [10] [20]]
	// rank 2: sum [6 6], received [[0] [10] [20]]
}
