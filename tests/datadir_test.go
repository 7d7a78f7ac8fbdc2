package tests

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestSecondProcessOnOneDataDirExits: two lockservice processes on one
// --data-dir would run the bucket from the same files and grant the same
// lock, with the same token, to two holders. The second exits non-zero and
// names the first (its pid and port).
func TestSecondProcessOnOneDataDirExits(t *testing.T) {
	needBinaries(t)
	dir := t.TempDir()
	port1, port2 := freePort(t), freePort(t)
	first := startProc(t, "lockservice-first", bins.lockservice,
		[]string{"--port", itoa(port1), "--data-dir", dir}, logContains("embedded nats-server on"))
	first.mu.Lock()
	pid := first.cmd.Process.Pid
	first.mu.Unlock()

	second := exec.Command(bins.lockservice, "--port", itoa(port2), "--data-dir", dir)
	var stderr bytes.Buffer
	second.Stderr = &stderr
	stdout, err := second.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	started := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "embedded nats-server on") {
				started <- sc.Text()
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- second.Wait() }()
	select {
	case line := <-started:
		second.Process.Kill()
		<-exited
		t.Fatalf("second lockservice on data directory %s started (%q), want it to exit naming the first", dir, line)
	case err = <-exited:
	case <-time.After(30 * time.Second):
		second.Process.Kill()
		<-exited
		t.Fatalf("second lockservice neither started nor exited within 30s; stderr:\n%s", stderr.String())
	}
	if err == nil {
		t.Fatalf("second lockservice exited 0, want non-zero; stderr:\n%s", stderr.String())
	}
	msg := stderr.String()
	for _, want := range []string{dir, fmt.Sprintf("pid %d", pid), fmt.Sprintf("nats://127.0.0.1:%d", port1), "--data-dir"} {
		if !strings.Contains(msg, want) {
			t.Errorf("second lockservice's error does not name %q:\n%s", want, msg)
		}
	}
	t.Logf("second lockservice: %v: %s", err, strings.TrimSpace(msg))
}
