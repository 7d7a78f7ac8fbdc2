package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/lockservice/lockservice/store"
)

// The lock-delay (AcquireOptions.Delay): after a lease expires or is
// forced, nobody gets the key for the delay; a release hands it over at
// once.

// waitUnlocked polls Get until key's lease has ended (polling the store is
// what is under test here) and returns what Get said then.
func waitUnlocked(t testing.TB, s store.Store, key string, within time.Duration) store.Info {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		info := mustGet(t, s, key)
		if !info.Locked {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q still locked after %v", key, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wantDelayed checks that an acquire of key by a newcomer is refused by the
// lock-delay of the lease with token.
func wantDelayed(t testing.TB, s store.Store, key string, token uint64) {
	t.Helper()
	_, err := s.Acquire(t.Context(), key, NewLockID(), store.AcquireOptions{TTL: ttl})
	var le *store.LockedError
	if !errors.As(err, &le) || !le.Delayed || le.Lease.Token != token {
		t.Fatalf("Acquire(%q) in the lock-delay = %v (%+v), want a *LockedError with Delayed for token %d", key, err, le, token)
	}
	if le.ExpiresIn < 0 {
		t.Errorf("LockedError.ExpiresIn = %v, want >= 0", le.ExpiresIn)
	}
}

func testDelayAfterExpiry(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	a := NewLockID()
	const lease, delay = time.Second, 2 * time.Second
	start := time.Now()
	ga := mustAcquire(t, s, key, a, store.AcquireOptions{TTL: lease, Delay: delay})
	if err := s.Write(t.Context(), key, a, set(`"a"`)); err != nil {
		t.Fatal(err)
	}
	info := waitUnlocked(t, s, key, 10*time.Second)
	if time.Since(start) < delay {
		// The delay is still running (it ends 3 s after start at the
		// earliest): everything below is inside it.
		if info.Delay <= 0 {
			t.Errorf("Get in the lock-delay: Delay = %v, want > 0", info.Delay)
		}
		if info.Lease.Token != ga.Token {
			t.Errorf("Get in the lock-delay: token %d, want the ended lease's %d", info.Lease.Token, ga.Token)
		}
		wantDelayed(t, s, key, ga.Token)
		if _, err := s.Refresh(t.Context(), key, a, ttl); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Refresh by the expired holder in its lock-delay = %v, want ErrNotHeld", err)
		}
		if err := s.Write(t.Context(), key, a, set(`"stale"`)); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Write by the expired holder in its lock-delay = %v, want ErrNotHeld", err)
		}
		if err := s.Release(t.Context(), key, a, set(`"stale"`)); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Release by the expired holder in its lock-delay = %v, want ErrNotHeld", err)
		}
		if _, err := s.Acquire(t.Context(), key, a, store.AcquireOptions{TTL: ttl}); !errors.Is(err, store.ErrLocked) {
			t.Errorf("Acquire by the expired holder's lock id in its lock-delay = %v, want ErrLocked", err)
		}
	} else {
		t.Logf("the lease's end was seen %v after the acquire: lock-delay checks skipped", time.Since(start))
	}
	gb := acquireWhenFree(t, s, key, NewLockID(), 15*time.Second)
	if got := time.Since(start); got < lease+delay {
		t.Errorf("key granted %v after a lease of %v with a lock-delay of %v, before both ran out", got, lease, delay)
	}
	if gb.Token <= ga.Token || string(gb.Value) != `"a"` {
		t.Errorf("grant after the delay: token %d value %q, want > %d and the holder's \"a\"", gb.Token, gb.Value, ga.Token)
	}
}

func testDelayNotAfterRelease(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	a := NewLockID()
	ga := mustAcquire(t, s, key, a, store.AcquireOptions{Delay: time.Minute})
	if err := s.Release(t.Context(), key, a, store.Update{}); err != nil {
		t.Fatal(err)
	}
	if info := mustGet(t, s, key); info.Locked || info.Delay != 0 {
		t.Errorf("Get after a release = locked %v delay %v, want free at once", info.Locked, info.Delay)
	}
	gb := mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{Delay: time.Minute})
	if gb.Token <= ga.Token {
		t.Errorf("token %d after release, want > %d", gb.Token, ga.Token)
	}
}

func testDelayKeptByRefreshAndTransfer(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	a := NewLockID()
	// A transfer is a release for A's lease (no delay follows it); the
	// lease it grants B has B's own delay, which B's refresh keeps.
	mustAcquire(t, s, key, a, store.AcquireOptions{TTL: ttl, Delay: time.Minute})
	b := NewLockID()
	var gb store.Grant
	if tr, ok := s.(store.Transferrer); ok {
		var err error
		if gb, err = tr.Transfer(t.Context(), key, a, store.Update{}, b, store.AcquireOptions{TTL: ttl, Delay: 2 * time.Second}); err != nil {
			t.Fatal(err)
		}
	} else {
		if err := s.Release(t.Context(), key, a, store.Update{}); err != nil {
			t.Fatal(err)
		}
		gb = mustAcquire(t, s, key, b, store.AcquireOptions{TTL: ttl, Delay: 2 * time.Second})
	}
	start := time.Now()
	if _, err := s.Refresh(t.Context(), key, b, time.Second); err != nil {
		t.Fatal(err)
	}
	waitUnlocked(t, s, key, 10*time.Second)
	if time.Since(start) < 2*time.Second {
		wantDelayed(t, s, key, gb.Token)
	}
	acquireWhenFree(t, s, key, NewLockID(), 15*time.Second)
	if got := time.Since(start); got < 3*time.Second {
		t.Errorf("key granted %v after a refresh of 1s with a lock-delay of 2s, before both ran out", got)
	}
}

func testDelayAfterForce(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	a := admin(t, s)
	var events chan store.Event
	if n, ok := s.(store.Notifier); ok {
		events = make(chan store.Event, 100)
		n.Notify(func(e store.Event) { events <- e })
	}
	key := NewKey(t)
	id := NewLockID()
	g := mustAcquire(t, s, key, id, store.AcquireOptions{TTL: ttl, Delay: 2 * time.Second})
	start := time.Now()
	if _, err := a.Force(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	if events != nil {
		waitEvent(t, events, key, store.Released, g.Token)
	}
	info := mustGet(t, s, key)
	if info.Locked {
		t.Errorf("Get after Force = locked, want unlocked")
	}
	if time.Since(start) < 2*time.Second {
		if info.Delay <= 0 {
			t.Errorf("Get in the lock-delay after Force: Delay = %v, want > 0", info.Delay)
		}
		wantDelayed(t, s, key, g.Token)
		if _, err := s.Refresh(t.Context(), key, id, ttl); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Refresh by the forced holder = %v, want ErrNotHeld", err)
		}
	}
	if _, err := a.Force(t.Context(), key); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Force in the lock-delay = %v, want ErrNotHeld (no live lease)", err)
	}
	if events != nil {
		// The delay's end is reported, so that waiters are woken without
		// polling.
		waitEvent(t, events, key, store.Expired, g.Token)
		if got := time.Since(start); got < 2*time.Second {
			t.Errorf("Expired event %v after Force, before the lock-delay of 2s ended", got)
		}
	}
	g2 := acquireWhenFree(t, s, key, NewLockID(), 15*time.Second)
	if got := time.Since(start); got < 2*time.Second {
		t.Errorf("key granted %v after Force, before the lock-delay of 2s ended", got)
	}
	if g2.Token <= g.Token {
		t.Errorf("token %d after Force, want > %d", g2.Token, g.Token)
	}
}

func testDelayNotifies(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	n, ok := s.(store.Notifier)
	if !ok {
		t.Skip("store does not implement store.Notifier; the service uses LockedError.ExpiresIn")
	}
	events := make(chan store.Event, 100)
	n.Notify(func(e store.Event) { events <- e })
	key := NewKey(t)
	start := time.Now()
	g := mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{TTL: time.Second, Delay: time.Second})
	waitEvent(t, events, key, store.Expired, g.Token)
	if got := time.Since(start); got < 2*time.Second {
		t.Errorf("Expired event %v after the acquire, before the lease (1s) and its lock-delay (1s) ran out", got)
	}
	mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{})
}

// testDelayInGrant: the grant says the lease's lock-delay, an idempotent
// retry (whatever options it asks with) the lease's own, unchanged.
func testDelayInGrant(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	key := NewKey(t)
	a := NewLockID()
	g := mustAcquire(t, s, key, a, store.AcquireOptions{TTL: ttl, Delay: 1500 * time.Millisecond})
	if g.Delay != 1500*time.Millisecond {
		t.Errorf("grant with a lock-delay of 1.5s: Delay = %v", g.Delay)
	}
	again := mustAcquire(t, s, key, a, store.AcquireOptions{TTL: ttl})
	if again.Token != g.Token || again.Delay != 1500*time.Millisecond {
		t.Errorf("idempotent retry: token %d Delay %v, want %d and the lease's 1.5s", again.Token, again.Delay, g.Token)
	}
	tr, ok := s.(store.Transferrer)
	if !ok {
		return
	}
	b := NewLockID()
	gb, err := tr.Transfer(t.Context(), key, a, store.Update{}, b, store.AcquireOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	if gb.Delay != 0 {
		t.Errorf("Transfer without a lock-delay: Delay = %v, want 0", gb.Delay)
	}
}
