package testsrv

import (
	"bytes"
	"context"
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

	goredis "github.com/redis/go-redis/v9"
)

// redisStartTimeout bounds how long a redis-server may take to answer PING
// (and a cluster to reach cluster_state:ok).
const redisStartTimeout = 15 * time.Second

// Redis is a redis-server process on a loopback port, killed at cleanup.
// Create it with StartRedis.
type Redis struct {
	// Addr is host:port of the server.
	Addr string

	port int
	dir  string
	args []string // everything after the binary, including --port and --dir

	mu   sync.Mutex
	proc *redisProc // nil when killed
}

type redisProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// StartRedis starts redis-server on a free loopback port with its data
// directory under t.TempDir(), without persistence (--save "" and
// --appendonly no, unless args set them), and waits until it answers PING.
// args are extra redis-server options such as "--replicaof", "127.0.0.1",
// "6379". The process is killed at cleanup. StartRedis fails the test when
// redis-server is not installed: Redis tests are never skipped.
func StartRedis(t testing.TB, args ...string) *Redis {
	t.Helper()
	return startRedis(t, false, args)
}

func redisBinary() (string, error) {
	path, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redis-server not found in PATH; install it (apt-get install -y redis-server) — Redis tests are never skipped")
	}
	return path, nil
}

func hasArg(args []string, name string) bool {
	for _, a := range args {
		if a == name {
			return true
		}
	}
	return false
}

func startRedis(t testing.TB, cluster bool, extra []string) *Redis {
	t.Helper()
	dir := t.TempDir()
	r, err := LaunchRedis(dir, cluster, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Kill() }) // registered after TempDir: runs before its removal
	return r
}

// LaunchRedis is StartRedis without a test: the server's files go to dir
// (created if needed), and the caller kills it. cluster starts it as a
// Redis Cluster node. Programs other than tests (lockbench) use it.
func LaunchRedis(dir string, cluster bool, extra ...string) (*Redis, error) {
	bin, err := redisBinary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	r := &Redis{dir: dir}
	const attempts = 5
	for attempt := 1; ; attempt++ {
		port, err := freePortPair(cluster)
		if err != nil {
			return nil, err
		}
		r.port = port
		r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		r.args = []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1"}
		if !hasArg(extra, "--save") {
			r.args = append(r.args, "--save", "")
		}
		if !hasArg(extra, "--appendonly") {
			r.args = append(r.args, "--appendonly", "no")
		}
		if !hasArg(extra, "--dir") {
			r.args = append(r.args, "--dir", dir)
		}
		if cluster {
			r.args = append(r.args, "--cluster-enabled", "yes",
				"--cluster-config-file", filepath.Join(dir, "nodes.conf"))
		}
		r.args = append(r.args, extra...)
		err = r.start(bin)
		if err == nil {
			return r, nil
		}
		// Another process may have taken the port between our probe and
		// the server's bind: try another one.
		if attempt < attempts && strings.Contains(err.Error(), "in use") {
			continue
		}
		return nil, fmt.Errorf("redis-server %s: %w", strings.Join(r.args, " "), err)
	}
}

// start runs the process and waits for PING; on failure the process is
// gone and the error includes the end of its log.
func (r *Redis) start(bin string) error {
	logPath := filepath.Join(r.dir, "redis.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd := exec.Command(bin, r.args...)
	cmd.Dir = r.dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return err
	}
	p := &redisProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	r.mu.Lock()
	r.proc = p
	r.mu.Unlock()

	logTail := r.LogTail
	c := goredis.NewClient(&goredis.Options{
		Addr: r.Addr, MaxRetries: -1, DialTimeout: time.Second,
		ReadTimeout: time.Second, WriteTimeout: time.Second, PoolSize: 1,
	})
	defer c.Close()
	deadline := time.Now().Add(redisStartTimeout)
	for {
		select {
		case <-p.done:
			r.mu.Lock()
			r.proc = nil
			r.mu.Unlock()
			return fmt.Errorf("exited before answering PING (%v); log:\n%s", cmd.ProcessState, logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			r.Kill()
			return fmt.Errorf("no answer to PING within %v: %v; log:\n%s", redisStartTimeout, err, logTail())
		}
		time.Sleep(10 * time.Millisecond) // polling the new process; nothing to wait on
	}
}

// Kill stops the server with SIGKILL (no shutdown save) and waits until the
// process has exited. Killing a stopped server does nothing.
func (r *Redis) Kill() {
	r.mu.Lock()
	p := r.proc
	r.proc = nil
	r.mu.Unlock()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Restart kills the server if it is running and starts it again with the
// same port, directory and options, waiting until it answers PING. Without
// persistence (the default) it comes back empty.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	if err := r.RestartErr(); err != nil {
		t.Fatal(err)
	}
}

// RestartErr is Restart without a test.
func (r *Redis) RestartErr() error {
	r.Kill()
	bin, err := redisBinary()
	if err == nil {
		err = r.start(bin)
	}
	if err != nil {
		return fmt.Errorf("restart redis-server %s: %w", strings.Join(r.args, " "), err)
	}
	return nil
}

// Pid is the process id of the running server, 0 when it is killed.
func (r *Redis) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return 0
	}
	return r.proc.cmd.Process.Pid
}

// LogTail returns the end of the server's log.
func (r *Redis) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// Client returns a client of the server, closed at cleanup.
func (r *Redis) Client(t testing.TB) goredis.UniversalClient {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: r.Addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// StartRedisCluster starts a Redis Cluster of masters redis-server processes
// (no replicas) on free loopback ports, assigns the 16384 slots evenly and
// waits until every node reports cluster_state:ok. It returns the nodes'
// addresses; connect with ClusterClient. The processes are killed at
// cleanup.
func StartRedisCluster(t testing.TB, masters int) (addrs []string) {
	t.Helper()
	if masters < 1 {
		t.Fatalf("StartRedisCluster: need at least 1 master, got %d", masters)
	}
	nodes := make([]*Redis, masters)
	for i := range nodes {
		nodes[i] = startRedis(t, true, []string{"--cluster-node-timeout", "5000"})
		addrs = append(addrs, nodes[i].Addr)
	}
	ctx, cancel := context.WithTimeout(t.Context(), redisStartTimeout)
	defer cancel()
	clients := make([]*goredis.Client, masters)
	for i, n := range nodes {
		clients[i] = goredis.NewClient(&goredis.Options{Addr: n.Addr})
		defer clients[i].Close()
	}
	const slots = 16384
	for i, c := range clients {
		// Distinct config epochs up front, so the nodes need not resolve
		// collisions before agreeing on slot owners.
		if err := c.Do(ctx, "cluster", "set-config-epoch", i+1).Err(); err != nil {
			t.Fatalf("CLUSTER SET-CONFIG-EPOCH on %s: %v", addrs[i], err)
		}
		lo, hi := i*slots/masters, (i+1)*slots/masters-1
		if err := c.Do(ctx, "cluster", "addslotsrange", lo, hi).Err(); err != nil {
			t.Fatalf("CLUSTER ADDSLOTSRANGE %d %d on %s: %v", lo, hi, addrs[i], err)
		}
	}
	for i := 1; i < masters; i++ {
		if err := clients[0].ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(nodes[i].port)).Err(); err != nil {
			t.Fatalf("CLUSTER MEET %s from %s: %v", addrs[i], addrs[0], err)
		}
	}
	want := []string{"cluster_state:ok", "cluster_slots_assigned:16384", "cluster_known_nodes:" + strconv.Itoa(masters)}
	for i, c := range clients {
		var info string
		for {
			var err error
			info, err = c.ClusterInfo(ctx).Result()
			if err == nil && containsAll(info, want) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("cluster node %s not ready within %v (want %v): %v\n%s", addrs[i], redisStartTimeout, want, err, info)
			}
			time.Sleep(20 * time.Millisecond) // gossip has no event to wait on
		}
	}
	return addrs
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// ClusterClient returns a cluster client of the nodes at addrs, closed at
// cleanup.
func ClusterClient(t testing.TB, addrs []string) *goredis.ClusterClient {
	t.Helper()
	c := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// freePortPair returns a loopback TCP port that was free a moment ago. For
// cluster nodes the port is below 55535 and its cluster bus port (+10000)
// is free too.
func freePortPair(cluster bool) (int, error) {
	for i := 0; i < 100; i++ {
		port, err := pickFree()
		if err != nil {
			return 0, fmt.Errorf("find a free port: %w", err)
		}
		if !cluster {
			return port, nil
		}
		if port >= 55535 {
			continue
		}
		if _, err := listenFree(port + 10000); err == nil {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free port pair (port, port+10000) below 55535 after 100 tries")
}

// Ports handed to servers that bind them later are taken below the
// kernel's ephemeral range (32768-60999 by default), where the local ports
// of outgoing connections come from: a port picked with :0 is in that
// range, and between the pick and the server's bind another process's
// connection may take it (a 3-node cluster's route port was lost so in
// CI). Another test's server may still take one: callers retry where they
// can.
const (
	pickLow  = 20000
	pickHigh = 32768
)

var pickMu sync.Mutex
var pickNext = pickLow + int(time.Now().UnixNano()%int64(pickHigh-pickLow))

// pickFree returns a free loopback port below the ephemeral range, or one
// from the kernel when none is found.
func pickFree() (int, error) {
	pickMu.Lock()
	defer pickMu.Unlock()
	for range 200 {
		// Spread over the range: parallel test processes start at
		// different points (the clock), and each moves on.
		pickNext += 1 + int(time.Now().UnixNano()%97)
		if pickNext >= pickHigh {
			pickNext = pickLow + pickNext%(pickHigh-pickLow)
		}
		if port, err := listenFree(pickNext); err == nil {
			return port, nil
		}
	}
	return listenFree(0)
}

// listenFree listens on 127.0.0.1:port (0 = any), closes and returns the port.
func listenFree(port int) (int, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
