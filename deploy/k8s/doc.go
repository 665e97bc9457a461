// Package k8s is the Kubernetes deployment of a Switchyard cluster: the
// manifests in this folder (a 3-member etcd StatefulSet, the coordinator
// Deployment, the worker StatefulSet, shared volumes, disruption budgets
// and network policies, applied with `kubectl apply -k deploy/k8s`), and
// examples/ (a model-loading pod and a training Job, applied by hand). See
// README.md here.
//
// The package holds no code, only a test that checks the manifests without
// a cluster: every document decodes strictly into the API fields it uses,
// the kustomization lists exactly the files here, selectors, Services,
// disruption budgets and network policies fit the workloads they name,
// etcd's --initial-cluster matches its StatefulSet, and every container
// that runs a Switchyard binary (or etcd) is started with its exact
// arguments plus --help against a binary built from this tree, so a flag
// renamed in the code or misspelt in a manifest fails the test.
package k8s
