package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
	redisstore "github.com/lockservice/lockservice/store/redis"
)

// deployment is a nats-server and one service instance on a real store,
// with a client of it and a raw connection for requests the client does
// not make.
type deployment struct {
	c     *client.Client
	raw   *nats.Conn
	redis *testsrv.Redis // nil on JetStream
}

var keepAliveBackends = []string{"jetstream", "redis"}

func deploy(t testing.TB, backend string, opts ...client.Option) *deployment {
	t.Helper()
	srv := testsrv.NATS(t, "")
	d := &deployment{raw: testsrv.Connect(t, srv)}
	var st store.Store
	var err error
	switch backend {
	case "jetstream":
		st, err = jsstore.New(t.Context(), testsrv.Connect(t, srv), jsstore.Config{})
	case "redis":
		d.redis = testsrv.StartRedis(t)
		st, err = redisstore.New(t.Context(), d.redis.Client(t), redisstore.Config{})
	default:
		t.Fatalf("unknown backend %q", backend)
	}
	if err != nil {
		t.Fatalf("%s store: %v", backend, err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := service.New(testsrv.Connect(t, srv), st, service.Config{StoreTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	if d.c, err = client.New(testsrv.Connect(t, srv), opts...); err != nil {
		t.Fatal(err)
	}
	return d
}

// releaseByID releases key held by lockID with a raw request, as another
// process that learnt the lock id would.
func (d *deployment) releaseByID(t testing.TB, key, lockID string) {
	t.Helper()
	m, err := d.raw.Request("lock.release."+key, []byte(`{"lock_id":"`+lockID+`"}`), 5*time.Second)
	if err != nil {
		t.Fatalf("release %q by lock id: %v", key, err)
	}
	var resp struct{ Released bool }
	if err := json.Unmarshal(m.Data, &resp); err != nil || !resp.Released {
		t.Fatalf("release %q by lock id = %s, %v; want released", key, m.Data, err)
	}
}

// clientGoroutines returns the stacks of the goroutines running code of
// package client (not of its tests) or created by it.
func clientGoroutines() []string {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "lockservice/lockservice/client.") {
			out = append(out, g)
		}
	}
	return out
}

// noClientGoroutineWithin fails t unless every goroutine of package client
// has returned within d.
func noClientGoroutineWithin(t testing.TB, d time.Duration, after string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		gs := clientGoroutines()
		if len(gs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("after %s, %d goroutines of package client are left:\n%s", after, len(gs), strings.Join(gs, "\n\n"))
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWithLockOutlivesItsTTL: WithLock keeps the lease alive while the
// callback runs three times the TTL, and writes its result.
func TestWithLockOutlivesItsTTL(t *testing.T) {
	for _, backend := range keepAliveBackends {
		t.Run(backend, func(t *testing.T) {
			d := deploy(t, backend)
			ctx := t.Context()
			key := "ka.outlive." + backend
			out, err := d.c.WithLock(ctx, key, func(ctx context.Context, _ []byte) ([]byte, error) {
				select {
				case <-ctx.Done():
					return nil, context.Cause(ctx)
				case <-time.After(3 * time.Second):
					return []byte(`"done"`), nil
				}
			}, client.WithTTL(time.Second))
			if err != nil || string(out) != `"done"` {
				t.Fatalf("WithLock(TTL 1s, callback 3s) = %q, %v; want \"done\", nil", out, err)
			}
			info, err := d.c.Get(ctx, key)
			if err != nil || info.Locked || string(info.Value) != `"done"` {
				t.Errorf("Get(%q) = %+v, %v; want unlocked with the value \"done\"", key, info, err)
			}
		})
	}
}

// TestKeepAliveRenewsEveryThirdOfTheTTL: a lock kept alive costs one
// refresh request per TTL/3, counted from the send of the previous one.
func TestKeepAliveRenewsEveryThirdOfTheTTL(t *testing.T) {
	d := deploy(t, "jetstream")
	ctx := t.Context()
	const key = "ka.cost"
	var refreshes atomic.Int32
	sub, err := d.raw.Subscribe("lock.refresh."+key, func(*nats.Msg) { refreshes.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	d.raw.Flush()
	l, err := d.c.Acquire(ctx, key, client.WithTTL(time.Second), client.WithKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := l.Release(ctx); err != nil {
		t.Fatalf("Release after 3 TTLs = %v, want nil", err)
	}
	d.raw.Flush()
	// 9 at TTL/3 = 333ms; one fewer when the last falls just after 3s.
	if n := refreshes.Load(); n < 7 || n > 10 {
		t.Errorf("%d refreshes in 3s with TTL 1s, want 8 or 9", n)
	}
}

// TestLeaseTakenAwayCancelsTheCallback: when the lease is taken away
// underneath a WithLock callback (released with its lock id by someone
// else, or the Redis store losing its data), the next renewal is answered
// 409: the callback's context is cancelled within one renewal interval,
// nothing is written, and WithLock returns an error matching ErrNotHeld.
// A Redis restart without data also ends the lease (its renewals fail
// while Redis is down, then are answered 409), before the deadline.
func TestLeaseTakenAwayCancelsTheCallback(t *testing.T) {
	const ttl = 3 * time.Second // a renewal every second
	cases := []struct {
		name, backend string
		take          func(t *testing.T, d *deployment, key, lockID string)
		within        time.Duration
	}{
		{"released/jetstream", "jetstream", func(t *testing.T, d *deployment, key, id string) { d.releaseByID(t, key, id) }, ttl / 3},
		{"released/redis", "redis", func(t *testing.T, d *deployment, key, id string) { d.releaseByID(t, key, id) }, ttl / 3},
		{"flushall/redis", "redis", func(t *testing.T, d *deployment, _, _ string) {
			if err := d.redis.Client(t).FlushAll(t.Context()).Err(); err != nil {
				t.Fatalf("FLUSHALL: %v", err)
			}
		}, ttl / 3},
		{"restart/redis", "redis", func(t *testing.T, d *deployment, _, _ string) { d.redis.Restart(t) }, ttl},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := deploy(t, tc.backend)
			ctx := t.Context()
			key := "ka.taken." + strings.ReplaceAll(tc.name, "/", ".")
			lockID := client.NewLockID()
			started := make(chan struct{})
			type cut struct {
				at    time.Time
				cause error
			}
			cuts := make(chan cut, 1)
			result := make(chan error, 1)
			go func() {
				_, err := d.c.WithLock(ctx, key, func(ctx context.Context, _ []byte) ([]byte, error) {
					close(started)
					<-ctx.Done()
					cuts <- cut{time.Now(), context.Cause(ctx)}
					return []byte(`"late"`), nil
				}, client.WithTTL(ttl), client.WithLockID(lockID))
				result <- err
			}()
			<-started
			time.Sleep(ttl / 2) // a renewal or so has passed
			taken := time.Now()
			tc.take(t, d, key, lockID)
			var c cut
			select {
			case c = <-cuts:
			case <-time.After(2 * ttl):
				t.Fatalf("callback not cancelled %v after the lease was taken away", 2*ttl)
			}
			if late := c.at.Sub(taken); late > tc.within+500*time.Millisecond {
				t.Errorf("callback cancelled %v after the lease was taken away, want within %v", late, tc.within)
			}
			if !errors.Is(c.cause, client.ErrNotHeld) {
				t.Errorf("context.Cause(callback ctx) = %v, want ErrNotHeld", c.cause)
			}
			if tc.within < ttl && errors.Is(c.cause, client.ErrLeaseExpired) {
				t.Errorf("context.Cause(callback ctx) = %v, want the service's 409, not ErrLeaseExpired", c.cause)
			}
			if err := <-result; !errors.Is(err, client.ErrNotHeld) {
				t.Errorf("WithLock after the lease was taken away = %v, want ErrNotHeld", err)
			}
			if info, err := d.c.Get(ctx, key); err != nil || info.Value != nil {
				t.Errorf("Get(%q) = %+v, %v; want no value written", key, info, err)
			}
			noClientGoroutineWithin(t, 2*time.Second, "WithLock returned")
		})
	}
}

// TestLockKeptAliveSignalsItsLoss: a lock held by hand with WithKeepAlive
// outlives its TTL; when its lease is released underneath, Done is closed
// within a renewal interval, Err matches ErrNotHeld, a context from
// Context is cancelled with Err as its cause, and Release returns
// ErrNotHeld (and leaves Err as it was).
func TestLockKeptAliveSignalsItsLoss(t *testing.T) {
	for _, backend := range keepAliveBackends {
		t.Run(backend, func(t *testing.T) {
			d := deploy(t, backend)
			ctx := t.Context()
			key := "ka.loss." + backend
			l, err := d.c.Acquire(ctx, key, client.WithTTL(time.Second), client.WithKeepAlive())
			if err != nil {
				t.Fatal(err)
			}
			lctx, cancel := l.Context(ctx)
			defer cancel()
			time.Sleep(2 * time.Second)
			if err := l.Err(); err != nil {
				t.Fatalf("Err after 2 TTLs kept alive = %v, want nil", err)
			}
			if err := l.Write(ctx, []byte(`"kept"`)); err != nil {
				t.Fatalf("Write after 2 TTLs kept alive = %v, want nil", err)
			}
			taken := time.Now()
			d.releaseByID(t, key, l.ID())
			select {
			case <-l.Done():
			case <-time.After(2 * time.Second):
				t.Fatal("Done not closed 2s after the lease was released underneath")
			}
			if late := time.Since(taken); late > time.Second/3+500*time.Millisecond {
				t.Errorf("Done closed %v after the lease was taken away, want within 333ms", late)
			}
			if err := l.Err(); !errors.Is(err, client.ErrNotHeld) || errors.Is(err, client.ErrLeaseExpired) {
				t.Errorf("Err = %v, want the service's 409 (ErrNotHeld)", err)
			}
			<-lctx.Done()
			if cause := context.Cause(lctx); !errors.Is(cause, client.ErrNotHeld) {
				t.Errorf("context.Cause(l.Context) = %v, want ErrNotHeld", cause)
			}
			noClientGoroutineWithin(t, 2*time.Second, "the loss")
			if err := l.Release(ctx); !errors.Is(err, client.ErrNotHeld) {
				t.Errorf("Release after the loss = %v, want ErrNotHeld", err)
			}
			if err := l.Err(); errors.Is(err, client.ErrReleased) {
				t.Errorf("Err after Release of a lost lock = %v, want the loss", err)
			}
		})
	}
}

// TestRenewalsFailingUntilTheDeadlineLoseTheLease: with Redis down, every
// renewal is answered 503 and retried; at the lease's deadline the lock
// ends with an error matching ErrLeaseExpired that wraps the last
// renewal's error.
func TestRenewalsFailingUntilTheDeadlineLoseTheLease(t *testing.T) {
	d := deploy(t, "redis")
	ctx := t.Context()
	const key = "ka.down"
	l, err := d.c.Acquire(ctx, key, client.WithTTL(3*time.Second), client.WithKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	d.redis.Kill()
	killed := time.Now()
	select {
	case <-l.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed 5s after Redis went down (TTL 3s)")
	}
	closed := time.Now()
	// A renewal sent just before the kill may still have succeeded and
	// moved the deadline, so the deadline is read once the lock ended.
	deadline := l.Deadline()
	if deadline.After(killed.Add(3 * time.Second)) {
		t.Errorf("deadline %v after the kill, more than the TTL: a renewal succeeded with Redis down", deadline.Sub(killed))
	}
	if early := deadline.Sub(closed); early > 0 {
		t.Errorf("Done closed %v before the deadline of the last successful renewal", early)
	}
	if late := closed.Sub(deadline); late > 500*time.Millisecond {
		t.Errorf("Done closed %v after the deadline, want at once", late)
	}
	if err := l.Err(); !errors.Is(err, client.ErrLeaseExpired) || !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("Err = %v, want ErrLeaseExpired wrapping the renewal's ErrUnavailable", err)
	}
	t.Logf("Err = %v", l.Err())
	noClientGoroutineWithin(t, 2*time.Second, "the loss")
}

// TestMaxHoldCancelsAndReleases: at the cap of WithMaxHold the callback's
// context is cancelled (its cause matching ErrMaxHold), nothing is
// written, and the lock is released long before its lease would end. A
// lock held by hand is released by the client at the cap.
func TestMaxHoldCancelsAndReleases(t *testing.T) {
	d := deploy(t, "jetstream")
	ctx := t.Context()
	const key = "ka.cap"
	start := time.Now()
	var cause error
	_, err := d.c.WithLock(ctx, key, func(ctx context.Context, _ []byte) ([]byte, error) {
		<-ctx.Done()
		cause = context.Cause(ctx)
		return []byte(`"late"`), nil
	}, client.WithTTL(10*time.Second), client.WithMaxHold(time.Second))
	if took := time.Since(start); took < time.Second || took > 2*time.Second {
		t.Errorf("WithLock with a 1s cap took %v, want about 1s", took)
	}
	if !errors.Is(cause, client.ErrMaxHold) {
		t.Errorf("context.Cause(callback ctx) = %v, want ErrMaxHold", cause)
	}
	if !errors.Is(err, client.ErrMaxHold) || !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("WithLock past its cap = %v, want ErrMaxHold (and ErrNotHeld)", err)
	}
	if info, err := d.c.Get(ctx, key); err != nil || info.Locked || info.Value != nil {
		t.Errorf("Get(%q) after the cap = %+v, %v; want unlocked, nothing written", key, info, err)
	}

	l, err := d.c.Acquire(ctx, key, client.WithTTL(10*time.Second), client.WithKeepAlive(), client.WithMaxHold(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("Done not closed 3s after a 1s cap")
	}
	if err := l.Err(); !errors.Is(err, client.ErrMaxHold) {
		t.Errorf("Err at the cap = %v, want ErrMaxHold", err)
	}
	if !eventually(2*time.Second, func() bool {
		info, err := d.c.Get(ctx, key)
		return err == nil && !info.Locked
	}) {
		t.Errorf("%q still locked 2s after the cap (TTL 10s): the client did not release it", key)
	}
	if err := l.Release(ctx); !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("Release after the cap = %v, want ErrNotHeld", err)
	}
	noClientGoroutineWithin(t, 2*time.Second, "the cap")
}

// TestWithoutKeepAliveTheLeaseEndsAtItsDeadline: without keep-alive,
// WithLock's callback is cut at the lease's deadline and WithLock returns
// ErrLeaseExpired with nothing written; a lock held by hand ends (Done,
// ErrLeaseExpired) at its deadline, which a Refresh moves.
func TestWithoutKeepAliveTheLeaseEndsAtItsDeadline(t *testing.T) {
	d := deploy(t, "jetstream")
	ctx := t.Context()
	const key = "ka.off"
	start := time.Now()
	_, err := d.c.WithLock(ctx, key, func(ctx context.Context, _ []byte) ([]byte, error) {
		<-ctx.Done()
		return []byte(`"late"`), nil
	}, client.WithTTL(time.Second), client.WithoutKeepAlive())
	if took := time.Since(start); took < 900*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("WithLock without keep-alive, TTL 1s, took %v, want about 1s", took)
	}
	if !errors.Is(err, client.ErrLeaseExpired) {
		t.Errorf("WithLock past the deadline = %v, want ErrLeaseExpired", err)
	}
	if info, err := d.c.Get(ctx, key); err != nil || info.Value != nil {
		t.Errorf("Get(%q) = %+v, %v; want nothing written", key, info, err)
	}

	l, err := d.c.Acquire(ctx, key, client.WithTTL(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := l.Refresh(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := l.Deadline()
	<-l.Done()
	if off := time.Since(deadline); off < 0 || off > 300*time.Millisecond {
		t.Errorf("Done closed %v after the refreshed deadline, want at it", off)
	}
	if err := l.Err(); !errors.Is(err, client.ErrLeaseExpired) {
		t.Errorf("Err at the deadline = %v, want ErrLeaseExpired", err)
	}
	noClientGoroutineWithin(t, time.Second, "the deadline")
}

// TestKeepAliveRenewsASpentLeaseBeforeReturning: a lease is counted from
// when the acquire was sent, so after a wait longer than the TTL it is
// spent by that count when it arrives. With keep-alive, Acquire renews it
// before returning, and WithLock runs its callback under a live lease.
func TestKeepAliveRenewsASpentLeaseBeforeReturning(t *testing.T) {
	d := deploy(t, "jetstream")
	ctx := t.Context()
	const key = "ka.spent"
	hold := func() {
		t.Helper()
		h, err := d.c.TryAcquire(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		time.AfterFunc(1500*time.Millisecond, func() { h.Release(context.Background()) })
	}
	hold()
	l, err := d.c.Acquire(ctx, key, client.WithTTL(time.Second), client.WithKeepAlive())
	if err != nil {
		t.Fatalf("Acquire after a 1.5s wait, TTL 1s = %v", err)
	}
	if left := time.Until(l.Deadline()); left < 500*time.Millisecond || l.Err() != nil {
		t.Errorf("Acquire after a 1.5s wait returned a lease with %v left, Err %v; want renewed", left, l.Err())
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}

	hold()
	out, err := d.c.WithLock(ctx, key, func(context.Context, []byte) ([]byte, error) { return []byte(`1`), nil },
		client.WithTTL(time.Second))
	if err != nil || string(out) != "1" {
		t.Errorf("WithLock after a 1.5s wait, TTL 1s = %q, %v; want 1, nil", out, err)
	}
}

// TestReleaseEndsTheLock: Release stops the keep-alive before it returns
// and ends the lock with ErrReleased; so do ReleaseWith and Delete.
func TestReleaseEndsTheLock(t *testing.T) {
	d := deploy(t, "jetstream")
	ctx := t.Context()
	ends := map[string]func(*client.Lock) error{
		"Release":     func(l *client.Lock) error { return l.Release(ctx) },
		"ReleaseWith": func(l *client.Lock) error { return l.ReleaseWith(ctx, []byte(`2`)) },
		"Delete":      func(l *client.Lock) error { return l.Delete(ctx) },
	}
	for name, end := range ends {
		key := "ka.end." + name
		l, err := d.c.Acquire(ctx, key, client.WithTTL(time.Second), client.WithKeepAlive())
		if err != nil {
			t.Fatal(err)
		}
		lctx, cancel := l.Context(ctx)
		if len(clientGoroutines()) != 1 {
			t.Errorf("%d goroutines of package client for one lock kept alive, want 1", len(clientGoroutines()))
		}
		if err := end(l); err != nil {
			t.Errorf("%s = %v, want nil", name, err)
		}
		if gs := clientGoroutines(); len(gs) != 0 {
			t.Errorf("after %s returned, %d goroutines of package client are left:\n%s", name, len(gs), strings.Join(gs, "\n\n"))
		}
		select {
		case <-l.Done():
		default:
			t.Errorf("Done not closed after %s", name)
		}
		if err := l.Err(); !errors.Is(err, client.ErrReleased) || errors.Is(err, client.ErrNotHeld) {
			t.Errorf("Err after %s = %v, want ErrReleased", name, err)
		}
		<-lctx.Done()
		if cause := context.Cause(lctx); !errors.Is(cause, client.ErrReleased) {
			t.Errorf("context.Cause(l.Context) after %s = %v, want ErrReleased", name, cause)
		}
		cancel()
	}
}

// TestNoGoroutineOutlivesALock: after locks that were released, lost,
// capped or ran out, with and without keep-alive, by hand and through
// WithLock, no goroutine of package client is left: none running its code,
// none created by it. (runtime.NumGoroutine is no measure here: the
// servers in the process start and end goroutines of their own.)
func TestNoGoroutineOutlivesALock(t *testing.T) {
	d := deploy(t, "jetstream")
	ctx := t.Context()
	round := func(i int) {
		if _, err := d.c.WithLock(ctx, "ka.leak.with", func(context.Context, []byte) ([]byte, error) {
			time.Sleep(400 * time.Millisecond)
			return []byte(`1`), nil
		}, client.WithTTL(time.Second)); err != nil {
			t.Fatalf("round %d: WithLock = %v", i, err)
		}
		kept, err := d.c.Acquire(ctx, "ka.leak.kept", client.WithTTL(time.Second), client.WithKeepAlive())
		if err != nil {
			t.Fatal(err)
		}
		_, cancelKept := kept.Context(ctx)
		lost, err := d.c.Acquire(ctx, "ka.leak.lost", client.WithTTL(time.Second), client.WithKeepAlive())
		if err != nil {
			t.Fatal(err)
		}
		lostCtx, cancelLost := lost.Context(ctx)
		capped, err := d.c.Acquire(ctx, "ka.leak.capped", client.WithTTL(time.Second), client.WithKeepAlive(), client.WithMaxHold(300*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := d.c.Acquire(ctx, "ka.leak.plain", client.WithTTL(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		d.releaseByID(t, "ka.leak.lost", lost.ID())
		<-lostCtx.Done()
		<-capped.Done()
		<-plain.Done()
		if err := kept.Release(ctx); err != nil {
			t.Fatal(err)
		}
		cancelKept()
		cancelLost()
		noClientGoroutineWithin(t, 2*time.Second, "every lock ended")
	}
	for i := range 3 {
		round(i)
	}
}
