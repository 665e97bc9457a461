//go:build !linux

package localcluster

import (
	"errors"
	"os/exec"
	"syscall"
)

// Memory cgroups are Linux's: elsewhere Options.WorkerMemCap is passed as
// the workers' --mem.

type cgroupParent struct {
	version int
	dir     string
}

func findCgroupParent() (cgroupParent, error) {
	return cgroupParent{}, errors.New("memory cgroups are Linux only")
}

type memCgroup struct{}

func newMemCgroup(cgroupParent, string, int64) (*memCgroup, error) {
	return nil, errors.New("memory cgroups are Linux only")
}

func (*memCgroup) command(argv []string, attr *syscall.SysProcAttr) *exec.Cmd {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = attr
	return cmd
}
func (*memCgroup) started()                 {}
func (*memCgroup) usage() (MemUsage, error) { return MemUsage{}, ErrNoCgroup }
func (*memCgroup) remove() error            { return nil }
