//go:build tools

// Package kube pins the Kubernetes commands that scripts/k8s/cluster.sh
// builds (go build k8s.io/kubernetes/cmd/<name>), so go mod tidy keeps every
// module they need in go.sum.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
