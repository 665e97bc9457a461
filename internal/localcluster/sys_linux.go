package localcluster

import "syscall"

// sysProcAttr puts a worker in its own process group (so signals reach
// everything it runs) and has the kernel kill it if this process dies
// without closing the cluster.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
