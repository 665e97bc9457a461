// Command etcd is the etcd server (go.etcd.io/etcd/server/v3/etcdmain), built
// at the version the main module pins so that scripts/k8s/cluster.sh runs the
// same etcd the Switchyard coordinator embeds.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
