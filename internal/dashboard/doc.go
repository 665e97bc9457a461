// Package dashboard is the cluster's live view: a Collector reads a
// cluster's state from etcd (workers, placements and per-expert token
// counts, training jobs and their loss curves, front ends' serving
// statistics) into a State, and Handler serves it as JSON beside a page
// built from embedded assets (no CDN), at /dashboard/ on the coordinator's
// --http port and on `serve`. `switchyard top` renders the same State in a
// terminal.
package dashboard
