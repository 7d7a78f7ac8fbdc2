package tests

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
)

var (
	faultDuration = flag.Duration("fault.duration", 6*time.Second, "how long each fault scenario runs its workload (long mode: e.g. -fault.duration 2m)")
	faultReport   = flag.String("fault.report", "", "append per-scenario figures (markdown rows) to this file")
	faultKeep     = flag.String("fault.keep", "", "write the visualization of a non-linearizable history to this directory (kept after the test) instead of a temporary one")
)

// bins are the binaries the fault tests run as real processes.
var bins struct {
	lockservice, natsServer, redisServer string
	err                                  error
}

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "lockservice-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.err = buildBinaries(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildBinaries builds lockservice and nats-server (the version in go.mod).
func buildBinaries(dir string) error {
	bins.lockservice = filepath.Join(dir, "lockservice")
	bins.natsServer = filepath.Join(dir, "nats-server")
	for _, b := range []struct{ out, pkg string }{
		{bins.lockservice, "github.com/lockservice/lockservice/cmd/lockservice"},
		{bins.natsServer, "github.com/nats-io/nats-server/v2"},
	} {
		cmd := exec.Command("go", "build", "-o", b.out, b.pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return fmt.Errorf("redis-server not found in PATH; install it (apt-get install -y redis-server): fault tests never skip Redis")
	}
	bins.redisServer = p
	return nil
}

func needBinaries(t testing.TB) {
	t.Helper()
	if bins.err != nil {
		t.Fatal(bins.err)
	}
}

// proc is a server process the tests kill -9 and restart.
type proc struct {
	t     testing.TB
	name  string
	bin   string
	args  []string
	ready func(*proc) error
	log   *os.File

	mu     sync.Mutex
	cmd    *exec.Cmd
	nstart int
}

func startProc(t testing.TB, name, bin string, args []string, ready func(*proc) error) *proc {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, name: name, bin: bin, args: args, ready: ready, log: logf}
	p.start()
	t.Cleanup(func() {
		p.Kill()
		logf.Close()
	})
	return p
}

func (p *proc) start() {
	p.t.Helper()
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.mu.Lock()
	p.cmd = cmd
	p.nstart++
	p.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := p.ready(p)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s not ready after 30s: %v\n%s", p.name, err, p.tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill sends SIGKILL and reaps the process.
func (p *proc) Kill() {
	p.mu.Lock()
	cmd := p.cmd
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}

// Restart starts the process again with the same arguments.
func (p *proc) Restart() { p.start() }

func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log.Name())
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func dialable(addr string) func(*proc) error {
	return func(*proc) error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
}

// logContains is ready once s appeared in the log once per start.
func logContains(s string) func(*proc) error {
	return func(p *proc) error {
		f, err := os.Open(p.log.Name())
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		n := 0
		for sc.Scan() {
			if strings.Contains(sc.Text(), s) {
				n++
			}
		}
		if n < p.starts() {
			return fmt.Errorf("no %q in log yet", s)
		}
		return nil
	}
}

func (p *proc) starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nstart
}

func freePort(t testing.TB) int { return testsrv.FreePort(t) }

// proxy is the fault tests' TCP proxy (partitions, failovers).
type proxy = testsrv.Proxy

func newProxy(t testing.TB, target string) *proxy { return testsrv.NewProxy(t, target) }

func itoa(n int) string { return strconv.Itoa(n) }
