package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// Source gives the dashboard its data: a Collector on etcd, or a fixed
// State in tests.
type Source interface {
	State(ctx context.Context) (*State, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context) (*State, error)

// State calls f.
func (f SourceFunc) State(ctx context.Context) (*State, error) { return f(ctx) }

// Prefix is where Handler expects to be mounted.
const Prefix = "/dashboard/"

// Handler serves the dashboard under Prefix (mount it there, the prefix
// is not stripped by the caller):
//
//	GET /dashboard/            the page (assets/index.html)
//	GET /dashboard/static/F    an embedded asset (assets/F): no CDN
//	GET /dashboard/api/state   the State as JSON (the page polls it)
//
// A request for the bare "/dashboard" is redirected to Prefix.
func Handler(src Source) http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree always has assets/
	}
	static := http.StripPrefix(Prefix+"static/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		p := r.URL.Path
		switch {
		case p == strings.TrimSuffix(Prefix, "/"):
			http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		case p == Prefix || p == Prefix+"index.html":
			w.Header().Set("Cache-Control", "no-cache")
			http.ServeFileFS(w, r, sub, "index.html")
		case strings.HasPrefix(p, Prefix+"static/"):
			static.ServeHTTP(w, r)
		case p == Prefix+"api/state":
			ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
			defer cancel()
			st, err := src.State(ctx)
			if err != nil {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Cache-Control", "no-store")
			_ = json.NewEncoder(w).Encode(st)
		default:
			http.NotFound(w, r)
		}
	})
}
