package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// binary is the lockservice command built for the tests that run it as a
// process (signals, exit statuses, child processes).
var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lockservice-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary.dir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lockserviceBinary builds the command (with -race when the tests run
// with it) once per test run and returns its path.
func lockserviceBinary(t testing.TB) string {
	t.Helper()
	binary.once.Do(func() {
		path := filepath.Join(binary.dir, "lockservice")
		args := []string{"build", "-o", path}
		if raceEnabled {
			args = append(args, "-race")
		}
		out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
		if err != nil {
			binary.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		binary.path = path
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

// startService starts a nats-server with JetStream and a service instance
// (JetStream store) on it. It returns the server's URL and a client with
// the owner label "test".
func startService(t testing.TB) (string, *client.Client) {
	t.Helper()
	srv := testsrv.NATS(t, "")
	st, err := jsstore.New(t.Context(), testsrv.Connect(t, srv), jsstore.Config{})
	if err != nil {
		t.Fatalf("jetstream.New = %v", err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := service.New(testsrv.Connect(t, srv), st, service.Config{})
	if err != nil {
		t.Fatalf("service.New = %v", err)
	}
	t.Cleanup(func() { svc.Stop() })
	c, err := client.New(testsrv.Connect(t, srv), client.WithOwner("test"))
	if err != nil {
		t.Fatal(err)
	}
	return srv.ClientURL(), c
}

// proc is a running lockservice process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan struct{} // closed when it has exited
}

// startBinary runs lockservice with args and env added to the test's
// environment; NATS_URL is natsURL. The process is killed at cleanup if it
// is still running.
func startBinary(t *testing.T, natsURL string, env []string, args ...string) *proc {
	t.Helper()
	p := newBinary(t, natsURL, env, args...)
	p.start(t)
	return p
}

// newBinary prepares what startBinary runs, for a test to adjust p.cmd
// before p.start.
func newBinary(t *testing.T, natsURL string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(lockserviceBinary(t), args...), done: make(chan struct{})}
	p.cmd.Env = append(append(os.Environ(), "NATS_URL="+natsURL), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.WaitDelay = 5 * time.Second
	return p
}

// start starts p, killed at cleanup if it is still running.
func (p *proc) start(t *testing.T) {
	t.Helper()
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// exitCode waits for p to exit and returns its exit status (-1 when a
// signal killed it).
func (p *proc) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("lockservice %q did not exit; stderr:\n%s", p.cmd.Args[1:], p.stderr.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// await waits until the file at path exists and returns its content. The
// commands under test write such files with mv, so they appear whole.
func (p *proc) await(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		exited := p.exited()
		if b, err := os.ReadFile(path); err == nil {
			return string(b)
		}
		select {
		case <-exited:
			t.Fatalf("lockservice %q exited (%v) before %s appeared; stderr:\n%s", p.cmd.Args[1:], p.cmd.ProcessState, filepath.Base(path), p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after 30s; stderr:\n%s", filepath.Base(path), p.stderr.String())
		}
	}
}

// awaitStderr waits until p has written want to stderr.
func (p *proc) awaitStderr(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		exited := p.exited()
		if strings.Contains(p.stderr.String(), want) {
			return
		}
		select {
		case <-exited:
			t.Fatalf("lockservice %q exited (%v) before writing %q; stderr:\n%s", p.cmd.Args[1:], p.cmd.ProcessState, want, p.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on stderr after 30s:\n%s", want, p.stderr.String())
		}
	}
}

// exited returns a closed channel when p has exited, else nil: checked
// before a file or output, it says whether p could still write it.
func (p *proc) exited() chan struct{} {
	select {
	case <-p.done:
		return p.done
	default:
		return nil
	}
}

// getInfo is c.Get(key), failing the test on an error.
func getInfo(t *testing.T, c *client.Client, key string) *client.Info {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	info, err := c.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get(%q) = %v", key, err)
	}
	return info
}
