//go:build unix

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
)

// gate is a fifo a command under test blocks on (read _ < "$D/go") until
// the test opens it.
func gate(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "go")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// open lets the command blocked on the gate at path go on: it writes a
// line to the fifo once the command has opened it for reading.
func (p *proc) open(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0)
		if err == nil {
			_, err = f.WriteString("\n")
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			return
		}
		if !errors.Is(err, syscall.ENXIO) { // ENXIO: no reader yet
			t.Fatal(err)
		}
		select {
		case <-p.done:
			t.Fatalf("lockservice %q exited (%v) before its command opened the gate; stderr:\n%s", p.cmd.Args[1:], p.cmd.ProcessState, p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the command did not open the gate in 30s; stderr:\n%s", p.stderr.String())
		}
	}
}

// TestLockRunsCommandHoldingTheLock: the command sees LOCK_KEY, LOCK_TOKEN
// and LOCK_ID; the lock is held, under the default owner label
// hostname:pid, exactly while the command runs; lockservice exits with
// the command's status.
func TestLockRunsCommandHoldingTheLock(t *testing.T) {
	url, c := startService(t)
	dir := t.TempDir()
	goGate := gate(t, dir)
	const key = "cli.env"
	if info := getInfo(t, c, key); info.Locked {
		t.Fatalf("Get(%q) before = %+v, want unlocked", key, info)
	}
	script := `echo "$LOCK_KEY $LOCK_TOKEN $LOCK_ID" > "$D/env.tmp" && mv "$D/env.tmp" "$D/env"; read _ < "$D/go"; exit 7`
	p := startBinary(t, url, []string{"D=" + dir}, "lock", key, "--", "sh", "-c", script)

	fields := strings.Fields(p.await(t, filepath.Join(dir, "env")))
	if len(fields) != 3 || fields[0] != key || len(fields[2]) < 16 {
		t.Fatalf("the command's LOCK_KEY LOCK_TOKEN LOCK_ID = %q, want %s, a token and a lock id", fields, key)
	}
	token, err := strconv.ParseUint(fields[1], 10, 64)
	if err != nil || token == 0 {
		t.Fatalf("LOCK_TOKEN = %q, want a fencing token", fields[1])
	}
	host, _ := os.Hostname()
	owner := host + ":" + strconv.Itoa(p.cmd.Process.Pid)
	if info := getInfo(t, c, key); !info.Locked || info.Token != token || info.Owner != owner {
		t.Errorf("Get(%q) while the command runs = %+v, want locked with token %d by %q", key, info, token, owner)
	}

	p.open(t, goGate)
	if code := p.exitCode(t); code != 7 {
		t.Errorf("exit status = %d, want the command's 7; stderr:\n%s", code, p.stderr.String())
	}
	if info := getInfo(t, c, key); info.Locked {
		t.Errorf("Get(%q) after the command exited = %+v, want unlocked", key, info)
	}
}

// TestLockExitStatus: lockservice exits with the command's status, 128+N
// when signal N killed it, 127 when it was not found and 126 when it could
// not be run; the lock is released in every case.
func TestLockExitStatus(t *testing.T) {
	url, c := startService(t)
	notExecutable := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(notExecutable, []byte("#!/bin/sh\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name    string
		command []string
		want    int
	}{
		{"exit 0", []string{"sh", "-c", "exit 0"}, 0},
		{"exit 42", []string{"sh", "-c", "exit 42"}, 42},
		{"SIGKILL", []string{"sh", "-c", "kill -KILL $$"}, 128 + 9},
		{"SIGTERM", []string{"sh", "-c", "kill -TERM $$"}, 128 + 15},
		{"not found", []string{"no-such-command-lockservice-test"}, 127},
		{"not executable", []string{notExecutable}, 126},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := fmt.Sprintf("cli.status.%d", i)
			p := startBinary(t, url, nil, append([]string{"lock", key, "--"}, tc.command...)...)
			if code := p.exitCode(t); code != tc.want {
				t.Errorf("lockservice lock -- %q: exit status %d, want %d; stderr:\n%s", tc.command, code, tc.want, p.stderr.String())
			}
			if info := getInfo(t, c, key); info.Locked {
				t.Errorf("Get(%q) after exit = %+v, want unlocked", key, info)
			}
		})
	}
}

// TestLockTryWhenHeld: with --try, a held key fails at once with exit
// status 4 and a message naming the holder (its --owner label and token);
// with --wait, when the wait runs out. The command does not run.
func TestLockTryWhenHeld(t *testing.T) {
	url, c := startService(t)
	dir := t.TempDir()
	goGate := gate(t, dir)
	const key = "cli.try"
	holder := startBinary(t, url, []string{"D=" + dir}, "lock", "--owner", "batch-1", key, "--",
		"sh", "-c", `touch "$D/held.tmp" && mv "$D/held.tmp" "$D/held"; read _ < "$D/go"`)
	holder.await(t, filepath.Join(dir, "held"))
	info := getInfo(t, c, key)

	for _, args := range [][]string{
		{"lock", "--try", key, "--", "touch", filepath.Join(dir, "ran")},
		{"lock", key, "--wait", "300ms", "--", "touch", filepath.Join(dir, "ran")}, // flags after KEY too
	} {
		p := startBinary(t, url, nil, args...)
		if code := p.exitCode(t); code != exitHeld {
			t.Errorf("lockservice %q on a held key: exit status %d, want %d; stderr:\n%s", args, code, exitHeld, p.stderr.String())
		}
		if msg := p.stderr.String(); !strings.Contains(msg, `"batch-1"`) || !strings.Contains(msg, fmt.Sprintf("token %d", info.Token)) {
			t.Errorf("lockservice %q: stderr = %q, want the holder's owner \"batch-1\" and token %d", args, msg, info.Token)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
		t.Error("the command ran although the lock was not acquired")
	}
	holder.open(t, goGate)
	if code := holder.exitCode(t); code != 0 {
		t.Errorf("holder: exit status %d; stderr:\n%s", code, holder.stderr.String())
	}
}

// TestLockWaitsUntilFree: without --try the command runs once the holder
// releases the key, with a greater token.
func TestLockWaitsUntilFree(t *testing.T) {
	url, c := startService(t)
	dir := t.TempDir()
	const key = "cli.wait"
	held, err := c.TryAcquire(t.Context(), key, client.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	ran := filepath.Join(dir, "ran")
	p := startBinary(t, url, []string{"D=" + dir}, "lock", "-v", key, "--", "sh", "-c", `echo $LOCK_TOKEN > "$D/ran.tmp" && mv "$D/ran.tmp" "$D/ran"`)
	p.awaitStderr(t, "waiting")
	if _, err := os.Stat(ran); err == nil {
		t.Fatal("the command ran while the key was held")
	}
	if err := held.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	token, _ := strconv.ParseUint(strings.TrimSpace(p.await(t, ran)), 10, 64)
	if token <= held.Token() {
		t.Errorf("LOCK_TOKEN = %d after the holder's %d, want greater", token, held.Token())
	}
	if code := p.exitCode(t); code != 0 {
		t.Errorf("exit status %d; stderr:\n%s", code, p.stderr.String())
	}
}

// TestLockInterruptedWhileWaiting: a signal while lockservice waits for
// the lock ends it with 128+signal, the command does not run, and the
// abandoned request does not take the lock when the holder releases it.
func TestLockInterruptedWhileWaiting(t *testing.T) {
	url, c := startService(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			key := "cli.interrupted." + strconv.Itoa(int(sig))
			held, err := c.TryAcquire(t.Context(), key, client.WithTTL(time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			p := startBinary(t, url, nil, "lock", "-v", key, "--", "touch", filepath.Join(dir, "ran"))
			p.awaitStderr(t, "waiting")
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := p.exitCode(t); code != 128+int(sig) {
				t.Errorf("exit status %d after %v, want %d; stderr:\n%s", code, sig, 128+int(sig), p.stderr.String())
			}
			if _, err := os.Stat(filepath.Join(dir, "ran")); err == nil {
				t.Error("the command ran")
			}
			if err := held.Release(t.Context()); err != nil {
				t.Fatal(err)
			}
			if info := getInfo(t, c, key); info.Locked {
				t.Errorf("Get(%q) after the holder released = %+v, want unlocked (the interrupted request was granted)", key, info)
			}
		})
	}
}

// releaseByID releases key's lock by its lock id, as anyone who learnt the
// id could, and reports whether the service released it.
func releaseByID(t *testing.T, url, key, id string) bool {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, err := nc.Request("lock.release."+key, []byte(`{"lock_id":"`+id+`"}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var resp struct{ Released bool }
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		t.Fatalf("release answer %q: %v", m.Data, err)
	}
	return resp.Released
}

// TestLockLostStopsCommand: when the lock is lost while the command runs
// (here released by its lock id from outside, so the next renewal is
// answered "not held"), the command gets SIGTERM and lockservice exits 3
// saying the lock was lost, even though the command itself exited 0.
func TestLockLostStopsCommand(t *testing.T) {
	url, c := startService(t)
	dir := t.TempDir()
	const key = "cli.lost"
	script := `trap 'echo TERM > "$D/term.tmp"; mv "$D/term.tmp" "$D/term"; exit 0' TERM
sleep 600 >/dev/null 2>&1 &
echo "$LOCK_ID" > "$D/id.tmp" && mv "$D/id.tmp" "$D/id"
wait $!`
	start := time.Now()
	p := startBinary(t, url, []string{"D=" + dir}, "lock", "--ttl", "2s", "--kill-grace", "30s", key, "--", "sh", "-c", script)
	id := strings.TrimSpace(p.await(t, filepath.Join(dir, "id")))
	if !releaseByID(t, url, key, id) {
		t.Fatalf("release by the command's LOCK_ID %q: not released", id)
	}
	if code := p.exitCode(t); code != exitLost {
		t.Errorf("exit status %d after the lock was lost, want %d; stderr:\n%s", code, exitLost, p.stderr.String())
	}
	if got := p.await(t, filepath.Join(dir, "term")); got != "TERM\n" {
		t.Errorf("the command's trap wrote %q, want TERM", got)
	}
	if d := time.Since(start); d > 25*time.Second {
		t.Errorf("took %v: the command was killed after --kill-grace instead of stopping on SIGTERM", d)
	}
	if msg := p.stderr.String(); !strings.Contains(msg, "lost") || !strings.Contains(msg, "does not hold the lock") {
		t.Errorf("stderr = %q, want it to say the lock was lost and why (the service's 409: does not hold the lock)", msg)
	}
	if info := getInfo(t, c, key); info.Locked {
		t.Errorf("Get(%q) = %+v, want unlocked", key, info)
	}
}

// TestLockLostKillsCommandIgnoringTERM: a command that ignores SIGTERM
// gets SIGKILL --kill-grace later, and so does what it started (its
// process group).
func TestLockLostKillsCommandIgnoringTERM(t *testing.T) {
	url, _ := startService(t)
	dir := t.TempDir()
	const key = "cli.lost.kill"
	script := `trap '' TERM
sleep 600 >/dev/null 2>&1 &
echo $! > "$D/sleep.pid"
echo "$LOCK_ID" > "$D/id.tmp" && mv "$D/id.tmp" "$D/id"
wait`
	p := startBinary(t, url, []string{"D=" + dir}, "lock", "--ttl", "2s", "--kill-grace", "300ms", key, "--", "sh", "-c", script)
	id := strings.TrimSpace(p.await(t, filepath.Join(dir, "id")))
	sleepPID, err := strconv.Atoi(strings.TrimSpace(p.await(t, filepath.Join(dir, "sleep.pid"))))
	if err != nil {
		t.Fatal(err)
	}
	if !releaseByID(t, url, key, id) {
		t.Fatalf("release by the command's LOCK_ID %q: not released", id)
	}
	if code := p.exitCode(t); code != exitLost {
		t.Errorf("exit status %d, want %d; stderr:\n%s", code, exitLost, p.stderr.String())
	}
	if msg := p.stderr.String(); !strings.Contains(msg, "SIGKILL") {
		t.Errorf("stderr = %q, want it to say SIGKILL was sent", msg)
	}
	deadline := time.Now().Add(10 * time.Second)
	for alive(sleepPID) {
		if time.Now().After(deadline) {
			t.Fatalf("the command's child %d still runs after lockservice exited", sleepPID)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// alive reports whether process pid runs (a zombie does not; on systems
// without /proc, zombies count as running).
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no /proc, or it exited just now: ask again
	}
	// "pid (comm) S ...": the state follows the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// TestLockForwardsSignals: SIGTERM, SIGINT and SIGHUP sent to lockservice
// reach the command, once each, and lockservice then exits with the
// command's status and releases the lock.
func TestLockForwardsSignals(t *testing.T) {
	url, c := startService(t)
	// The traps log each signal; the sleep after the first gives a second,
	// wrong delivery (e.g. a SIGTERM for the cancelled context besides the
	// SIGINT) time to show in the log.
	script := `sleep 600 >/dev/null 2>&1 & pid=$!
for s in INT TERM HUP; do trap "echo $s >> \"\$D/log\"; kill $pid 2>/dev/null" $s; done
touch "$D/ready"
wait $pid
sleep 0.3
exit 5`
	for _, tc := range []struct {
		sig  syscall.Signal
		name string
	}{{syscall.SIGTERM, "TERM"}, {syscall.SIGINT, "INT"}, {syscall.SIGHUP, "HUP"}} {
		sig := tc.sig
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			key := "cli.signal." + tc.name
			p := startBinary(t, url, []string{"D=" + dir}, "lock", key, "--", "sh", "-c", script)
			p.await(t, filepath.Join(dir, "ready"))
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := p.exitCode(t); code != 5 {
				t.Errorf("exit status %d, want the command's 5; stderr:\n%s", code, p.stderr.String())
			}
			if got, _ := os.ReadFile(filepath.Join(dir, "log")); string(got) != tc.name+"\n" {
				t.Errorf("the command received %q, want %s once", got, tc.name)
			}
			if info := getInfo(t, c, key); info.Locked {
				t.Errorf("Get(%q) after exit = %+v, want unlocked", key, info)
			}
		})
	}
}

// TestLockCommandDiesWithLockservice (Linux): when lockservice is killed
// with kill -9, nobody keeps the lease alive any more, so the command must
// not run on without the lock: the kernel kills it with its parent.
func TestLockCommandDiesWithLockservice(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux only")
	}
	url, _ := startService(t)
	dir := t.TempDir()
	script := `echo $$ > "$D/pid.tmp" && mv "$D/pid.tmp" "$D/pid"
exec sleep 600`
	p := startBinary(t, url, []string{"D=" + dir}, "lock", "--ttl", "5s", "cli.parentdeath", "--", "sh", "-c", script)
	pid, err := strconv.Atoi(strings.TrimSpace(p.await(t, filepath.Join(dir, "pid"))))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.done
	deadline := time.Now().Add(10 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the command %d still runs after lockservice was killed", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
