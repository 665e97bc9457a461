// Command worker runs a Switchyard worker: it registers in etcd under a
// lease, joins the workers' gossip, and serves over gRPC the routed experts
// the coordinator places on it (see internal/workercmd for the flags and
// the stdout line contract; `switchyard worker` is the same command).
package main

import (
	"os"

	"github.com/switchyard/switchyard/internal/workercmd"
)

func main() { os.Exit(workercmd.Main(os.Args[1:], os.Stdout, os.Stderr)) }
