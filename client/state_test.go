package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockservice/lockservice/client"
)

// stateOf returns key's state as Get reports it (nil when there is none).
func stateOf(t *testing.T, c *client.Client, key string) []byte {
	t.Helper()
	info, err := c.Get(t.Context(), key)
	if err != nil {
		t.Fatalf("Get(%q) = %v", key, err)
	}
	return info.Value
}

// sameState reports whether got is want, telling nil (no state) from empty.
func sameState(got, want []byte) bool {
	return (got == nil) == (want == nil) && bytes.Equal(got, want)
}

// TestNilKeepsTheStateEmptyWritesAnEmptyOne: a nil value means "no new
// state" and an empty one "an empty state", alike in Write, ReleaseWith and
// WithLock, on both stores: ReleaseWith(nil) and a WithLock callback
// returning nil keep the state; ReleaseWith([]byte{}), Write([]byte{}) and a
// callback returning []byte{} write an empty state; Write(nil) is a bad
// request that sends nothing and keeps the lock.
func TestNilKeepsTheStateEmptyWritesAnEmptyOne(t *testing.T) {
	for _, backend := range keepAliveBackends {
		t.Run(backend, func(t *testing.T) {
			c := deploy(t, backend).c
			ctx := t.Context()
			key := "state." + client.NewLockID()
			acquire := func() *client.Lock {
				t.Helper()
				l, err := c.TryAcquire(ctx, key)
				if err != nil {
					t.Fatalf("TryAcquire(%q) = %v", key, err)
				}
				return l
			}
			want := func(what string, state []byte) {
				t.Helper()
				if got := stateOf(t, c, key); !sameState(got, state) {
					t.Errorf("after %s: state = %#v, want %#v", what, got, state)
				}
			}

			l := acquire()
			if err := l.Write(ctx, nil); !errors.Is(err, client.ErrBadRequest) {
				t.Errorf("Write(nil) = %v, want ErrBadRequest", err)
			}
			if l.Err() != nil {
				t.Errorf("Write(nil) ended the lock: %v", l.Err())
			}
			want("Write(nil)", nil)
			if err := l.Write(ctx, []byte{}); err != nil {
				t.Fatalf("Write([]byte{}) = %v", err)
			}
			want("Write([]byte{})", []byte{})
			if err := l.ReleaseWith(ctx, []byte("x")); err != nil {
				t.Fatalf("ReleaseWith(x) = %v", err)
			}
			want("ReleaseWith(x)", []byte("x"))

			l = acquire()
			if !sameState(l.Value(), []byte("x")) {
				t.Errorf("Value() = %#v after ReleaseWith(x), want x", l.Value())
			}
			if err := l.ReleaseWith(ctx, nil); err != nil {
				t.Fatalf("ReleaseWith(nil) = %v", err)
			}
			want("ReleaseWith(nil)", []byte("x"))

			l = acquire()
			if err := l.ReleaseWith(ctx, []byte{}); err != nil {
				t.Fatalf("ReleaseWith([]byte{}) = %v", err)
			}
			want("ReleaseWith([]byte{})", []byte{})
			l = acquire()
			if !sameState(l.Value(), []byte{}) {
				t.Errorf("Value() = %#v after ReleaseWith([]byte{}), want an empty state", l.Value())
			}
			if err := l.ReleaseWith(ctx, []byte("y")); err != nil {
				t.Fatalf("ReleaseWith(y) = %v", err)
			}

			for _, c2 := range []struct {
				name     string
				ret      []byte
				want     []byte // the state afterwards, and WithLock's result
				prevSeen []byte
			}{
				{"nil", nil, []byte("y"), []byte("y")},
				{"[]byte{}", []byte{}, []byte{}, []byte("y")},
				{"z", []byte("z"), []byte("z"), []byte{}},
				{"nil again", nil, []byte("z"), []byte("z")},
			} {
				out, err := c.WithLock(ctx, key, func(_ context.Context, state []byte) ([]byte, error) {
					if !sameState(state, c2.prevSeen) {
						t.Errorf("WithLock callback returning %s got state %#v, want %#v", c2.name, state, c2.prevSeen)
					}
					return c2.ret, nil
				})
				if err != nil || !sameState(out, c2.want) {
					t.Errorf("WithLock with a callback returning %s = %#v, %v; want %#v, nil", c2.name, out, err, c2.want)
				}
				want(fmt.Sprintf("WithLock returning %s", c2.name), c2.want)
			}
		})
	}
}

// TestLockMethodsConcurrentWithKeepAlive (run it with -race): Write,
// Refresh, Deadline, TTL, Err and Done are called from several goroutines
// while the keep-alive renews the lease, and Release is called while they
// run. Deadline never moves back (the refresh sent last that succeeded sets
// it), and once released every method answers as for a released lock.
func TestLockMethodsConcurrentWithKeepAlive(t *testing.T) {
	srv, c := newServer(t)
	ctx := t.Context()
	key := "concurrent." + client.NewLockID()
	spy, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	refreshes, _ := spy.SubscribeSync("lock.refresh." + key)
	spy.Flush()
	l, err := c.Acquire(ctx, key, client.WithTTL(time.Second), client.WithKeepAlive())
	if err != nil {
		t.Fatal(err)
	}

	var ours, writes atomic.Int64
	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		case <-time.After(5 * time.Millisecond): // pace the requests
			return false
		}
	}
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() {
			for i := 0; !stopped(); i++ {
				err := l.Write(ctx, fmt.Appendf(nil, `{"writer":%d,"i":%d}`, w, i))
				switch {
				case err == nil:
					writes.Add(1)
				case errors.Is(err, client.ErrNotHeld) && l.Err() != nil:
					return // released meanwhile
				default:
					t.Errorf("Write while held = %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for !stopped() {
			ours.Add(1)
			err := l.Refresh(ctx, time.Second)
			switch {
			case err == nil:
			case errors.Is(err, client.ErrNotHeld) && l.Err() != nil:
				return
			default:
				t.Errorf("Refresh while held = %v", err)
				return
			}
		}
	})
	wg.Go(func() {
		prev := l.Deadline()
		for !stopped() {
			d := l.Deadline()
			if d.Before(prev) {
				t.Errorf("Deadline moved back: %v, then %v", prev, d)
			}
			if ttl := l.TTL(); ttl != time.Second {
				t.Errorf("TTL() = %v, want 1s", ttl)
			}
			select {
			case <-l.Done():
				if l.Err() == nil {
					t.Errorf("Done is closed and Err is nil")
				}
			default:
			}
			prev = d
		}
	})

	// Wait, while they run, until the keep-alive has renewed twice: the
	// refresh requests seen beyond the ones the test sent.
	for seen := 0; seen-int(ours.Load()) < 2; seen++ {
		if _, err := refreshes.NextMsg(10 * time.Second); err != nil {
			t.Fatalf("no keep-alive renewal within 10s (%d refreshes seen, %d sent by the test): %v", seen, ours.Load(), err)
		}
	}
	if err := l.Release(ctx); err != nil {
		t.Errorf("Release while writers and refreshers run = %v", err)
	}
	close(stop)
	wg.Wait()
	if !errors.Is(l.Err(), client.ErrReleased) {
		t.Errorf("Err after Release = %v, want ErrReleased", l.Err())
	}
	if err := l.Write(ctx, []byte(`1`)); !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("Write after Release = %v, want ErrNotHeld", err)
	}
	if err := l.Refresh(ctx, 0); !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("Refresh after Release = %v, want ErrNotHeld", err)
	}
	if writes.Load() == 0 || ours.Load() == 0 {
		t.Errorf("%d writes and %d refreshes succeeded while held, want some of each", writes.Load(), ours.Load())
	}
	noClientGoroutineWithin(t, 2*time.Second, "Release")
}
