// Command coredns is CoreDNS (github.com/coredns/coredns) with only the
// plugins the cluster DNS of scripts/k8s/cluster.sh uses: the upstream binary
// imports every plugin, whose cloud SDKs (AWS, Azure, GCP) would double the
// build time for nothing here. There is no forward plugin: nothing outside
// the machine is reachable, so names outside the cluster's zones are refused
// at once instead of timing out.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
