package workercmd

import (
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServeMetrics serves reg at http://addr/metrics (plain HTTP, as
// Prometheus scrapes; it exposes counters, never weights or keys) until
// the returned close func is called. It returns the URL with the real
// port.
func ServeMetrics(addr string, reg *prometheus.Registry) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	go func() { _ = hs.Serve(ln) }() // ends with ErrServerClosed at close
	return "http://" + ln.Addr().String() + "/metrics", func() { _ = hs.Close() }, nil
}
