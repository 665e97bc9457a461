//go:build tools

// Package crictl pins sigs.k8s.io/cri-tools/cmd/crictl, which
// scripts/k8s/cluster.sh builds.
package crictl

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
