package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/switchyard/switchyard/internal/authflags"
	"github.com/switchyard/switchyard/internal/worker"
	"github.com/switchyard/switchyard/pkg/auth"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/registry"
	"github.com/switchyard/switchyard/pkg/transport"
)

// waitCmd is the hidden `switchyard wait`, for scripts
// (scripts/local-cluster.sh): it waits until a model's placement spreads
// every expert over the given number of workers and each of them serves
// it, then prints one line:
//
//	placement: model=<fingerprint> epoch=<n> workers=<id>:<experts>,...
func waitCmd() *cobra.Command {
	var (
		endpoints, clusterName, fp string
		workers                    int
		timeout                    time.Duration
		tlsFiles                   auth.Files
	)
	cmd := &cobra.Command{
		Use:    "wait --workers N [--etcd URLS] [--cluster NAME] [--model FINGERPRINT]",
		Short:  "Wait until a model's placement is served by N workers",
		Args:   cobra.NoArgs,
		Hidden: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			creds, err := auth.Load(tlsFiles)
			if err != nil {
				return err
			}
			reg, closeEtcd, err := openRegistry(ctx, splitCommas(endpoints), clusterName, creds)
			if err != nil {
				return err
			}
			defer closeEtcd()
			if fp == "" {
				models, _, err := reg.Models(ctx)
				if err != nil {
					return err
				}
				if len(models) != 1 {
					return fmt.Errorf("wait: cluster %q serves %d models; name one with --model", reg.Cluster(), len(models))
				}
				fp = models[0].Fingerprint
			}
			pool, err := transport.NewPool(transport.ClientConfig{Worker: "wait", Model: fp, TLS: creds})
			if err != nil {
				return err
			}
			defer pool.Close()
			p, err := worker.WaitServing(ctx, reg, pool, fp, func(p *cluster.Placement) bool { return len(p.Workers) == workers })
			if err != nil {
				return err
			}
			counts := placement.Counts(p)
			var parts []string
			for _, id := range p.WorkerIDs() {
				parts = append(parts, fmt.Sprintf("%s:%d", id, counts[id]))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "placement: model=%s epoch=%d workers=%s\n", fp, p.Epoch, strings.Join(parts, ","))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&endpoints, "etcd", defaultEndpoint, "etcd endpoints, comma-separated")
	f.StringVar(&clusterName, "cluster", registry.DefaultCluster, "cluster name (etcd key prefix)")
	f.StringVar(&fp, "model", "", "model fingerprint (default: the cluster's only model)")
	f.IntVar(&workers, "workers", 1, "number of workers the placement must span")
	authflags.Register(f, &tlsFiles)
	f.DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	return cmd
}

func splitCommas(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
