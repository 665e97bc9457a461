package main

import (
	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/workercmd"
)

// workerCmd is `switchyard worker`, the same command as the cmd/worker
// daemon (verify --workers N starts its workers with it).
func workerCmd() *cobra.Command { return workercmd.Command() }
