package memstore_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/memstore"
	"github.com/lockservice/lockservice/store/storetest"
)

func TestConformance(t *testing.T) {
	var (
		mu      sync.Mutex
		servers = map[time.Duration]*memstore.Server{} // one per object TTL, like a bucket
	)
	storetest.Run(t, func(tb testing.TB, cfg storetest.Config) store.Store {
		mu.Lock()
		srv := servers[cfg.ObjectTTL]
		if srv == nil {
			srv = newServer(t, memstore.Config{ObjectTTL: cfg.ObjectTTL})
			servers[cfg.ObjectTTL] = srv
		}
		mu.Unlock()
		return newStore(tb, srv)
	})
}

func newServer(t testing.TB, cfg memstore.Config) *memstore.Server {
	t.Helper()
	srv, err := memstore.NewServer(cfg)
	if err != nil {
		t.Fatalf("NewServer = %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

func newStore(t testing.TB, srv *memstore.Server) *memstore.Store {
	s := memstore.New(srv)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// events collects the events of s in a buffered channel.
func events(s *memstore.Store) chan store.Event {
	c := make(chan store.Event, 100)
	s.Notify(func(e store.Event) { c <- e })
	return c
}

// nextEvent returns the next event, or fails when none is queued after
// the bubble's goroutines have settled.
func nextEvent(t *testing.T, c chan store.Event) store.Event {
	t.Helper()
	synctest.Wait()
	select {
	case e := <-c:
		return e
	default:
		t.Fatalf("no event")
		return store.Event{}
	}
}

func noEvent(t *testing.T, c chan store.Event) {
	t.Helper()
	synctest.Wait()
	select {
	case e := <-c:
		t.Errorf("event %+v, want none", e)
	default:
	}
}

var set = func(v string) store.Update { return store.Update{Op: store.Set, Value: []byte(v)} }

// TestExpiryByTheTimer: the lease ends exactly TTL after the grant by the
// server's clock; until then Acquire reports the time left; then the timer
// reports Expired with the lease's token, and the token sequence goes on.
func TestExpiryByTheTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, newServer(t, memstore.Config{}))
		evs := events(s)
		g, err := s.Acquire(t.Context(), "k", "a", store.AcquireOptions{TTL: time.Second, Owner: "o"})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second - time.Millisecond)
		var le *store.LockedError
		if _, err := s.Acquire(t.Context(), "k", "b", store.AcquireOptions{TTL: time.Second}); !errors.As(err, &le) || le.ExpiresIn != time.Millisecond {
			t.Fatalf("Acquire before expiry = %v, want *LockedError with ExpiresIn 1ms", err)
		}
		noEvent(t, evs)
		time.Sleep(time.Millisecond)
		if e := nextEvent(t, evs); e != (store.Event{Kind: store.Expired, Key: "k", Token: g.Token}) {
			t.Errorf("event = %+v, want Expired with token %d", e, g.Token)
		}
		info, err := s.Get(t.Context(), "k")
		if err != nil || info.Locked || info.Lease.Token != g.Token || info.Lease.Owner != "o" {
			t.Errorf("Get after expiry = %+v, %v, want unlocked with the last grant (token %d)", info, err, g.Token)
		}
		if _, err := s.Refresh(t.Context(), "k", "a", time.Second); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Refresh after expiry = %v, want ErrNotHeld", err)
		}
		g2, err := s.Acquire(t.Context(), "k", "b", store.AcquireOptions{TTL: time.Second})
		if err != nil || g2.Token <= g.Token {
			t.Errorf("Acquire after expiry = %+v, %v, want token > %d", g2, err, g.Token)
		}
	})
}

// TestRefreshMovesTheExpiry: a refreshed lease outlives its first TTL and
// ends at the refreshed one.
func TestRefreshMovesTheExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, newServer(t, memstore.Config{}))
		evs := events(s)
		g, _ := s.Acquire(t.Context(), "k", "a", store.AcquireOptions{TTL: time.Second})
		time.Sleep(500 * time.Millisecond)
		if _, err := s.Refresh(t.Context(), "k", "a", 2*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2*time.Second - time.Millisecond)
		noEvent(t, evs)
		if info, _ := s.Get(t.Context(), "k"); !info.Locked {
			t.Fatalf("lease ended before its refreshed TTL")
		}
		time.Sleep(time.Millisecond)
		if e := nextEvent(t, evs); e.Kind != store.Expired || e.Token != g.Token {
			t.Errorf("event = %+v, want Expired with token %d", e, g.Token)
		}
		noEvent(t, evs) // the first timer reported nothing
	})
}

// fakeClock is a clock moved by hand; the server's timers do not follow it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestClockDecidesBeforeTheTimer: with a clock that moved past the lease's
// end before its timer fired, the lease has ended all the same: Get
// reports the key free, the old holder can no longer write, and the expiry
// is reported once.
func TestClockDecidesBeforeTheTimer(t *testing.T) {
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	s := newStore(t, newServer(t, memstore.Config{Now: clock.Now}))
	evs := make(chan store.Event, 10)
	s.Notify(func(e store.Event) { evs <- e })
	g, err := s.Acquire(t.Context(), "k", "a", store.AcquireOptions{TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if want := clock.Now().Add(time.Hour); !g.ExpiresAt.Equal(want) {
		t.Errorf("ExpiresAt = %v, want %v by the server's clock", g.ExpiresAt, want)
	}
	clock.Advance(time.Hour)
	info, err := s.Get(t.Context(), "k")
	if err != nil || info.Locked {
		t.Fatalf("Get at the lease's end = %+v, %v, want unlocked", info, err)
	}
	if err := s.Write(t.Context(), "k", "a", set("late")); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Write after the lease's end = %v, want ErrNotHeld", err)
	}
	select {
	case e := <-evs:
		if e.Kind != store.Expired || e.Token != g.Token {
			t.Errorf("event = %+v, want Expired with token %d", e, g.Token)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no Expired event")
	}
	if _, err := s.Acquire(t.Context(), "k", "b", store.AcquireOptions{TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-evs:
		t.Errorf("event %+v, want the expiry reported once", e)
	case <-time.After(50 * time.Millisecond):
	}
}

// TestEventsPerLease: Release reports Released, Transfer reports nothing
// (the key is never free, as on JetStream), every store of the server
// sees the events, and a closed store's function is no longer called.
func TestEventsPerLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newServer(t, memstore.Config{})
		s, other := newStore(t, srv), newStore(t, srv)
		evs, otherEvs := events(s), events(other)
		ga, _ := s.Acquire(t.Context(), "k", "a", store.AcquireOptions{TTL: time.Minute})
		gb, err := s.Transfer(t.Context(), "k", "a", set("x"), "b", store.AcquireOptions{TTL: time.Minute})
		if err != nil || gb.Token <= ga.Token {
			t.Fatalf("Transfer = %+v, %v", gb, err)
		}
		noEvent(t, evs)
		if err := other.Release(t.Context(), "k", "b", store.Update{}); err != nil {
			t.Fatal(err)
		}
		want := store.Event{Kind: store.Released, Key: "k", Token: gb.Token}
		for _, c := range []chan store.Event{evs, otherEvs} {
			if e := nextEvent(t, c); e != want {
				t.Errorf("event = %+v, want %+v", e, want)
			}
		}
		_ = other.Close()
		gc, _ := s.Acquire(t.Context(), "k", "c", store.AcquireOptions{TTL: time.Minute})
		_ = s.Release(t.Context(), "k", "c", store.Update{})
		if e := nextEvent(t, evs); e.Token != gc.Token {
			t.Errorf("event = %+v, want token %d", e, gc.Token)
		}
		noEvent(t, otherEvs)
	})
}

// TestValuesAreCopied: neither the caller's slice nor a returned one is
// the stored object.
func TestValuesAreCopied(t *testing.T) {
	s := newStore(t, newServer(t, memstore.Config{}))
	if _, err := s.Acquire(t.Context(), "k", "a", store.AcquireOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	v := []byte("abc")
	if err := s.Write(t.Context(), "k", "a", store.Update{Op: store.Set, Value: v}); err != nil {
		t.Fatal(err)
	}
	v[0] = 'X'
	info, _ := s.Get(t.Context(), "k")
	info.Value[1] = 'Y'
	g, _ := s.Acquire(t.Context(), "k", "a", store.AcquireOptions{TTL: time.Minute})
	if !bytes.Equal(g.Value, []byte("abc")) {
		t.Errorf("stored value = %q, want abc", g.Value)
	}
}

// TestObjectExpiry: with ObjectTTL the state object is gone that long
// after its last write, by the server's clock, lease or not.
func TestObjectExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newStore(t, newServer(t, memstore.Config{ObjectTTL: time.Second}))
		_, _ = s.Acquire(t.Context(), "k", "a", store.AcquireOptions{TTL: time.Minute})
		_ = s.Write(t.Context(), "k", "a", set("v"))
		time.Sleep(time.Second - time.Millisecond)
		if info, _ := s.Get(t.Context(), "k"); string(info.Value) != "v" {
			t.Fatalf("value before its TTL = %q, want v", info.Value)
		}
		time.Sleep(time.Millisecond)
		if info, _ := s.Get(t.Context(), "k"); info.Value != nil || !info.Locked {
			t.Errorf("Get after the object's TTL = %+v, want locked with no value", info)
		}
	})
}

// TestErrors: invalid requests, a done context and closed stores.
func TestErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := newServer(t, memstore.Config{MaxValueBytes: 4})
		s := newStore(t, srv)
		ctx := t.Context()
		opts := store.AcquireOptions{TTL: time.Minute}
		if _, err := s.Acquire(ctx, "", "a", opts); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("Acquire(empty key) = %v, want ErrInvalid", err)
		}
		if _, err := s.Acquire(ctx, "k", "a", store.AcquireOptions{}); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("Acquire(TTL 0) = %v, want ErrInvalid", err)
		}
		_, _ = s.Acquire(ctx, "k", "a", opts)
		for _, u := range []store.Update{{Op: store.Set}, set("12345"), {Op: 9}} {
			if err := s.Write(ctx, "k", "a", u); !errors.Is(err, store.ErrInvalid) {
				t.Errorf("Write(%+v) = %v, want ErrInvalid", u, err)
			}
		}
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Get(canceled, "k"); !errors.Is(err, context.Canceled) {
			t.Errorf("Get(canceled) = %v, want context.Canceled", err)
		}
		expired, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		time.Sleep(time.Second)
		synctest.Wait() // the context's timer has run
		if _, err := s.Get(expired, "k"); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Get(past deadline) = %v, want DeadlineExceeded and ErrUnavailable", err)
		}

		s2 := newStore(t, srv)
		_ = s.Close()
		if _, err := s.Get(ctx, "k"); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Get after Close = %v, want ErrUnavailable", err)
		}
		if info, err := s2.Get(ctx, "k"); err != nil || !info.Locked {
			t.Errorf("Get on another store = %+v, %v, want the lock kept", info, err)
		}
		_ = srv.Close()
		if _, err := s2.Acquire(ctx, "k2", "a", opts); !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("Acquire after the server's Close = %v, want ErrUnavailable", err)
		}
	})
}

// TestCloseStopsDelivery: Close of the server ends every store's delivery
// goroutine and every timer (synctest.Test fails on a goroutine left).
func TestCloseStopsDelivery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, _ := memstore.NewServer(memstore.Config{})
		s := memstore.New(srv)
		s.Notify(func(store.Event) {})
		_, _ = s.Acquire(t.Context(), "k", "a", store.AcquireOptions{TTL: time.Hour})
		_ = srv.Close()
		_ = s.Close()
	})
}
