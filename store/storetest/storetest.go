// Package storetest is the conformance suite every store.Store backend must
// pass, against a real server. A backend's tests call Run with a function
// that builds a fresh store:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t testing.TB, cfg storetest.Config) store.Store { ... })
//	}
package storetest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockservice/lockservice/store"
)

// Config asks the factory for a store with these settings.
type Config struct {
	// ObjectTTL is the state object expiry (0 = forever).
	ObjectTTL time.Duration
}

// Factory returns a new store for one test; it registers its own cleanup.
// Stores made by one Factory within a test may share the backend, so that
// several of them act like service instances of one deployment.
type Factory func(t testing.TB, cfg Config) store.Store

// NewLockID returns a random lock id (128 bits, hex).
func NewLockID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var keySeq atomic.Int64

// NewKey returns a key unique to this process and test.
func NewKey(t testing.TB) string {
	return fmt.Sprintf("t%d.k%d-%s", time.Now().UnixNano()%1e9, keySeq.Add(1), NewLockID()[:6])
}

// Run runs the conformance suite.
func Run(t *testing.T, newStore Factory) {
	t.Run("AcquireFreeKey", func(t *testing.T) { testAcquireFree(t, newStore) })
	t.Run("AcquireHeldKey", func(t *testing.T) { testAcquireHeld(t, newStore) })
	t.Run("AcquireIdempotent", func(t *testing.T) { testAcquireIdempotent(t, newStore) })
	t.Run("ReleaseWritesAtomically", func(t *testing.T) { testReleaseWrite(t, newStore) })
	t.Run("ReleaseByNonHolder", func(t *testing.T) { testReleaseNonHolder(t, newStore) })
	t.Run("TokensIncrease", func(t *testing.T) { testTokensIncrease(t, newStore) })
	t.Run("RefreshKeepsToken", func(t *testing.T) { testRefresh(t, newStore) })
	t.Run("WriteWhileHeld", func(t *testing.T) { testWrite(t, newStore) })
	t.Run("DeleteObject", func(t *testing.T) { testDelete(t, newStore) })
	t.Run("GetUnknownKey", func(t *testing.T) { testGetUnknown(t, newStore) })
	t.Run("ValuesByteForByte", func(t *testing.T) { testValues(t, newStore) })
	t.Run("TooLargeValue", func(t *testing.T) { testTooLarge(t, newStore) })
	t.Run("ExpiredHolderCannotWrite", func(t *testing.T) { testExpiredHolder(t, newStore) })
	t.Run("NeverExpiresEarly", func(t *testing.T) { testNeverEarly(t, newStore) })
	t.Run("ObjectOutlivesLease", func(t *testing.T) { testObjectOutlivesLease(t, newStore) })
	t.Run("ObjectExpiry", func(t *testing.T) { testObjectExpiry(t, newStore) })
	t.Run("Notifications", func(t *testing.T) { testNotify(t, newStore) })
	t.Run("ConcurrentCounter", func(t *testing.T) { testConcurrentCounter(t, newStore) })
	t.Run("Transfer", func(t *testing.T) { testTransfer(t, newStore) })
	t.Run("ListHeld", func(t *testing.T) { testListHeld(t, newStore) })
	t.Run("ListPrefix", func(t *testing.T) { testListPrefix(t, newStore) })
	t.Run("ListPages", func(t *testing.T) { testListPages(t, newStore) })
	t.Run("Force", func(t *testing.T) { testForce(t, newStore) })
	t.Run("ForceNotifies", func(t *testing.T) { testForceNotifies(t, newStore) })
	t.Run("DelayAfterExpiry", func(t *testing.T) { testDelayAfterExpiry(t, newStore) })
	t.Run("DelayNotAfterRelease", func(t *testing.T) { testDelayNotAfterRelease(t, newStore) })
	t.Run("DelayKeptByRefreshAndTransfer", func(t *testing.T) { testDelayKeptByRefreshAndTransfer(t, newStore) })
	t.Run("DelayAfterForce", func(t *testing.T) { testDelayAfterForce(t, newStore) })
	t.Run("DelayNotifies", func(t *testing.T) { testDelayNotifies(t, newStore) })
	t.Run("DelayInGrant", func(t *testing.T) { testDelayInGrant(t, newStore) })
}

const ttl = 10 * time.Second

func mustAcquire(t testing.TB, s store.Store, key, id string, opts store.AcquireOptions) store.Grant {
	t.Helper()
	if opts.TTL == 0 {
		opts.TTL = ttl
	}
	g, err := s.Acquire(t.Context(), key, id, opts)
	if err != nil {
		t.Fatalf("Acquire(%q) = %v, want nil", key, err)
	}
	return g
}

func mustGet(t testing.TB, s store.Store, key string) store.Info {
	t.Helper()
	info, err := s.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q) = %v, want nil", key, err)
	}
	return info
}

func set(v string) store.Update { return store.Update{Op: store.Set, Value: []byte(v)} }

func testAcquireFree(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	before := time.Now()
	g := mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{TTL: 5 * time.Second, Owner: "worker-1"})
	if g.Token == 0 {
		t.Errorf("Acquire token = 0, want > 0")
	}
	if g.Value != nil {
		t.Errorf("Acquire value = %q, want nil for a new key", g.Value)
	}
	if g.TTL != 5*time.Second || g.Owner != "worker-1" {
		t.Errorf("Acquire lease = %+v, want TTL 5s owner worker-1", g.Lease)
	}
	if g.ExpiresAt.Before(before.Add(5*time.Second - time.Second)) {
		t.Errorf("Acquire ExpiresAt = %v, want about %v", g.ExpiresAt, before.Add(5*time.Second))
	}
	info := mustGet(t, s, key)
	if !info.Locked || info.Lease.Token != g.Token || info.Lease.Owner != "worker-1" {
		t.Errorf("Get = %+v, want locked with token %d owner worker-1", info, g.Token)
	}
}

func testAcquireHeld(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	g := mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{Owner: "a"})
	_, err := s.Acquire(t.Context(), key, NewLockID(), store.AcquireOptions{TTL: ttl})
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second Acquire = %v, want ErrLocked", err)
	}
	var le *store.LockedError
	if !errors.As(err, &le) || le.Lease.Token != g.Token || le.Lease.Owner != "a" {
		t.Errorf("second Acquire error = %#v, want *LockedError with token %d owner a", err, g.Token)
	}
}

func testAcquireIdempotent(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	s2 := newStore(t, Config{})
	key := NewKey(t)
	id := NewLockID()
	g := mustAcquire(t, s, key, id, store.AcquireOptions{})
	if err := s.Write(t.Context(), key, id, set(`"v"`)); err != nil {
		t.Fatalf("Write = %v", err)
	}
	for _, st := range []store.Store{s, s2} {
		again := mustAcquire(t, st, key, id, store.AcquireOptions{})
		if again.Token != g.Token {
			t.Errorf("repeated Acquire token = %d, want the same grant %d", again.Token, g.Token)
		}
		if string(again.Value) != `"v"` {
			t.Errorf("repeated Acquire value = %q, want %q", again.Value, `"v"`)
		}
	}
}

func testReleaseWrite(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	id := NewLockID()
	mustAcquire(t, s, key, id, store.AcquireOptions{})
	if err := s.Release(t.Context(), key, id, set(`{"n":1}`)); err != nil {
		t.Fatalf("Release = %v, want nil", err)
	}
	info := mustGet(t, s, key)
	if info.Locked || string(info.Value) != `{"n":1}` {
		t.Errorf("Get after release = locked %v value %q, want unlocked value {\"n\":1}", info.Locked, info.Value)
	}
	g := mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{})
	if string(g.Value) != `{"n":1}` {
		t.Errorf("Acquire after release value = %q, want {\"n\":1}", g.Value)
	}
	// A release that keeps the state.
	if err := s.Release(t.Context(), key, "not-the-holder-0000", store.Update{}); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Release by non-holder = %v, want ErrNotHeld", err)
	}
}

func testReleaseNonHolder(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	id := NewLockID()
	g := mustAcquire(t, s, key, id, store.AcquireOptions{})
	if err := s.Write(t.Context(), key, id, set(`1`)); err != nil {
		t.Fatal(err)
	}
	for _, u := range []store.Update{{}, set(`2`), {Op: store.Delete}} {
		if err := s.Release(t.Context(), key, NewLockID(), u); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Release(op %d) by forged id = %v, want ErrNotHeld", u.Op, err)
		}
		if err := s.Write(t.Context(), key, NewLockID(), u); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Write(op %d) by forged id = %v, want ErrNotHeld", u.Op, err)
		}
	}
	if _, err := s.Refresh(t.Context(), key, NewLockID(), ttl); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Refresh by forged id = %v, want ErrNotHeld", err)
	}
	info := mustGet(t, s, key)
	if !info.Locked || info.Lease.Token != g.Token || string(info.Value) != "1" {
		t.Errorf("Get = %+v, want still locked with token %d and value 1", info, g.Token)
	}
	// Released keys are not held by anyone either.
	if err := s.Release(t.Context(), key, id, store.Update{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(t.Context(), key, id, set(`3`)); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("second Release = %v, want ErrNotHeld", err)
	}
	if info := mustGet(t, s, key); string(info.Value) != "1" {
		t.Errorf("value after second Release = %q, want 1 (unchanged)", info.Value)
	}
}

func testTokensIncrease(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	s2 := newStore(t, Config{})
	key := NewKey(t)
	var last uint64
	for i := 0; i < 20; i++ {
		st := []store.Store{s, s2}[i%2]
		id := NewLockID()
		g := mustAcquire(t, st, key, id, store.AcquireOptions{})
		if g.Token <= last {
			t.Fatalf("grant %d token = %d, want > %d", i, g.Token, last)
		}
		last = g.Token
		u := store.Update{}
		if i%5 == 4 {
			u.Op = store.Delete // deleting the object must not reset tokens
		}
		if err := st.Release(t.Context(), key, id, u); err != nil {
			t.Fatal(err)
		}
		if info := mustGet(t, st, key); info.Locked {
			t.Fatalf("Get after release: locked")
		}
	}
}

func testRefresh(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	id := NewLockID()
	g := mustAcquire(t, s, key, id, store.AcquireOptions{TTL: 2 * time.Second, Owner: "o"})
	l, err := s.Refresh(t.Context(), key, id, 20*time.Second)
	if err != nil {
		t.Fatalf("Refresh = %v", err)
	}
	if l.Token != g.Token || l.TTL != 20*time.Second || l.Owner != "o" {
		t.Errorf("Refresh lease = %+v, want token %d TTL 20s owner o", l, g.Token)
	}
	l2, err := s.Refresh(t.Context(), key, id, 30*time.Second)
	if err != nil || l2.Token != g.Token {
		t.Errorf("second Refresh = %+v, %v, want token %d", l2, err, g.Token)
	}
	if info := mustGet(t, s, key); info.Lease.Token != g.Token || info.Lease.TTL != 30*time.Second {
		t.Errorf("Get after refresh = %+v, want token %d TTL 30s", info.Lease, g.Token)
	}
	if _, err := s.Refresh(t.Context(), key, id, -time.Second); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Refresh(-1s) = %v, want ErrInvalid", err)
	}
	if err := s.Release(t.Context(), key, id, store.Update{}); err != nil {
		t.Fatalf("Release after refresh = %v", err)
	}
	if _, err := s.Refresh(t.Context(), key, id, ttl); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Refresh after release = %v, want ErrNotHeld", err)
	}
}

func testWrite(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	id := NewLockID()
	g := mustAcquire(t, s, key, id, store.AcquireOptions{})
	for i := 0; i < 3; i++ {
		if err := s.Write(t.Context(), key, id, set(strconv.Itoa(i))); err != nil {
			t.Fatalf("Write %d = %v", i, err)
		}
	}
	info := mustGet(t, s, key)
	if !info.Locked || info.Lease.Token != g.Token || string(info.Value) != "2" {
		t.Errorf("Get after writes = %+v, want locked token %d value 2", info, g.Token)
	}
	if err := s.Write(t.Context(), key, id, store.Update{Op: store.Delete}); err != nil {
		t.Fatalf("Write(Delete) = %v", err)
	}
	if info := mustGet(t, s, key); !info.Locked || info.Value != nil {
		t.Errorf("Get after Write(Delete) = %+v, want locked, no value", info)
	}
	if err := s.Release(t.Context(), key, id, store.Update{}); err != nil {
		t.Fatal(err)
	}
}

func testDelete(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	id := NewLockID()
	mustAcquire(t, s, key, id, store.AcquireOptions{})
	if err := s.Release(t.Context(), key, id, set(`"x"`)); err != nil {
		t.Fatal(err)
	}
	id2 := NewLockID()
	g := mustAcquire(t, s, key, id2, store.AcquireOptions{})
	if string(g.Value) != `"x"` {
		t.Fatalf("value = %q", g.Value)
	}
	if err := s.Release(t.Context(), key, id2, store.Update{Op: store.Delete}); err != nil {
		t.Fatalf("Release(Delete) = %v", err)
	}
	info := mustGet(t, s, key)
	if info.Locked || info.Value != nil {
		t.Errorf("Get after delete = %+v, want unlocked with no value", info)
	}
	if g3 := mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{}); g3.Value != nil || g3.Token <= g.Token {
		t.Errorf("Acquire after delete = token %d value %q, want token > %d and no value", g3.Token, g3.Value, g.Token)
	}
}

func testGetUnknown(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	info := mustGet(t, s, NewKey(t))
	if info.Locked || info.Value != nil || info.Lease.Token != 0 {
		t.Errorf("Get(unknown) = %+v, want zero Info", info)
	}
}

func testValues(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	for _, v := range [][]byte{{}, {0}, []byte("null"), {0xff, 0x00, 0x80, '\n'}, bytes.Repeat([]byte("ab"), 100_000)} {
		key := NewKey(t)
		id := NewLockID()
		mustAcquire(t, s, key, id, store.AcquireOptions{})
		if err := s.Release(t.Context(), key, id, store.Update{Op: store.Set, Value: v}); err != nil {
			t.Fatalf("Release(%d bytes) = %v", len(v), err)
		}
		info := mustGet(t, s, key)
		if info.Value == nil || !bytes.Equal(info.Value, v) {
			t.Errorf("value of %d bytes read back as %d bytes (nil %v)", len(v), len(info.Value), info.Value == nil)
		}
	}
}

func testTooLarge(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	id := NewLockID()
	mustAcquire(t, s, key, id, store.AcquireOptions{})
	big := make([]byte, 64<<20)
	if err := s.Release(t.Context(), key, id, store.Update{Op: store.Set, Value: big}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("Release(64 MiB) = %v, want ErrInvalid", err)
	}
	if info := mustGet(t, s, key); !info.Locked {
		t.Errorf("lock released by a rejected release")
	}
}

// acquireWhenFree tries until the key is granted (the lease of another holder
// must run out first) or the deadline passes.
func acquireWhenFree(t testing.TB, s store.Store, key, id string, within time.Duration) store.Grant {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		g, err := s.Acquire(t.Context(), key, id, store.AcquireOptions{TTL: ttl})
		if err == nil {
			return g
		}
		if !errors.Is(err, store.ErrLocked) || time.Now().After(deadline) {
			t.Fatalf("Acquire(%q) = %v after %v", key, err, within)
		}
		time.Sleep(20 * time.Millisecond) // polling the store is what is under test here
	}
}

func testExpiredHolder(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	a := NewLockID()
	ga := mustAcquire(t, s, key, a, store.AcquireOptions{TTL: time.Second})
	if err := s.Write(t.Context(), key, a, set(`"a"`)); err != nil {
		t.Fatal(err)
	}
	b := NewLockID()
	gb := acquireWhenFree(t, s, key, b, 10*time.Second)
	if gb.Token <= ga.Token {
		t.Errorf("token after expiry = %d, want > %d", gb.Token, ga.Token)
	}
	if string(gb.Value) != `"a"` {
		t.Errorf("value after expiry = %q, want the last written \"a\"", gb.Value)
	}
	if err := s.Release(t.Context(), key, a, set(`"stale"`)); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Release by expired holder = %v, want ErrNotHeld", err)
	}
	if err := s.Write(t.Context(), key, a, set(`"stale"`)); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Write by expired holder = %v, want ErrNotHeld", err)
	}
	if _, err := s.Refresh(t.Context(), key, a, ttl); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Refresh by expired holder = %v, want ErrNotHeld", err)
	}
	info := mustGet(t, s, key)
	if !info.Locked || info.Lease.Token != gb.Token || string(info.Value) != `"a"` {
		t.Errorf("Get = %+v value %q, want held by the new holder (token %d) with value \"a\"", info.Lease, info.Value, gb.Token)
	}
}

func testNeverEarly(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	lease := 1500 * time.Millisecond
	start := time.Now()
	mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{TTL: lease})
	acquireWhenFree(t, s, key, NewLockID(), 10*time.Second)
	if got := time.Since(start); got < lease {
		t.Errorf("lease of %v was taken over after %v, before it ended", lease, got)
	}
}

func testObjectOutlivesLease(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	id := NewLockID()
	mustAcquire(t, s, key, id, store.AcquireOptions{TTL: time.Second})
	if err := s.Write(t.Context(), key, id, set(`"kept"`)); err != nil {
		t.Fatal(err)
	}
	g := acquireWhenFree(t, s, key, NewLockID(), 10*time.Second) // the lease expired
	if string(g.Value) != `"kept"` {
		t.Errorf("value after lease expiry = %q, want \"kept\"", g.Value)
	}
}

func testObjectExpiry(t *testing.T, newStore Factory) {
	if testing.Short() {
		t.Skip("waits for an object to expire")
	}
	s := newStore(t, Config{ObjectTTL: time.Second})
	key := NewKey(t)
	id := NewLockID()
	start := time.Now()
	mustAcquire(t, s, key, id, store.AcquireOptions{TTL: time.Minute})
	if err := s.Release(t.Context(), key, id, set(`"short"`)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info := mustGet(t, s, key)
		if info.Value == nil {
			if time.Since(start) < time.Second {
				t.Errorf("object expired after %v, before its TTL of 1s", time.Since(start))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("object with TTL 1s still there after 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testNotify(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	n, ok := s.(store.Notifier)
	if !ok {
		t.Skip("store does not implement store.Notifier; the service uses expiry timers")
	}
	events := make(chan store.Event, 100)
	n.Notify(func(e store.Event) { events <- e })
	key := NewKey(t)
	id := NewLockID()
	g := mustAcquire(t, s, key, id, store.AcquireOptions{})
	if err := s.Release(t.Context(), key, id, store.Update{}); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, key, store.Released, g.Token)
	g2 := mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{TTL: time.Second})
	waitEvent(t, events, key, store.Expired, g2.Token)
}

// waitEvent waits for the next event on key and checks its kind and token.
func waitEvent(t testing.TB, events <-chan store.Event, key string, kind store.EventKind, token uint64) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-events:
			if e.Key != key {
				continue
			}
			if e.Kind != kind || e.Token != token {
				t.Errorf("event = %+v, want kind %d token %d", e, kind, token)
			}
			return
		case <-timeout:
			t.Fatalf("no event of kind %d for %q", kind, key)
		}
	}
}

// testConcurrentCounter runs many holders on one key, each incrementing the
// state under the lock; mutual exclusion and the fencing of writes mean no
// increment is lost and grants never overlap.
func testConcurrentCounter(t *testing.T, newStore Factory) {
	stores := []store.Store{newStore(t, Config{}), newStore(t, Config{}), newStore(t, Config{})}
	key := NewKey(t)
	const workers, rounds = 6, 15
	var (
		inside    atomic.Int32
		mu        sync.Mutex
		tokens    []uint64
		successes int
	)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := stores[w%len(stores)]
			for r := 0; r < rounds; {
				id := NewLockID()
				g, err := s.Acquire(t.Context(), key, id, store.AcquireOptions{TTL: ttl})
				if errors.Is(err, store.ErrLocked) {
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					t.Errorf("Acquire = %v", err)
					return
				}
				if n := inside.Add(1); n != 1 {
					t.Errorf("%d holders at once", n)
				}
				n := 0
				if g.Value != nil {
					n, _ = strconv.Atoi(string(g.Value))
				}
				mu.Lock()
				tokens = append(tokens, g.Token)
				successes++
				mu.Unlock()
				inside.Add(-1)
				if err := s.Release(t.Context(), key, id, set(strconv.Itoa(n+1))); err != nil {
					t.Errorf("Release = %v", err)
					return
				}
				r++
			}
		}()
	}
	wg.Wait()
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("grant %d token %d not greater than the previous grant's %d", i, tokens[i], tokens[i-1])
		}
	}
	info := mustGet(t, stores[0], key)
	if got := string(info.Value); got != strconv.Itoa(successes) {
		t.Errorf("counter = %s after %d locked increments, want %d", got, successes, successes)
	}
}

func testTransfer(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	tr, ok := s.(store.Transferrer)
	if !ok {
		t.Skip("store does not implement store.Transferrer")
	}
	key := NewKey(t)
	a, b, c := NewLockID(), NewLockID(), NewLockID()
	ga := mustAcquire(t, s, key, a, store.AcquireOptions{})
	if _, err := tr.Transfer(t.Context(), key, NewLockID(), set(`"forged"`), b, store.AcquireOptions{TTL: ttl}); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Transfer from a non-holder = %v, want ErrNotHeld", err)
	}
	gb, err := tr.Transfer(t.Context(), key, a, set(`"from a"`), b, store.AcquireOptions{TTL: ttl, Owner: "b"})
	if err != nil {
		t.Fatalf("Transfer = %v", err)
	}
	if gb.Token <= ga.Token || string(gb.Value) != `"from a"` || gb.Owner != "b" || gb.TTL != ttl {
		t.Errorf("Transfer grant = %+v value %q, want token > %d, value \"from a\", owner b", gb.Lease, gb.Value, ga.Token)
	}
	info := mustGet(t, s, key)
	if !info.Locked || info.Lease.Token != gb.Token || string(info.Value) != `"from a"` {
		t.Errorf("Get after transfer = %+v %q", info.Lease, info.Value)
	}
	if err := s.Release(t.Context(), key, a, set(`"stale"`)); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Release by the previous holder = %v, want ErrNotHeld", err)
	}
	gc, err := tr.Transfer(t.Context(), key, b, store.Update{}, c, store.AcquireOptions{TTL: ttl})
	if err != nil || gc.Token <= gb.Token || string(gc.Value) != `"from a"` {
		t.Errorf("Transfer keeping the state = %+v %q, %v", gc.Lease, gc.Value, err)
	}
	gd, err := tr.Transfer(t.Context(), key, c, store.Update{Op: store.Delete}, a, store.AcquireOptions{TTL: ttl})
	if err != nil || gd.Value != nil || gd.Token <= gc.Token {
		t.Errorf("Transfer deleting the state = %+v %q, %v", gd.Lease, gd.Value, err)
	}
	if err := s.Release(t.Context(), key, a, store.Update{}); err != nil {
		t.Errorf("Release by the new holder = %v", err)
	}
}
