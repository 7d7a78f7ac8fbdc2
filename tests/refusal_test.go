package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
)

// Configurations under which lockservice cannot keep its guarantees must
// be refused at start-up, with a message that tells the operator what to
// do. When a refused configuration does start anyway, these tests go on
// and show the harm (two holders, tokens going back), checked by the same
// model as the fault scenarios.

// startOrExit runs a process until it logs ready (it started: it is
// killed at cleanup) or exits (it refused: its output is returned), within
// 30 s.
func startOrExit(t *testing.T, name, bin string, args []string, ready string) (started bool, exit error, output string) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	read := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-exited:
			return false, err, read()
		case <-deadline:
			_ = cmd.Process.Signal(syscall.SIGKILL)
			<-exited
			t.Fatalf("%s neither started nor exited within 30s:\n%s", name, read())
		case <-time.After(20 * time.Millisecond):
			if strings.Contains(read(), ready) {
				t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGKILL); <-exited })
				return true, nil, read()
			}
		}
	}
}

func connectClient(t *testing.T, url string) *client.Client {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cl, err := client.New(nc, client.WithRequestTimeout(3*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// recordAcquire tries to acquire key through cl once and records the
// outcome in h; it returns the lock (nil when not granted) and its lease id.
func recordAcquire(t *testing.T, h *history, cl *client.Client, clientID int, key string, ttl time.Duration) (*client.Lock, int) {
	t.Helper()
	lease := int(leaseIDs.Add(1))
	in := lockInput{kind: opAcquire, key: key, client: clientID, lease: lease, try: true}
	call := h.now()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	l, err := cl.TryAcquire(ctx, key, client.WithTTL(ttl))
	cancel()
	switch {
	case err == nil:
		h.add(clientID, in, call, lockOutput{ok: true, token: l.Token(), value: string(l.Value()), deadline: h.at(l.Deadline())})
	case errors.Is(err, client.ErrLocked):
		h.add(clientID, in, call, lockOutput{})
	default:
		h.add(clientID, in, call, lockOutput{unknown: true})
		t.Logf("TryAcquire(%q) = %v", key, err)
	}
	return l, lease
}

// TestTwoInstancesOneDataDir: a second embedded lockservice on the data
// directory of a running one must refuse to start (two nats-servers
// would each keep their own copy of the locks). If it starts, clients of
// the two instances are both granted the same key.
func TestTwoInstancesOneDataDir(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	needBinaries(t)
	dir := t.TempDir()
	p1, p2 := freePort(t), freePort(t)
	const ready = "embedded nats-server on"
	started, exit, out := startOrExit(t, "first", bins.lockservice, []string{"--port", itoa(p1), "--data-dir", dir}, ready)
	if !started {
		t.Fatalf("first embedded lockservice on %s did not start: %v\n%s", dir, exit, out)
	}
	started, exit, out = startOrExit(t, "second", bins.lockservice, []string{"--port", itoa(p2), "--data-dir", dir}, ready)
	if !started {
		var ee *exec.ExitError
		if !errors.As(exit, &ee) || ee.ExitCode() == 0 {
			t.Errorf("second lockservice on the same --data-dir exited with %v, want a non-zero status", exit)
		}
		if !strings.Contains(out, dir) {
			t.Errorf("second lockservice refused without naming the data directory %s:\n%s", dir, out)
		}
		t.Logf("second lockservice on %s refused: %v\n%s", dir, exit, out)
		return
	}
	t.Errorf("a second embedded lockservice started on the data directory of a running one (%s)", dir)
	// Show the harm: one client per instance, one key.
	h := newHistory()
	key := "datadir.k" + itoa(p1)
	a, _ := recordAcquire(t, h, connectClient(t, fmt.Sprintf("nats://127.0.0.1:%d", p1)), 0, key, time.Minute)
	b, _ := recordAcquire(t, h, connectClient(t, fmt.Sprintf("nats://127.0.0.1:%d", p2)), 1, key, time.Minute)
	if a != nil && b != nil {
		t.Errorf("two holders of %q: the first instance granted token %d, the second token %d, both for 1 minute", key, a.Token(), b.Token())
	}
	summary, violation := h.verify(t, "two-instances-one-data-dir")
	t.Logf("history: %s; %s", summary, violation)
}

// TestRedisEvictionRefused: a Redis that may evict keys (maxmemory with a
// volatile-* or allkeys-* policy) can drop a live lease (two holders) or
// a fence counter (tokens go back): lockservice must refuse it unless told
// --redis-allow-eviction. If it starts, the test fills memory and shows
// what eviction did.
func TestRedisEvictionRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	needBinaries(t)
	for _, policy := range []string{"volatile-lru", "allkeys-lru"} {
		t.Run(policy, func(t *testing.T) {
			_, natsAddrs := startNATS(t, 1)
			_, redisAddr := startRedis(t, "--maxmemory", "4mb", "--maxmemory-policy", policy)
			args := []string{"--nats-url", natsURL(natsAddrs), "--store", "redis", "--redis-url", "redis://" + redisAddr + "/0"}
			started, exit, out := startOrExit(t, "lockservice", bins.lockservice, args, "serving")
			if !started {
				var ee *exec.ExitError
				if !errors.As(exit, &ee) || ee.ExitCode() == 0 {
					t.Errorf("lockservice on a Redis with maxmemory-policy %s exited with %v, want a non-zero status", policy, exit)
				}
				if !strings.Contains(out, policy) || !strings.Contains(out, "--redis-allow-eviction") {
					t.Errorf("lockservice refused maxmemory-policy %s without naming the policy and --redis-allow-eviction:\n%s", policy, out)
				}
				t.Logf("refused: %v\n%s", exit, out)
				// The operator's override starts it.
				started, exit, out = startOrExit(t, "lockservice-allowed", bins.lockservice, append(args, "--redis-allow-eviction"), "serving")
				if !started {
					t.Errorf("lockservice --redis-allow-eviction on maxmemory-policy %s did not start: %v\n%s", policy, exit, out)
				}
				return
			}
			t.Errorf("lockservice started on a Redis with maxmemory 4mb and maxmemory-policy %s", policy)
			showEviction(t, connectClient(t, natsURL(natsAddrs)), policy)
		})
	}
}

// showEviction holds a key (and notes its last token), fills Redis with
// state objects on other keys, and acquires the key again.
func showEviction(t *testing.T, cl *client.Client, policy string) {
	h := newHistory()
	key := "evict.victim"
	var victim *client.Lock
	if policy == "allkeys-lru" {
		// Tokens: grants and releases, then the key sits unused.
		for range 5 {
			l, lease := recordAcquire(t, h, cl, 0, key, time.Minute)
			if l == nil {
				t.Fatalf("TryAcquire(%q) not granted", key)
			}
			in := lockInput{kind: opRelease, key: key, client: 0, lease: lease}
			call := h.now()
			h.add(0, in, call, outcome(l.Release(t.Context())))
			victim = l
		}
	} else {
		victim, _ = recordAcquire(t, h, cl, 0, key, time.Minute)
		if victim == nil {
			t.Fatalf("TryAcquire(%q) not granted", key)
		}
	}
	value := []byte(strings.Repeat("x", 64<<10))
	for i := range 200 {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		l, err := cl.TryAcquire(ctx, fmt.Sprintf("evict.other.%d", i), client.WithTTL(time.Minute))
		if err == nil {
			err = l.ReleaseWith(ctx, value)
		}
		cancel()
		if err != nil {
			t.Logf("filling: %v (stopping)", err)
			break
		}
	}
	again, _ := recordAcquire(t, h, cl, 1, key, time.Minute)
	switch {
	case again == nil:
		t.Logf("%s: %q not granted again after the fill", policy, key)
	case policy == "volatile-lru":
		t.Errorf("%s: the live lease of %q (token %d, 1 minute) was evicted: a second holder was granted token %d", policy, key, victim.Token(), again.Token())
	case again.Token() <= victim.Token():
		t.Errorf("%s: %q granted token %d after the fill; the last grant before had token %d (tokens went back)", policy, key, again.Token(), victim.Token())
	}
	summary, violation := h.verify(t, "eviction-"+policy)
	t.Logf("history: %s; %s", summary, violation)
}
