package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/embedded"
	"github.com/lockservice/lockservice/service"
)

func newServer(t *testing.T) (*embedded.Server, *client.Client) {
	t.Helper()
	srv, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithoutListener(),
		embedded.WithServiceConfig(service.Config{MaxTTL: time.Minute}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c, err := client.New(nc, client.WithOwner("client-test"))
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func TestTryAcquireAndErrors(t *testing.T) {
	_, c := newServer(t)
	ctx := t.Context()
	l, err := c.TryAcquire(ctx, "try.k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.TryAcquire(ctx, "try.k"); !errors.Is(err, client.ErrLocked) {
		t.Errorf("TryAcquire on a held key = %v, want ErrLocked", err)
	}
	info, err := c.Get(ctx, "try.k")
	if err != nil || !info.Locked || info.Token != l.Token() || info.Owner != "client-test" {
		t.Errorf("Get = %+v, %v, want locked with token %d owner client-test", info, err, l.Token())
	}
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := c.Wait(wctx, "try.k"); !errors.Is(err, client.ErrTimeout) {
		t.Errorf("Wait on a held key = %v, want ErrTimeout", err)
	}
	actx, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if _, err := c.Acquire(actx, "try.k"); !errors.Is(err, client.ErrTimeout) {
		t.Errorf("Acquire on a held key until the deadline = %v, want ErrTimeout", err)
	}
	if _, err := c.TryAcquire(ctx, "bad key"); !errors.Is(err, client.ErrBadRequest) {
		t.Errorf("TryAcquire(bad key) = %v, want ErrBadRequest", err)
	}
	if _, err := c.TryAcquire(ctx, "try.ttl", client.WithTTL(time.Hour)); !errors.Is(err, client.ErrBadRequest) {
		t.Errorf("TryAcquire(ttl over max) = %v, want ErrBadRequest", err)
	}
	var ce *client.Error
	if _, err := c.TryAcquire(ctx, "try.ttl", client.WithTTL(time.Hour)); !errors.As(err, &ce) || ce.Code != 400 {
		t.Errorf("error = %#v, want *client.Error with code 400", err)
	}
	if err := l.Write(ctx, []byte(`"w"`)); err != nil {
		t.Fatal(err)
	}
	if err := l.Refresh(ctx, 30*time.Second); err != nil || l.TTL() != 30*time.Second {
		t.Errorf("Refresh = %v, TTL %v", err, l.TTL())
	}
	if err := l.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx); !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("Release after Delete = %v, want ErrNotHeld", err)
	}
	if err := l.Refresh(ctx, 0); !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("Refresh after Delete = %v, want ErrNotHeld", err)
	}
	if v, err := c.Wait(ctx, "try.k"); err != nil || v != nil {
		t.Errorf("Wait after Delete = %q, %v, want no value", v, err)
	}
}

func TestWithLockFailureWritesNothing(t *testing.T) {
	_, c := newServer(t)
	ctx := t.Context()
	if _, err := c.WithLock(ctx, "wl.k", func(context.Context, []byte) ([]byte, error) { return []byte(`1`), nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if _, err := c.WithLock(ctx, "wl.k", func(_ context.Context, s []byte) ([]byte, error) { return []byte(`2`), boom }); !errors.Is(err, boom) {
		t.Errorf("WithLock with a failing callback = %v, want boom", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Errorf("panic did not propagate")
			}
		}()
		c.WithLock(ctx, "wl.k", func(context.Context, []byte) ([]byte, error) { panic("callback panic") })
	}()
	info, err := c.Get(ctx, "wl.k")
	if err != nil || info.Locked || string(info.Value) != "1" {
		t.Errorf("after failed callbacks: %+v, %v; want unlocked with value 1", info, err)
	}
}

func TestWithLockLeaseExpired(t *testing.T) {
	_, c := newServer(t)
	ctx := t.Context()
	_, err := c.WithLock(ctx, "exp.k", func(ctx context.Context, _ []byte) ([]byte, error) {
		<-ctx.Done() // the callback's context ends with the lease
		return []byte(`"late"`), nil
	}, client.WithTTL(time.Second), client.WithoutKeepAlive())
	if !errors.Is(err, client.ErrLeaseExpired) || !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("WithLock past the lease = %v, want ErrLeaseExpired (and ErrNotHeld)", err)
	}
	if info, _ := c.Get(ctx, "exp.k"); info == nil || info.Value != nil {
		t.Errorf("late write applied: %+v", info)
	}
}

func TestWithLockJSON(t *testing.T) {
	_, c := newServer(t)
	type state struct{ Names []string }
	for _, n := range []string{"a", "b"} {
		got, err := client.WithLockJSON(t.Context(), c, "json.k", func(_ context.Context, s *state) (state, error) {
			if s == nil {
				s = &state{}
			}
			s.Names = append(s.Names, n)
			return *s, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.Names[len(got.Names)-1] != n {
			t.Errorf("WithLockJSON = %+v", got)
		}
	}
	info, _ := c.Get(t.Context(), "json.k")
	if string(info.Value) != `{"Names":["a","b"]}` {
		t.Errorf("state = %s", info.Value)
	}
}

// TestAcquireRetiresAnsweredLockIDs: after a "not acquired" answer the
// next request of the same Acquire carries a new lock id (a late grant for
// the old one is given back by the service), while lost replies are
// retried with the same id (covered by the service's lost-reply test).
func TestAcquireRetiresAnsweredLockIDs(t *testing.T) {
	srv, c := newServer(t)
	spy, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	seen, _ := spy.SubscribeSync("lock.acquire.retire.k")
	spy.Flush()
	holder, err := c.TryAcquire(t.Context(), "retire.k")
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := client.New(spy)
	ctx, cancel := context.WithTimeout(t.Context(), 600*time.Millisecond)
	defer cancel()
	_, _ = c2.Acquire(ctx, "retire.k") // several rounds: the wait is chunked below
	_ = holder
	ids := map[string]bool{}
	for {
		m, err := seen.NextMsg(100 * time.Millisecond)
		if err != nil {
			break
		}
		var req struct {
			LockID string `msgpack:"lock_id"`
		}
		msgpack.Unmarshal(m.Data, &req)
		if ids[req.LockID] && req.LockID != "" {
			t.Errorf("lock id %s sent again after a not-acquired answer", req.LockID)
		}
		ids[req.LockID] = true
	}
}
