package main

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/switchyard/switchyard/internal/coordinator"
	"github.com/switchyard/switchyard/internal/dashboard"
	"github.com/switchyard/switchyard/pkg/registry"
)

// serveHTTP serves, on addr, the coordinator's Prometheus metrics at
// /metrics (its own, the cluster-wide gauges read from etcd, the Go
// runtime's and the process's) and the cluster dashboard at /dashboard/,
// until stop is called or ctx ends. It returns the base URL with the real
// port. Plain HTTP: neither shows weights or keys, but the dashboard shows
// the cluster's layout; bind it where only operators reach.
func serveHTTP(ctx context.Context, addr string, c *coordinator.Coordinator, reg *registry.Registry) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	col := dashboard.NewCollector(reg)
	cctx, cancel := context.WithCancel(ctx)
	go func() { _ = col.Run(cctx) }()
	pr := prometheus.NewRegistry()
	pr.MustRegister(c.Collectors()...)
	pr.MustRegister(dashboard.NewStateCollector(col),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(pr, promhttp.HandlerOpts{}))
	mux.Handle(dashboard.Prefix, dashboard.Handler(col))
	mux.Handle("/dashboard", dashboard.Handler(col)) // redirects to the prefix
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	go func() { _ = hs.Serve(ln) }() // ends with ErrServerClosed at stop
	return "http://" + ln.Addr().String(), func() { cancel(); _ = hs.Close() }, nil
}
