//go:build !linux

package main

import "os/exec"

// tieToParent is a no-op where the kernel has no parent-death signal: a
// command whose lockservice is killed runs on (documented).
func tieToParent(*exec.Cmd) {}

func lockThread()   {}
func unlockThread() {}
