package redis_test

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/redis"
	"github.com/lockservice/lockservice/store/storetest"
)

const ttl = 10 * time.Second

// factory makes stores on rdb that share one namespace, like service
// instances of one deployment.
func factory(rdb goredis.UniversalClient) storetest.Factory {
	return func(t testing.TB, cfg storetest.Config) store.Store {
		return newStore(t, rdb, redis.Config{Namespace: "conformance", ObjectTTL: cfg.ObjectTTL})
	}
}

func newStore(t testing.TB, rdb goredis.UniversalClient, cfg redis.Config) *redis.Store {
	t.Helper()
	s, err := redis.New(t.Context(), rdb, cfg)
	if err != nil {
		t.Fatalf("redis.New = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustAcquire(t testing.TB, s store.Store, key, id string) store.Grant {
	t.Helper()
	g, err := s.Acquire(t.Context(), key, id, store.AcquireOptions{TTL: ttl, Owner: "test"})
	if err != nil {
		t.Fatalf("Acquire(%q) = %v, want nil", key, err)
	}
	return g
}

func TestConformance(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	storetest.Run(t, factory(srv.Client(t)))
}

// TestConformanceCluster runs the suite on three masters: a script that
// touches a key it did not declare, or keys of different slots, fails here.
func TestConformanceCluster(t *testing.T) {
	t.Parallel()
	addrs := testsrv.StartRedisCluster(t, 3)
	storetest.Run(t, factory(testsrv.ClusterClient(t, addrs)))
}

// TestClusterSpreadsKeys checks that the cluster test exercises several
// nodes, and that the keys of one lock share a slot.
func TestClusterSpreadsKeys(t *testing.T) {
	t.Parallel()
	addrs := testsrv.StartRedisCluster(t, 3)
	rdb := testsrv.ClusterClient(t, addrs)
	s := newStore(t, rdb, redis.Config{Namespace: "spread"})
	nodes := map[string]bool{}
	for i := 0; i < 30; i++ {
		key := storetest.NewKey(t)
		id := storetest.NewLockID()
		mustAcquire(t, s, key, id)
		if err := s.Release(t.Context(), key, id, store.Update{Op: store.Set, Value: []byte("v")}); err != nil {
			t.Fatalf("Release(%q) = %v", key, err)
		}
		p := "spread:{" + key + "}:"
		var slots []int64
		for _, k := range []string{p + "lock", p + "fence", p + "obj"} {
			slot, err := rdb.ClusterKeySlot(t.Context(), k).Result()
			if err != nil {
				t.Fatalf("CLUSTER KEYSLOT %s = %v", k, err)
			}
			slots = append(slots, slot)
		}
		if slots[0] != slots[1] || slots[1] != slots[2] {
			t.Errorf("keys of %q in slots %v, want one slot", key, slots)
		}
		node, err := rdb.MasterForKey(t.Context(), p+"obj")
		if err != nil {
			t.Fatal(err)
		}
		nodes[node.Options().Addr] = true
	}
	if len(nodes) < 2 {
		t.Errorf("30 keys landed on %d node(s), want several", len(nodes))
	}
}

// TestLayout checks the Redis keys the store writes, which operators read.
func TestLayout(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	rdb := srv.Client(t)
	s := newStore(t, rdb, redis.Config{Namespace: "ns", ObjectTTL: time.Hour})
	ctx := t.Context()
	key := storetest.NewKey(t)
	id := storetest.NewLockID()
	g, err := s.Acquire(ctx, key, id, store.AcquireOptions{TTL: 1500 * time.Millisecond, Owner: "me"})
	if err != nil {
		t.Fatal(err)
	}
	lock := "ns:{" + key + "}:lock"
	h, err := rdb.HGetAll(ctx, lock).Result()
	if err != nil {
		t.Fatal(err)
	}
	if h["o"] != "me" || h["t"] != strconv.FormatUint(g.Token, 10) || h["l"] != "1500" || len(h["h"]) != 32 || strings.Contains(h["h"], id) {
		t.Errorf("HGETALL %s = %v, want o=me t=%d l=1500 and a 32-digit holder hash", lock, h, g.Token)
	}
	if pttl, err := rdb.PTTL(ctx, lock).Result(); err != nil || pttl <= time.Second || pttl > 1500*time.Millisecond {
		t.Errorf("PTTL %s = %v, %v, want in (1s, 1.5s]", lock, pttl, err)
	}
	if err := s.Write(ctx, key, id, store.Update{Op: store.Set, Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	obj := "ns:{" + key + "}:obj"
	if pttl, err := rdb.PTTL(ctx, obj).Result(); err != nil || pttl <= 59*time.Minute || pttl > time.Hour {
		t.Errorf("PTTL %s = %v, %v, want about 1h", obj, pttl, err)
	}
	if err := s.Release(ctx, key, id, store.Update{}); err != nil {
		t.Fatal(err)
	}
	if n, err := rdb.Exists(ctx, lock).Result(); err != nil || n != 0 {
		t.Errorf("EXISTS %s after release = %d, %v, want 0", lock, n, err)
	}
	fence := "ns:{" + key + "}:fence"
	if v, err := rdb.Get(ctx, fence).Result(); err != nil || v != strconv.FormatUint(g.Token, 10) {
		t.Errorf("GET %s = %q, %v, want %d", fence, v, err, g.Token)
	}
	if pttl, err := rdb.PTTL(ctx, fence).Result(); err != nil || pttl != -1 {
		t.Errorf("PTTL %s = %v, %v, want -1 (no expiry)", fence, pttl, err)
	}
	info, err := s.Get(ctx, key)
	if err != nil || info.Locked || info.Lease.Token != g.Token || string(info.Value) != "x" {
		t.Errorf("Get after release = %+v, %v, want unlocked, token %d, value x", info, err, g.Token)
	}

	// A store without ObjectTTL writes objects that never expire.
	s2 := newStore(t, rdb, redis.Config{Namespace: "ns"})
	mustAcquire(t, s2, key, id)
	if err := s2.Release(ctx, key, id, store.Update{Op: store.Set, Value: []byte("y")}); err != nil {
		t.Fatal(err)
	}
	if pttl, err := rdb.PTTL(ctx, obj).Result(); err != nil || pttl != -1 {
		t.Errorf("PTTL %s = %v, %v, want -1 (no expiry)", obj, pttl, err)
	}
}

func TestLockedErrorExpiresIn(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	s := newStore(t, srv.Client(t), redis.Config{})
	key := storetest.NewKey(t)
	g := mustAcquire(t, s, key, storetest.NewLockID())
	_, err := s.Acquire(t.Context(), key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Second})
	var le *store.LockedError
	if !errors.As(err, &le) {
		t.Fatalf("Acquire of a held key = %v, want *store.LockedError", err)
	}
	if le.Key != key || le.Lease.Token != g.Token || le.Lease.Owner != "test" || le.Lease.TTL != ttl {
		t.Errorf("LockedError = %+v, want key %q token %d owner test TTL %v", le, key, g.Token, ttl)
	}
	if le.ExpiresIn <= ttl-time.Second || le.ExpiresIn > ttl {
		t.Errorf("LockedError.ExpiresIn = %v, want just under %v", le.ExpiresIn, ttl)
	}
}

func TestNamespacesAreSeparate(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	rdb := srv.Client(t)
	a := newStore(t, rdb, redis.Config{Namespace: "a"})
	b := newStore(t, rdb, redis.Config{Namespace: "b"})
	key := storetest.NewKey(t)
	mustAcquire(t, a, key, storetest.NewLockID())
	mustAcquire(t, b, key, storetest.NewLockID())
}

// TestScriptCacheFlushed checks the EVAL fallback when Redis lost the
// scripts (SCRIPT FLUSH, or a restart).
func TestScriptCacheFlushed(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	rdb := srv.Client(t)
	s := newStore(t, rdb, redis.Config{})
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	key := storetest.NewKey(t)
	id := storetest.NewLockID()
	mustAcquire(t, s, key, id)
	if err := s.Release(t.Context(), key, id, store.Update{}); err != nil {
		t.Fatalf("Release after SCRIPT FLUSH = %v", err)
	}
	// List's pipelined reads and Force.
	mustAcquire(t, s, key, id)
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if held, _, err := s.List(t.Context(), key, "", 10); err != nil || len(held) != 1 {
		t.Errorf("List after SCRIPT FLUSH = %+v, %v, want the held key", held, err)
	}
	if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Force(t.Context(), key); err != nil {
		t.Errorf("Force after SCRIPT FLUSH = %v", err)
	}
}

func TestInvalid(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	s := newStore(t, srv.Client(t), redis.Config{MaxValueBytes: 10})
	srv.Kill() // invalid requests are rejected before any round trip
	ctx := t.Context()
	id := storetest.NewLockID()
	tests := []struct {
		name string
		call func() error
	}{
		{"Acquire TTL 0", func() error {
			_, err := s.Acquire(ctx, "k", id, store.AcquireOptions{})
			return err
		}},
		{"Acquire empty key", func() error {
			_, err := s.Acquire(ctx, "", id, store.AcquireOptions{TTL: ttl})
			return err
		}},
		{"Acquire key with brace", func() error {
			_, err := s.Acquire(ctx, "}k", id, store.AcquireOptions{TTL: ttl})
			return err
		}},
		{"Refresh negative TTL", func() error {
			_, err := s.Refresh(ctx, "k", id, -time.Second)
			return err
		}},
		{"Get empty key", func() error {
			_, err := s.Get(ctx, "")
			return err
		}},
		{"Write Set nil", func() error { return s.Write(ctx, "k", id, store.Update{Op: store.Set}) }},
		{"Write too large", func() error {
			return s.Write(ctx, "k", id, store.Update{Op: store.Set, Value: make([]byte, 11)})
		}},
		{"Release too large", func() error {
			return s.Release(ctx, "k", id, store.Update{Op: store.Set, Value: make([]byte, 11)})
		}},
		{"Release unknown op", func() error { return s.Release(ctx, "k", id, store.Update{Op: 7}) }},
		{"List limit 0", func() error {
			_, _, err := s.List(ctx, "", "", 0)
			return err
		}},
		{"List prefix with brace", func() error {
			_, _, err := s.List(ctx, "a{", "", 10)
			return err
		}},
		{"List foreign cursor", func() error {
			_, _, err := s.List(ctx, "", "k7", 10)
			return err
		}},
		{"Force key with brace", func() error {
			_, err := s.Force(ctx, "}k")
			return err
		}},
	}
	for _, tt := range tests {
		if err := tt.call(); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s = %v, want ErrInvalid", tt.name, err)
		}
	}
	// At the limit is fine (and, with the server gone, unavailable).
	if err := s.Write(ctx, "k", id, store.Update{Op: store.Set, Value: make([]byte, 10)}); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Write(10 bytes) to a dead server = %v, want ErrUnavailable", err)
	}
}

func TestNewConfig(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	rdb := srv.Client(t)
	for _, cfg := range []redis.Config{
		{Namespace: "a{b"},
		{ObjectTTL: -time.Second},
		{MaxValueBytes: -1},
		{Replicas: -1},
		{Replicas: 1, ReplicaTimeout: -time.Second},
	} {
		if _, err := redis.New(t.Context(), rdb, cfg); err == nil || errors.Is(err, store.ErrUnavailable) {
			t.Errorf("New(%+v) = %v, want a config error", cfg, err)
		}
	}
	ring := goredis.NewRing(&goredis.RingOptions{Addrs: map[string]string{"a": srv.Addr}})
	t.Cleanup(func() { _ = ring.Close() })
	if _, err := redis.New(t.Context(), ring, redis.Config{Replicas: 1}); err == nil {
		t.Errorf("New(Ring, Replicas 1) = nil, want an error (WAIT needs the key's node)")
	}
	if _, err := redis.New(t.Context(), ring, redis.Config{}); err != nil {
		t.Errorf("New(Ring) = %v, want nil", err)
	}
}

func TestNewUnreachable(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	rdb := srv.Client(t)
	srv.Kill()
	_, err := redis.New(t.Context(), rdb, redis.Config{})
	if !errors.Is(err, store.ErrUnavailable) || !strings.Contains(err.Error(), srv.Addr) {
		t.Errorf("New against a dead server = %v, want ErrUnavailable naming %s", err, srv.Addr)
	}
}

func TestContextCanceled(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	s := newStore(t, srv.Client(t), redis.Config{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Acquire(ctx, storetest.NewKey(t), storetest.NewLockID(), store.AcquireOptions{TTL: ttl})
	if !errors.Is(err, context.Canceled) || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Acquire with a canceled context = %v, want context.Canceled, not ErrUnavailable", err)
	}
}

// TestServerRestart kills redis-server under a store: every operation then
// reports ErrUnavailable (never ErrNotHeld or ErrLocked), and the same store
// works again once the server is back.
func TestServerRestart(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	s := newStore(t, srv.Client(t), redis.Config{})
	ctx := t.Context()
	key := storetest.NewKey(t)
	id := storetest.NewLockID()
	mustAcquire(t, s, key, id)

	srv.Kill()
	_, errAcquire := s.Acquire(ctx, key, id, store.AcquireOptions{TTL: ttl})
	_, errRefresh := s.Refresh(ctx, key, id, ttl)
	errWrite := s.Write(ctx, key, id, store.Update{Op: store.Set, Value: []byte("v")})
	errRelease := s.Release(ctx, key, id, store.Update{})
	_, errGet := s.Get(ctx, key)
	for name, err := range map[string]error{"Acquire": errAcquire, "Refresh": errRefresh, "Write": errWrite, "Release": errRelease, "Get": errGet} {
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s with redis-server down = %v, want ErrUnavailable", name, err)
		}
	}

	srv.Restart(t) // no persistence: the server comes back empty
	// After failed dials go-redis's pool answers with the last dial error
	// until its background probe (once a second) connects again.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Get(ctx, key)
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Get after restart = %v, want nil within 10s", err)
		}
		time.Sleep(50 * time.Millisecond) // the client reconnects on its own schedule
	}
	g := mustAcquire(t, s, key, id)
	if err := s.Release(ctx, key, id, store.Update{Op: store.Set, Value: []byte("after")}); err != nil {
		t.Fatalf("Release after restart = %v", err)
	}
	info, err := s.Get(ctx, key)
	if err != nil || info.Locked || info.Lease.Token != g.Token || string(info.Value) != "after" {
		t.Errorf("Get after restart = %+v, %v, want unlocked, token %d, value after", info, err, g.Token)
	}
}

// startReplica starts a replica of primary and waits until it acknowledges
// writes. INFO says state=online before that: after a diskless full sync
// the primary streams commands only once the replica's first ACK arrives.
func startReplica(t testing.TB, primary *testsrv.Redis) *testsrv.Redis {
	t.Helper()
	host, port, _ := strings.Cut(primary.Addr, ":")
	replica := testsrv.StartRedis(t, "--replicaof", host, port)
	conn := primary.Client(t).(*goredis.Client).Conn() // WAIT counts this connection's writes
	defer conn.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := conn.Set(t.Context(), "replica-probe", replica.Addr, 0).Err(); err != nil {
			t.Fatalf("SET on primary %s = %v", primary.Addr, err)
		}
		n, err := conn.Wait(t.Context(), 1, 100*time.Millisecond).Result() // blocks up to 100ms: no sleep needed
		if err == nil && n == 1 {
			return replica
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s of %s does not acknowledge writes after 10s (WAIT = %d, %v)", replica.Addr, primary.Addr, n, err)
		}
	}
}

func TestReplicas(t *testing.T) {
	t.Parallel()
	// No 5s wait for more replicas before the initial full sync.
	primary := testsrv.StartRedis(t, "--repl-diskless-sync-delay", "0")
	replica := startReplica(t, primary)
	s := newStore(t, primary.Client(t), redis.Config{Replicas: 1, ReplicaTimeout: 300 * time.Millisecond})
	ctx := t.Context()
	key := storetest.NewKey(t)
	id := storetest.NewLockID()

	g := mustAcquire(t, s, key, id)
	if err := s.Write(ctx, key, id, store.Update{Op: store.Set, Value: []byte("replicated")}); err != nil {
		t.Fatalf("Write with a live replica = %v", err)
	}
	if _, err := s.Refresh(ctx, key, id, ttl); err != nil {
		t.Fatalf("Refresh with a live replica = %v", err)
	}
	// The replica has what the primary acknowledged.
	if v, err := replica.Client(t).Get(ctx, "lockservice:{"+key+"}:obj").Result(); err != nil || v != "replicated" {
		t.Errorf("replica GET obj = %q, %v, want replicated", v, err)
	}
	// Operations that change nothing succeed without waiting.
	if _, err := s.Acquire(ctx, key, storetest.NewLockID(), store.AcquireOptions{TTL: ttl}); !errors.Is(err, store.ErrLocked) {
		t.Errorf("Acquire by another id = %v, want ErrLocked", err)
	}

	replica.Kill()
	checkNotReplicated := func(name string, err error) {
		t.Helper()
		if !errors.Is(err, redis.ErrNotReplicated) || !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s with the replica down = %v, want ErrNotReplicated and ErrUnavailable", name, err)
		}
	}
	err := s.Write(ctx, key, id, store.Update{Op: store.Set, Value: []byte("lonely")})
	checkNotReplicated("Write", err)
	// An idempotent retry of Acquire must not report a grant the replica
	// may not have.
	_, err = s.Acquire(ctx, key, id, store.AcquireOptions{TTL: ttl})
	checkNotReplicated("repeated Acquire", err)
	_, err = s.Refresh(ctx, key, id, ttl)
	checkNotReplicated("Refresh", err)
	// Not-held answers change nothing and need no replica.
	if err := s.Write(ctx, key, storetest.NewLockID(), store.Update{Op: store.Delete}); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Write by a non-holder = %v, want ErrNotHeld", err)
	}
	info, err := s.Get(ctx, key)
	if err != nil || !info.Locked || info.Lease.Token != g.Token || string(info.Value) != "lonely" {
		t.Errorf("Get = %+v, %v, want locked with token %d and the primary's value lonely", info, err, g.Token)
	}
	err = s.Release(ctx, key, id, store.Update{})
	checkNotReplicated("Release", err)
}

// TestReplicasCluster runs the WAIT path on a cluster node (no replicas:
// every write is reported as not replicated, after being applied).
func TestReplicasCluster(t *testing.T) {
	t.Parallel()
	addrs := testsrv.StartRedisCluster(t, 3)
	rdb := testsrv.ClusterClient(t, addrs)
	s := newStore(t, rdb, redis.Config{Replicas: 1, ReplicaTimeout: 50 * time.Millisecond})
	plain := newStore(t, rdb, redis.Config{})
	for i := 0; i < 6; i++ {
		key := storetest.NewKey(t)
		_, err := s.Acquire(t.Context(), key, storetest.NewLockID(), store.AcquireOptions{TTL: ttl})
		if !errors.Is(err, redis.ErrNotReplicated) {
			t.Errorf("Acquire(%q) without replicas = %v, want ErrNotReplicated", key, err)
		}
		if info, err := plain.Get(t.Context(), key); err != nil || !info.Locked {
			t.Errorf("Get(%q) = %+v, %v, want locked (applied on the primary)", key, info, err)
		}
	}
}

// TestValueBytes checks the byte-for-byte round trip of values that look
// like other Redis types.
func TestValueBytes(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	s := newStore(t, srv.Client(t), redis.Config{})
	for _, v := range [][]byte{[]byte("0"), []byte("12345678901234567890"), []byte("-1"), []byte("1e5"), {}} {
		key := storetest.NewKey(t)
		id := storetest.NewLockID()
		mustAcquire(t, s, key, id)
		if err := s.Write(t.Context(), key, id, store.Update{Op: store.Set, Value: v}); err != nil {
			t.Fatal(err)
		}
		g := mustAcquire(t, s, key, id) // the same grant, with the value
		if g.Value == nil || !bytes.Equal(g.Value, v) {
			t.Errorf("Acquire value = %q (nil %v), want %q", g.Value, g.Value == nil, v)
		}
	}
}
