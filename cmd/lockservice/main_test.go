package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
)

// syncBuffer is a bytes.Buffer safe for the writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, out *syncBuffer, want string, errc chan error) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), want) {
		select {
		case err := <-errc:
			t.Fatalf("run returned %v before printing %q; output:\n%s", err, want, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in output:\n%s", want, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunEmbedded(t *testing.T) {
	port := testsrv.FreePort(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	var out, errOut syncBuffer
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, []string{"--port", strconv.Itoa(port), "--data-dir", dir}, &out, &errOut) }()
	waitFor(t, &out, "req lock.acquire.demo", errc)

	nc, err := nats.Connect("nats://127.0.0.1:" + strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, err := nc.Request("lock.acquire.demo", []byte(`{"ttl_ms":5000}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var resp map[string]any
	if err := json.Unmarshal(m.Data, &resp); err != nil || resp["acquired"] != true {
		t.Fatalf("acquire through the command = %s, %v", m.Data, err)
	}
	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Errorf("run after cancel = %v, want nil", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if _, err := os.Stat(filepath.Join(dir, "jetstream")); err != nil {
		t.Errorf("no JetStream data in --data-dir: %v", err)
	}
}

func TestRunBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	var out, errOut syncBuffer
	err = run(t.Context(), []string{"--port", strconv.Itoa(port), "--data-dir", t.TempDir()}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "is in use") || !strings.Contains(err.Error(), "--port") {
		t.Errorf("run on a busy port = %v, want a message naming the port and --port", err)
	}
}

func TestRunBadFlags(t *testing.T) {
	cases := map[string][]string{
		"--store must be":       {"--store", "mysql"},
		"must not be negative":  {"--object-ttl", "-1s"},
		"--marker-ttl must be":  {"--marker-ttl", "500ms"},
		"plus --lock-delay":     {"--lock-delay", "5s", "--marker-ttl", "10m"},
		"unexpected argument":   {"bogus"},
		"longer than the max":   {"--default-ttl", "1h", "--max-ttl", "1m"},
		"--redis-mode must be":  {"--store", "redis", "--redis-mode", "ring"},
		"connect to NATS":       {"--nats-url", "nats://127.0.0.1:1"},
		"redis at redis://127.": {"--store", "redis", "--redis-url", "redis://127.0.0.1:1/0", "--port", "0"},
	}
	for want, args := range cases {
		var out, errOut syncBuffer
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		err := run(ctx, args, &out, &errOut)
		cancel()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("run(%q) = %v, want an error containing %q", args, err, want)
		}
	}
}

// TestMarkerTTLHoldsTheDefaultLockDelay: with --lock-delay, the default
// --marker-ttl holds the longest lease plus the delay (whole seconds).
func TestMarkerTTLHoldsTheDefaultLockDelay(t *testing.T) {
	c, err := parseFlags([]string{"--lock-delay", "1500ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := 10*time.Minute + 2*time.Second; c.markerTTL != want {
		t.Errorf("--marker-ttl with --lock-delay 1.5s = %v, want %v", c.markerTTL, want)
	}
	if c, err = parseFlags(nil, io.Discard); err != nil || c.markerTTL != 10*time.Minute {
		t.Errorf("--marker-ttl without --lock-delay = %v, %v; want 10m", c.markerTTL, err)
	}
}

// TestSampleConfig parses the repository's nats.conf as nats-server would.
func TestSampleConfig(t *testing.T) {
	opts, err := server.ProcessConfigFile("../../nats.conf")
	if err != nil {
		t.Fatalf("nats.conf: %v", err)
	}
	if !opts.JetStream || opts.StoreDir == "" || opts.Host != "127.0.0.1" || opts.Port != 4222 || !opts.SyncAlways {
		t.Errorf("nats.conf gives JetStream=%v StoreDir=%q listen=%s:%d SyncAlways=%v", opts.JetStream, opts.StoreDir, opts.Host, opts.Port, opts.SyncAlways)
	}
}

// TestRunWithConfigFile starts the embedded server from nats.conf, with
// the listen address and data dir overridden by flags.
func TestRunWithConfigFile(t *testing.T) {
	port := testsrv.FreePort(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut syncBuffer
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-c", "../../nats.conf", "--port", strconv.Itoa(port), "--data-dir", t.TempDir()}, &out, &errOut)
	}()
	waitFor(t, &out, "127.0.0.1:"+strconv.Itoa(port), errc)
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("run = %v", err)
	}
}

// TestRunRedis: lockservice --store redis serves the same protocol.
func TestRunRedis(t *testing.T) {
	r := testsrv.StartRedis(t)
	port := testsrv.FreePort(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut syncBuffer
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"--store", "redis", "--redis-url", "redis://" + r.Addr + "/0", "--port", strconv.Itoa(port), "--data-dir", t.TempDir()}, &out, &errOut)
	}()
	waitFor(t, &out, "store redis at redis://"+r.Addr, errc)
	// The test server has no persistence: the operator is told.
	if !strings.Contains(errOut.String(), `level=WARN msg="redis at `+r.Addr+" has no persistence") {
		t.Errorf("stderr = %q, want the no-persistence warning", errOut.String())
	}
	nc, err := nats.Connect("nats://127.0.0.1:" + strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var first map[string]any
	for i, want := range []bool{true, false} {
		m, err := nc.Request("lock.acquire.demo", []byte(`{"ttl_ms":5000}`), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var resp map[string]any
		if err := json.Unmarshal(m.Data, &resp); err != nil || resp["acquired"] != want {
			t.Fatalf("acquire %d = %s, %v, want acquired %v", i, m.Data, err, want)
		}
		if i == 0 {
			first = resp
		}
	}
	// The lock lives in Redis.
	if n, err := r.Client(t).Exists(t.Context(), "lockservice:{demo}:lock").Result(); err != nil || n != 1 {
		t.Errorf("redis key lockservice:{demo}:lock exists = %d, %v (grant %v)", n, err, first)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("run = %v", err)
	}
}

// TestRunRedisEviction: lockservice refuses a Redis that can evict lock
// keys, says which flag overrides that, and with the flag starts and warns.
func TestRunRedisEviction(t *testing.T) {
	r := testsrv.StartRedis(t, "--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
	args := []string{"--store", "redis", "--redis-url", "redis://" + r.Addr + "/0", "--port", strconv.Itoa(testsrv.FreePort(t)), "--data-dir", t.TempDir()}
	var out, errOut syncBuffer
	err := run(t.Context(), args, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "allkeys-lru") || !strings.Contains(err.Error(), "--redis-allow-eviction") {
		t.Fatalf("run on an allkeys-lru Redis = %v, want an error naming the policy and --redis-allow-eviction", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, append(args, "--redis-allow-eviction"), &out, &errOut) }()
	waitFor(t, &out, "store redis at redis://"+r.Addr, errc)
	if !strings.Contains(errOut.String(), `level=WARN msg="redis at `+r.Addr+" has maxmemory-policy allkeys-lru") {
		t.Errorf("stderr = %q, want a warning about allkeys-lru", errOut.String())
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("run with --redis-allow-eviction = %v", err)
	}
}

// TestRunWithTheAuthExample: lockservice -c with nats.conf's authorization
// example uncommented starts, refuses anonymous clients and serves the
// example's users.
func TestRunWithTheAuthExample(t *testing.T) {
	t.Setenv("NATS_URL", "")
	b, err := os.ReadFile("../../nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	var conf strings.Builder
	in := false
	for line := range strings.Lines(string(b)) {
		switch {
		case strings.HasPrefix(line, "# ---- authorization: begin"):
			in = true
		case strings.HasPrefix(line, "# ---- authorization: end"):
			in = false
		case in:
			conf.WriteString(strings.TrimPrefix(line, "# "))
		default:
			conf.WriteString(line)
		}
	}
	path := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	port := testsrv.FreePort(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut syncBuffer
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"-c", path, "--port", strconv.Itoa(port), "--data-dir", t.TempDir()}, &out, &errOut)
	}()
	waitFor(t, &out, "clients must authenticate", errc)
	url := "nats://127.0.0.1:" + strconv.Itoa(port)
	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Error("anonymous connect = nil, want an authorization violation")
	}
	nc, err := nats.Connect(url, nats.UserInfo("billing", "change-me-billing"), nats.CustomInboxPrefix("_INBOX.billing"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m, err := nc.Request("lock.acquire.billing.x", []byte(`{"ttl_ms":5000}`), 5*time.Second)
	if err != nil || !strings.Contains(string(m.Data), `"acquired":true`) {
		t.Fatalf("acquire as billing = %v, %v", m, err)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("run = %v", err)
	}
}
