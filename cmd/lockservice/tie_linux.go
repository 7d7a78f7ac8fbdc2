package main

import (
	"os/exec"
	"runtime"
	"syscall"
)

// tieToParent makes the kernel kill cmd's process when the thread that
// starts it exits, as when lockservice itself is killed (kill -9): the
// command must not run on without the lock once nobody keeps the lease
// alive. The caller starts cmd and waits for it on one goroutine with
// runtime.LockOSThread (lockThread), since the death signal follows the
// starting thread, not the process.
func tieToParent(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

func lockThread()   { runtime.LockOSThread() }
func unlockThread() { runtime.UnlockOSThread() }
