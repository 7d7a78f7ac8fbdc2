//go:build !unix

package main

import (
	"os"
	"os/exec"
)

// ownGroup reports that cmd runs in lockservice's process group.
func ownGroup(cmd *exec.Cmd) bool { return false }

// signalCommand sends sig to cmd's process. Where sig cannot be sent
// (Windows sends only os.Kill), any signal but os.Interrupt kills it.
func signalCommand(cmd *exec.Cmd, group bool, sig os.Signal) error {
	err := cmd.Process.Signal(sig)
	if err != nil && sig != os.Interrupt {
		return cmd.Process.Kill()
	}
	return err
}
