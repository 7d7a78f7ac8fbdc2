package redis_test

import (
	"errors"
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/redis"
	"github.com/lockservice/lockservice/store/storetest"
)

// checkRefused checks that err is New's refusal of an eviction policy and
// that its text says what to do.
func checkRefused(t testing.TB, err error, mentions ...string) {
	t.Helper()
	if !errors.Is(err, redis.ErrEvictionPolicy) || errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("New = %v, want ErrEvictionPolicy (not ErrUnavailable)", err)
	}
	for _, m := range append(mentions, "noeviction", "AllowEviction") {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("New = %q, want it to mention %q", err, m)
		}
	}
}

// warningWith returns the warning that contains every one of subs, or "".
func warningWith(ws []string, subs ...string) string {
	for _, w := range ws {
		found := true
		for _, sub := range subs {
			found = found && strings.Contains(w, sub)
		}
		if found {
			return w
		}
	}
	return ""
}

// TestRefusesVolatileEviction: under a volatile-* policy the lease hash,
// the only key of the store with a TTL, is what Redis evicts when state
// objects (no TTL) fill memory. A live lease then vanishes and a second
// lock id is granted while the first still holds, so New must refuse the
// server.
func TestRefusesVolatileEviction(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t, "--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru")
	_, err := redis.New(t.Context(), srv.Client(t), redis.Config{})
	checkRefused(t, err, srv.Addr, "volatile-lru", "second holder")
}

// TestRefusesAllkeysEviction: under an allkeys-* policy Redis also evicts
// the fence counter (no TTL, rarely touched), and tokens start again at 1.
func TestRefusesAllkeysEviction(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t, "--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
	_, err := redis.New(t.Context(), srv.Client(t), redis.Config{})
	checkRefused(t, err, srv.Addr, "allkeys-lru", "tokens start again at 1")
}

// TestRefusesEvictionOnAnyClusterMaster: every Cluster master is checked,
// not just the node the client happens to ask.
func TestRefusesEvictionOnAnyClusterMaster(t *testing.T) {
	t.Parallel()
	addrs := testsrv.StartRedisCluster(t, 3)
	bad := addrs[1]
	node := goredis.NewClient(&goredis.Options{Addr: bad})
	t.Cleanup(func() { _ = node.Close() })
	if err := node.ConfigSet(t.Context(), "maxmemory-policy", "volatile-ttl").Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory-policy on %s = %v", bad, err)
	}
	_, err := redis.New(t.Context(), testsrv.ClusterClient(t, addrs), redis.Config{})
	checkRefused(t, err, bad, "volatile-ttl")
	for _, good := range []string{addrs[0], addrs[2]} {
		if strings.Contains(err.Error(), good) {
			t.Errorf("New = %q, want only %s named (%s has noeviction)", err, bad, good)
		}
	}
}

// TestAllowEvictionStarts: with Config.AllowEviction the store starts on
// an evicting Redis, works, and reports the risk it accepted.
func TestAllowEvictionStarts(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t, "--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru")
	s := newStore(t, srv.Client(t), redis.Config{AllowEviction: true})
	if w := warningWith(s.Warnings(), srv.Addr, "volatile-lru", "AllowEviction"); w == "" {
		t.Errorf("Warnings() = %q, want one naming %s, volatile-lru and AllowEviction", s.Warnings(), srv.Addr)
	}
	mustAcquire(t, s, storetest.NewKey(t), storetest.NewLockID())
}

// TestRefusesWhenConfigDenied: where CONFIG GET is not allowed (an ACL
// user without +config|get here; managed services rename or block CONFIG)
// New cannot see the policy, so it refuses unless told to start without
// the check, and then warns that nothing was checked.
func TestRefusesWhenConfigDenied(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	admin := srv.Client(t)
	if err := admin.Do(t.Context(), "acl", "setuser", "app", "on", ">app-password", "~*", "&*", "+@all", "-config").Err(); err != nil {
		t.Fatalf("ACL SETUSER app = %v", err)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr, Username: "app", Password: "app-password"})
	t.Cleanup(func() { _ = rdb.Close() })
	if err := rdb.ConfigGet(t.Context(), "maxmemory-policy").Err(); err == nil {
		t.Fatalf("CONFIG GET as user app = nil, want it refused (the test's ACL did not apply)")
	}

	_, err := redis.New(t.Context(), rdb, redis.Config{})
	checkRefused(t, err, srv.Addr, "CONFIG GET", "NOPERM", "+config|get")

	s := newStore(t, rdb, redis.Config{AllowEviction: true})
	if w := warningWith(s.Warnings(), srv.Addr, "unchecked"); w == "" {
		t.Errorf("Warnings() = %q, want one saying the settings of %s are unchecked", s.Warnings(), srv.Addr)
	}
	mustAcquire(t, s, storetest.NewKey(t), storetest.NewLockID())
}

// TestWarnsWithoutPersistence: a Redis that loses its data on restart
// starts tokens at 1 again. The store still starts (tests and caches run
// like that) but says so in Warnings.
func TestWarnsWithoutPersistence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string // a phrase of the warning, "" for none
	}{
		{"none", nil, "no persistence"},
		{"RDB only", []string{"--save", "3600 1"}, "RDB snapshots only"},
		{"AOF", []string{"--appendonly", "yes"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := testsrv.StartRedis(t, tt.args...)
			s := newStore(t, srv.Client(t), redis.Config{})
			ws := s.Warnings()
			if tt.want == "" {
				if len(ws) != 0 {
					t.Errorf("Warnings() = %q, want none", ws)
				}
				return
			}
			if w := warningWith(ws, srv.Addr, tt.want, "appendonly yes"); w == "" || len(ws) != 1 {
				t.Errorf("Warnings() = %q, want one warning naming %s, saying %q and the fix (appendonly yes)", ws, srv.Addr, tt.want)
			}
		})
	}
}
