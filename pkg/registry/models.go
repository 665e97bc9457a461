package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/switchyard/switchyard/internal/backoff"
	"github.com/switchyard/switchyard/pkg/cluster"
	"github.com/switchyard/switchyard/pkg/expert"
	"github.com/switchyard/switchyard/pkg/model"
	"github.com/switchyard/switchyard/pkg/placement"
	"github.com/switchyard/switchyard/pkg/tensor"
)

// ModelRecord describes a model the cluster serves: enough for the leader
// to place its experts without reading the checkpoint, and for workers to
// check they load the same model.
type ModelRecord struct {
	Fingerprint string `json:"fingerprint"` // model.Config.Fingerprint()
	Name        string `json:"name"`        // display name (the folder's base name)
	Path        string `json:"path"`        // checkpoint folder as the registering coordinator sees it
	Family      string `json:"family"`
	Layers      int    `json:"layers"`     // L, decoder layers
	MoELayers   []int  `json:"moe_layers"` // layers with routed experts
	Experts     int    `json:"experts"`    // E, routed experts per MoE layer
	// ElemBytes is the size of a weight element as workers hold it: 4 for
	// float32 (the default) or 2 when workers keep bf16.
	ElemBytes   int   `json:"elem_bytes"`
	ExpertBytes int64 `json:"expert_bytes"` // one routed expert copy in worker memory
	// Quantize is the format workers hold the routed experts in: "int8" or
	// "q4" (tensor.QFormat), empty for the checkpoint's precision (per
	// ElemBytes). ExpertBytes is that format's size; a worker holding
	// another format is refused (ErrModelMismatch).
	Quantize   string `json:"quantize,omitempty"`
	DenseBytes int64  `json:"dense_bytes"` // everything else: the dense replica every worker holds
	// Protocol is the cluster.ProtocolVersion of the coordinator that wrote
	// the record; workers of another version are refused.
	Protocol int `json:"protocol"`
}

// NewModelRecord describes cfg; path and name are informational, elemBytes
// 0 means 4 (float32).
func NewModelRecord(cfg *model.Config, path string, elemBytes int) ModelRecord {
	if elemBytes == 0 {
		elemBytes = 4
	}
	rec := ModelRecord{
		Fingerprint: cfg.Fingerprint(),
		Name:        filepath.Base(path),
		Path:        path,
		Family:      string(cfg.Family),
		Layers:      cfg.Layers,
		Experts:     cfg.MoE.Router.NumExperts,
		ElemBytes:   elemBytes,
		Protocol:    cluster.ProtocolVersion,
	}
	for l, moe := range cfg.LayerIsMoE {
		if moe {
			rec.MoELayers = append(rec.MoELayers, l)
		}
	}
	first := expert.ID{Layer: -1}
	if len(rec.MoELayers) > 0 {
		first = expert.ID{Layer: rec.MoELayers[0]}
	}
	for _, s := range cfg.Tensors() {
		b := s.Elems() * int64(elemBytes)
		switch {
		case s.Role != model.RoleExpert:
			rec.DenseBytes += b
		case s.Expert == first:
			rec.ExpertBytes += b
		}
	}
	return rec
}

// SetQuantize records that workers hold the routed experts of cfg (the
// model m describes) in format q, and sizes ExpertBytes for it.
func (m *ModelRecord) SetQuantize(cfg *model.Config, q tensor.QFormat) {
	if q == tensor.QNone {
		return
	}
	m.Quantize = q.String()
	m.ExpertBytes = 0
	if len(m.MoELayers) > 0 {
		for _, s := range cfg.ExpertTensors(expert.ID{Layer: m.MoELayers[0]}) {
			m.ExpertBytes += tensor.QBytes(q, s.Shape[0], s.Shape[1])
		}
	}
}

// ModelRecordFromDir reads dir/config.json and describes it.
func ModelRecordFromDir(dir string, elemBytes int) (ModelRecord, error) {
	cfg, err := model.LoadConfig(dir)
	if err != nil {
		return ModelRecord{}, fmt.Errorf("registry: model %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		abs = dir
	}
	return NewModelRecord(cfg, abs, elemBytes), nil
}

// PlacementExperts lists the model's logical experts for placement.Place.
func (m ModelRecord) PlacementExperts() []placement.Expert {
	out := make([]placement.Expert, 0, len(m.MoELayers)*m.Experts)
	for _, l := range m.MoELayers {
		for e := 0; e < m.Experts; e++ {
			out = append(out, placement.Expert{ID: expert.ID{Layer: l, Expert: e}, Bytes: m.ExpertBytes})
		}
	}
	return out
}

// PutModel writes (or overwrites) a model record.
func (r *Registry) PutModel(ctx context.Context, rec ModelRecord) error {
	if err := checkID("model fingerprint", rec.Fingerprint); err != nil {
		return fmt.Errorf("registry: put model: %w", err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("registry: put model %s: %w", rec.Fingerprint, err)
	}
	if _, err := r.cli.Put(ctx, r.ModelKey(rec.Fingerprint), string(b)); err != nil {
		return fmt.Errorf("registry: put %s: %w", r.ModelKey(rec.Fingerprint), err)
	}
	return nil
}

// ErrNoModel is returned (wrapped) when a model record does not exist.
var ErrNoModel = errors.New("model not registered")

// Model reads one model record; the error wraps ErrNoModel if absent.
func (r *Registry) Model(ctx context.Context, fp string) (ModelRecord, int64, error) {
	key := r.ModelKey(fp)
	resp, err := r.cli.Get(ctx, key)
	if err != nil {
		return ModelRecord{}, 0, fmt.Errorf("registry: get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return ModelRecord{}, 0, fmt.Errorf("registry: %s: %w", key, ErrNoModel)
	}
	var rec ModelRecord
	if err := json.Unmarshal(resp.Kvs[0].Value, &rec); err != nil {
		return ModelRecord{}, 0, fmt.Errorf("registry: decode %s: %w", key, err)
	}
	return rec, resp.Kvs[0].ModRevision, nil
}

// Models reads every model record, sorted by fingerprint, and the revision
// they were read at.
func (r *Registry) Models(ctx context.Context) ([]ModelRecord, int64, error) {
	resp, err := r.cli.Get(ctx, r.ModelsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("registry: list %s: %w", r.ModelsPrefix(), err)
	}
	var out []ModelRecord
	for _, kv := range resp.Kvs {
		var rec ModelRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, 0, fmt.Errorf("registry: decode %s: %w", kv.Key, err)
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Fingerprint < out[j].Fingerprint })
	return out, resp.Header.Revision, nil
}

// WatchModels sends the full list of model records now and after every
// change until ctx is done or the client closes, then closes the channel.
func (r *Registry) WatchModels(ctx context.Context) <-chan []ModelRecord {
	out := make(chan []ModelRecord)
	go func() {
		defer close(out)
		retry := backoff.New(50*time.Millisecond, 2*time.Second)
		for r.alive(ctx) {
			recs, rev, err := r.Models(ctx)
			if err != nil {
				retry.Wait(ctx)
				continue
			}
			retry.Reset()
			select {
			case out <- recs:
			case <-ctx.Done():
				return
			}
			// Any event or error: re-list (records are few and rarely change).
			wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			for wr := range r.cli.Watch(wctx, r.ModelsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
				if wr.Err() != nil || len(wr.Events) > 0 {
					break
				}
			}
			cancel()
		}
	}()
	return out
}
