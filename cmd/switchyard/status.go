package main

import (
	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/pkg/status"
)

// statusCmd is `switchyard status`: workers with their leases, the leader,
// each model's placement and per-expert token counts (text or --json).
func statusCmd() *cobra.Command { return status.StatusCmd() }
