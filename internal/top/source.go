package top

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/switchyard/switchyard/internal/dashboard"
)

// StatePath is where a dashboard serves its State (dashboard.Handler
// mounted at dashboard.Prefix).
const StatePath = dashboard.Prefix + "api/state"

// maxStateBytes bounds the State read from a server.
const maxStateBytes = 64 << 20

// URLSource reads the State a coordinator (its --http address) or a
// front end (`switchyard serve`) serves at Base+StatePath.
type URLSource struct {
	// Base is the server's URL, e.g. "http://127.0.0.1:8080"; a bare
	// host:port means http.
	Base string
	// Client makes the requests (nil: one with a 10 s timeout).
	Client *http.Client
	// APIKey, when set, is sent as "Authorization: Bearer <key>" (a
	// front end started with API keys may want it on the dashboard).
	APIKey string
}

var defaultClient = &http.Client{Timeout: 10 * time.Second}

// URL is the address of the State.
func (s URLSource) URL() string {
	base := strings.TrimRight(strings.TrimSpace(s.Base), "/")
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return base + StatePath
}

// State fetches the State; an answer other than 200 is an error with its
// status and body (the dashboard's error message).
func (s URLSource) State(ctx context.Context) (*dashboard.State, error) {
	u := s.URL()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	if s.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+s.APIKey)
	}
	c := s.Client
	if c == nil {
		c = defaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		msg := strings.TrimSpace(string(body))
		// The dashboard answers {"error": "..."}; show just the message.
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		// The status and message first: a narrow screen cuts the end.
		if msg == "" {
			return nil, fmt.Errorf("%s (GET %s)", resp.Status, u)
		}
		return nil, fmt.Errorf("%s: %s (GET %s)", resp.Status, msg, u)
	}
	var st dashboard.State
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxStateBytes)).Decode(&st); err != nil {
		return nil, fmt.Errorf("GET %s: decode the state: %w", u, err)
	}
	return &st, nil
}
