//go:build unix

package main

import (
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// ownGroup makes cmd run in a process group of its own, unless stdin is
// the terminal lockservice runs in the foreground of; it reports whether it
// did.
func ownGroup(cmd *exec.Cmd) bool {
	fg, err := unix.IoctlGetInt(0, unix.TIOCGPGRP)
	if own, err2 := unix.Getpgid(0); err == nil && err2 == nil && fg == own {
		return false
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return true
}

// signalCommand sends sig to cmd's process group when it has one of its
// own (ownGroup), else to its process.
func signalCommand(cmd *exec.Cmd, group bool, sig os.Signal) error {
	s, ok := sig.(syscall.Signal)
	if group && ok {
		return syscall.Kill(-cmd.Process.Pid, s)
	}
	return cmd.Process.Signal(sig)
}
