package embedetcd

import (
	"os"
	"sync/atomic"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds etcd's zap logger: JSON lines on stderr at level, minus
// messages that are noise for an embedded single node (see benign).
func newLogger(level string, closing *atomic.Bool) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, err
	}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl)
	return zap.New(&quietCore{Core: core, closing: closing}), nil
}

// quietCore drops etcd's benign error-level messages:
//   - "failed to update storage version" ("missing term information"):
//     logged once by every fresh member before its first snapshot;
//   - "setting up serving from embedded etcd failed." with "server closed"
//     or "use of closed network connection": logged by every listener while
//     Close shuts it down (dropped only once Close began).
type quietCore struct {
	zapcore.Core
	closing *atomic.Bool
}

func (c *quietCore) With(fields []zapcore.Field) zapcore.Core {
	return &quietCore{Core: c.Core.With(fields), closing: c.closing}
}

func (c *quietCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if !c.Enabled(e.Level) {
		return ce
	}
	switch e.Message {
	case "failed to update storage version":
		return ce
	case "setting up serving from embedded etcd failed.":
		if c.closing.Load() {
			return ce
		}
	}
	return ce.AddCore(e, c)
}
