// Package grafana is the Grafana dashboard for a Switchyard cluster's
// Prometheus metrics: switchyard.json (import it in Grafana's UI or
// provision it; README.md here says how, and what Prometheus must scrape).
//
// The package holds no code, only a test that checks the dashboard
// without Grafana: the JSON decodes, has a title, a uid and schemaVersion
// 39 or later, every panel has a unique id, sits on the 24-column grid,
// takes its data source from the ${DS_PROMETHEUS} variable and has at
// least one PromQL target; every variable an expression or title uses is
// defined; every metric it queries is a switchyard_*, process_* or go_*
// name; and every switchyard_* name (less a histogram's _bucket, _sum or
// _count) is defined in the repository's non-test Go source (a metric
// renamed in the code, or a panel for a metric that does not exist yet,
// fails the test with the list of missing names).
package grafana
