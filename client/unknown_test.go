package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// appliedButFailed is the JetStream store whose Acquire, while failures
// remain, is applied and then answered with err (as when the JetStream ack
// was lost or came after the store timeout): an unknown outcome, which the
// service answers with 503 (store.ErrUnavailable) or 500 (anything else).
type appliedButFailed struct {
	*jsstore.Store
	err      error
	failures atomic.Int32
}

func (s *appliedButFailed) Acquire(ctx context.Context, key, lockID string, o store.AcquireOptions) (store.Grant, error) {
	g, err := s.Store.Acquire(ctx, key, lockID, o)
	if err == nil && s.failures.Add(-1) >= 0 {
		return store.Grant{}, fmt.Errorf("injected after the grant was applied: %w", s.err)
	}
	return g, err
}

// newFailingService starts a nats-server and one service instance on an
// appliedButFailed store that fails with err, and returns a client of it.
func newFailingService(t testing.TB, err error, opts ...client.Option) (*appliedButFailed, *client.Client) {
	t.Helper()
	srv := testsrv.NATS(t, "")
	js, jerr := jsstore.New(t.Context(), testsrv.Connect(t, srv), jsstore.Config{})
	if jerr != nil {
		t.Fatal(jerr)
	}
	t.Cleanup(func() { js.Close() })
	st := &appliedButFailed{Store: js, err: err}
	svc, serr := service.New(testsrv.Connect(t, srv), st, service.Config{})
	if serr != nil {
		t.Fatal(serr)
	}
	t.Cleanup(func() { svc.Stop() })
	c, cerr := client.New(testsrv.Connect(t, srv), opts...)
	if cerr != nil {
		t.Fatal(cerr)
	}
	return st, c
}

// unknownOutcomes are the store failures the service answers with an
// unknown outcome, and the sentinel each answer matches.
var unknownOutcomes = []struct {
	name     string
	err      error
	sentinel error
}{
	{"503", store.ErrUnavailable, client.ErrUnavailable},
	{"500", errors.New("unexpected store answer"), client.ErrInternal},
}

// windows are the client's settings of the liveness window: the default,
// and none (the same rules apply).
var windows = []struct {
	name   string
	window time.Duration
}{
	{"window", 5 * time.Second},
	{"nowindow", 0},
}

// eventuallyUnlocked fails t unless Get reports key unlocked within 3s.
func eventuallyUnlocked(t testing.TB, c *client.Client, key, after string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		info, err := c.Get(t.Context(), key)
		if err == nil && !info.Locked {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("after %s, Get(%q) = %+v, %v; want unlocked (orphaned grant)", after, key, info, err)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGivingUpAfterUnknownOutcomesLeavesNoOrphan: an acquire answered 503
// or 500 may have been granted (the store applied it, then failed). A
// client that returns such an error to its caller must first withdraw the
// lock id, or the grant stays held by a lock id nobody knows until its
// TTL runs out. Every acquire here is applied and then failed, so the
// retry with the same lock id fails too and the client has to give up.
func TestGivingUpAfterUnknownOutcomesLeavesNoOrphan(t *testing.T) {
	for _, tc := range unknownOutcomes {
		t.Run(tc.name+"/TryAcquire", func(t *testing.T) {
			st, c := newFailingService(t, tc.err)
			key := "orphan.try"
			st.failures.Store(1 << 30)
			_, err := c.TryAcquire(t.Context(), key, client.WithTTL(5*time.Minute))
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("TryAcquire(%q) = %v, want %v", key, err, tc.sentinel)
			}
			eventuallyUnlocked(t, c, key, "TryAcquire returned "+err.Error())
		})
		for _, w := range windows {
			t.Run(tc.name+"/Acquire/"+w.name, func(t *testing.T) {
				st, c := newFailingService(t, tc.err, client.WithAliveWindow(w.window))
				key := "orphan.acquire"
				st.failures.Store(1 << 30)
				ctx, cancel := context.WithTimeout(t.Context(), time.Second)
				defer cancel()
				_, err := c.Acquire(ctx, key, client.WithTTL(5*time.Minute))
				if !errors.Is(err, client.ErrTimeout) {
					t.Fatalf("Acquire(%q) = %v, want %v", key, err, client.ErrTimeout)
				}
				eventuallyUnlocked(t, c, key, "Acquire returned "+err.Error())
			})
			t.Run(tc.name+"/AcquireWithLockID/"+w.name, func(t *testing.T) {
				st, c := newFailingService(t, tc.err, client.WithAliveWindow(w.window))
				key := "orphan.chosen"
				st.failures.Store(1 << 30)
				id := client.NewLockID()
				_, err := c.Acquire(t.Context(), key, client.WithTTL(5*time.Minute), client.WithLockID(id))
				if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "withdrawn") {
					t.Fatalf("Acquire(%q) = %v, want ErrUnavailable saying the lock id was withdrawn", key, err)
				}
				eventuallyUnlocked(t, c, key, "Acquire returned "+err.Error())
			})
		}
	}
}

// TestUnknownOutcomeRecoversTheAppliedGrant: when only the first acquire
// is applied and failed, the retry with the same lock id and wait_ms 0
// returns that grant (same token), and the caller holds the lock.
func TestUnknownOutcomeRecoversTheAppliedGrant(t *testing.T) {
	for _, tc := range unknownOutcomes {
		for _, op := range []string{"TryAcquire", "Acquire", "AcquireNoWindow"} {
			t.Run(tc.name+"/"+op, func(t *testing.T) {
				var opts []client.Option
				if op == "AcquireNoWindow" {
					opts = append(opts, client.WithAliveWindow(0))
				}
				st, c := newFailingService(t, tc.err, opts...)
				key := "recover." + op
				st.failures.Store(1)
				acquire := c.Acquire
				if op == "TryAcquire" {
					acquire = c.TryAcquire
				}
				l, err := acquire(t.Context(), key, client.WithOwnerLabel("recovered"))
				if err != nil {
					t.Fatalf("%s(%q) = %v, want the applied grant", op, key, err)
				}
				info, err := c.Get(t.Context(), key)
				if err != nil || !info.Locked || info.Token != l.Token() || info.Owner != "recovered" {
					t.Errorf("Get(%q) = %+v, %v; want locked by the returned grant (token %d)", key, info, err, l.Token())
				}
				if err := l.Release(t.Context()); err != nil {
					t.Errorf("Release = %v", err)
				}
			})
		}
	}
}
