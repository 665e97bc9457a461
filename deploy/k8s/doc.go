// Package k8s is the Kubernetes deployment of a Switchyard cluster: the
// manifests in this folder (a 3-member etcd StatefulSet with TLS and
// client certificates, the coordinator Deployment, the worker StatefulSet,
// the front-end Deployment serving the API, shared volumes, disruption
// budgets and default-deny network policies, applied with
// `kubectl apply -k deploy/k8s`, every image pinned by digest with
// pin-images.sh), and examples/ (cert-manager Issuers and Certificates, a
// model-loading pod and a training Job, applied by hand). See README.md
// here, "Security" above all.
//
// The package holds no code, only a test that checks the manifests without
// a cluster: every document decodes strictly into the API fields it uses,
// the kustomization lists exactly the files here, selectors, Services,
// disruption budgets and network policies fit the workloads they name
// (the policies simulated flow by flow, a pod elsewhere with our labels
// included), every Switchyard container has mutual TLS from mounted
// certificates whose identities fit its role and worker ID, etcd speaks
// only TLS with client certificates, images are pinned by digest, etcd's
// --initial-cluster matches its StatefulSet, and every container that runs
// a Switchyard binary (or etcd) is started with its exact arguments plus
// --help against a binary built from this tree, so a flag renamed in the
// code or misspelt in a manifest fails the test.
package k8s
