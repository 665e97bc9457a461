package jobs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/switchyard/switchyard/internal/backoff"
)

// RetryConfig bounds Retry.
type RetryConfig struct {
	// Total is how long Retry keeps trying (default 2 minutes: longer than
	// an etcd leader election or a member restart).
	Total time.Duration
	// Attempt bounds each try (default 5 s), so a hung connection to a
	// dead etcd member cannot hold the write forever.
	Attempt time.Duration
}

// Retry runs write until it succeeds, each try bounded by cfg.Attempt,
// backing off from 100 ms to 2 s between tries, for at most cfg.Total or
// until ctx ends. It returns nil on success, else every distinct error
// seen (the last one last). Used for writes that must land, such as a
// job's final state: a job must never stay "running" because etcd blinked
// as it ended. write must be idempotent.
func Retry(ctx context.Context, cfg RetryConfig, write func(context.Context) error) error {
	if cfg.Total <= 0 {
		cfg.Total = 2 * time.Minute
	}
	if cfg.Attempt <= 0 {
		cfg.Attempt = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Total)
	defer cancel()
	bo := backoff.New(100*time.Millisecond, 2*time.Second)
	var errs []error
	for tries := 1; ; tries++ {
		actx, acancel := context.WithTimeout(ctx, cfg.Attempt)
		err := write(actx)
		acancel()
		if err == nil {
			return nil
		}
		if len(errs) == 0 || errs[len(errs)-1].Error() != err.Error() {
			errs = append(errs, err)
		}
		if !bo.Wait(ctx) {
			return fmt.Errorf("jobs: gave up after %d tries in %v: %w", tries, cfg.Total, errors.Join(errs...))
		}
	}
}
