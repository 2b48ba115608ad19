package brokerserver

import "syscall"

// sysProcAttr makes a server die with the test process, even one killed
// outright (go test -timeout, SIGKILL), so none is left running.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
