package client_test

// Adversarial tests of review9b: the Go client's giving up (withdraw) and
// the liveness window, against real servers with several instances.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// gatedInstance is a service instance on a JetStream store behind a
// storegate; the service and the store share one NATS connection.
type gatedInstance struct {
	nc   *nats.Conn
	svc  *service.Service
	gate *storegate.Gate
}

func startGated(t testing.TB, srv *server.Server, storeNC, svcNC *nats.Conn) *gatedInstance {
	t.Helper()
	if storeNC == nil {
		storeNC = testsrv.Connect(t, srv)
	}
	if svcNC == nil {
		svcNC = storeNC
	}
	js, err := jsstore.New(t.Context(), storeNC, jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { js.Close() })
	st, gate := storegate.New(t, js)
	svc, err := service.New(svcNC, st, service.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	return &gatedInstance{nc: svcNC, svc: svc, gate: gate}
}

func (in *gatedInstance) parked() int { return in.svc.Stats().ParkedWaiters }

// stillLockedFor reports whether Get shows key locked with a token other
// than notToken during all of d (polling).
func stillLockedFor(t testing.TB, c *client.Client, key string, notToken uint64, d time.Duration) (client.Info, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last client.Info
	for time.Now().Before(deadline) {
		info, err := c.Get(t.Context(), key)
		if err != nil {
			t.Fatalf("Get(%q) = %v", key, err)
		}
		last = *info
		if !info.Locked || info.Token == notToken {
			return last, false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return last, true
}

// TestReview9bTryAcquireLostAnswerThenLockedLeavesOrphan attacks
// guarantee 2 (no orphans after giving up).
//
// TryAcquire's first request is slow (the store takes 1.5s to apply it, well
// within the service's 5s store timeout; the client's request timeout is
// 1s), so its answer is lost to the client: an unknown outcome. The client
// asks again with the same lock id and wait_ms 0; that retry finds the key
// held by someone else and TryAcquire returns ErrLocked WITHOUT withdrawing
// the lock id (client.go TryAcquire: `rerr == nil || errors.Is(rerr,
// ErrLocked)` returns at once; Acquire's resolve withdraws in this case,
// "After a lost answer the request may still be in progress"). The holder
// then releases, and the first request, still in progress on the service,
// is applied: the key is granted to a lock id nobody knows (the client
// generated it and dropped it), and stays locked for the whole lease.
//
// How it breaks: after TryAcquire returned an error, Get shows the key
// locked under a new token for the whole observation (3s; the lease is 1m).
func TestReview9bTryAcquireLostAnswerThenLockedLeavesOrphan(t *testing.T) {
	srv := testsrv.NATS(t, "")
	in := startGated(t, srv, nil, nil)
	ctx := t.Context()
	key := "r9b.try.orphan"
	holderC, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	holder, err := holderC.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	// The next store acquire on the key (the client's first request) is slow.
	h := in.gate.Hold(storegate.Acquire, key)
	c, err := client.New(testsrv.Connect(t, srv), client.WithRequestTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.TryAcquire(ctx, key, client.WithTTL(time.Minute))
	if !errors.Is(err, client.ErrLocked) {
		t.Fatalf("TryAcquire(%q) = %v, want ErrLocked (the retry found the holder)", key, err)
	}
	t.Logf("TryAcquire returned: %v", err)
	select {
	case <-h.Entered():
	default:
		t.Fatal("the first request never reached the store")
	}
	// The holder releases, then the slow first request reaches the store.
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	h.Open()
	<-h.Done()
	if info, locked := stillLockedFor(t, holderC, key, holder.Token(), 3*time.Second); locked {
		t.Errorf("guarantee 2: TryAcquire(%q) returned %v, yet the key stays locked by a grant to the lock id it used: %+v (an orphan until its 1m lease ends)", key, err, info)
	}
}

// TestReview9bAcquireStoppedInstanceLeavesOrphan attacks guarantee 2 (no
// orphans after giving up) and, through it, liveness.
//
// Acquire is parked on instance P. The holder releases through P, so P hands
// the lock to the parked request with one store Transfer; that Transfer is
// slow (1s, within the store timeout). Meanwhile P is stopped (a rolling
// restart): its parked request is answered 503 while the Transfer is in
// flight. The client asks again with the same lock id and wait_ms 0; the
// other instance Q answers "not acquired" (the holder's lease is still
// there: the Transfer has not been applied yet). Since the cause was a 503
// (not a lost answer), client.go resolve returns ErrLocked without
// withdrawing the lock id, and Acquire goes on under a NEW lock id, parked
// on Q. Then P's Transfer is applied: the first lock id holds the key
// (P keeps the grant, settleLocked's `w.done` case) and nobody will ever
// release it. The client's Acquire waits behind its own orphan for the whole
// lease and finally returns ErrTimeout with the orphan still held.
//
// How it breaks: Acquire returns ErrTimeout and the key stays locked (by
// the lock id of its first request) long after the holder released.
func TestReview9bAcquireStoppedInstanceLeavesOrphan(t *testing.T) {
	srv := testsrv.NATS(t, "")
	p := startGated(t, srv, nil, nil)
	ctx := t.Context()
	key := "r9b.stop.orphan"
	holderC, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	holder, err := holderC.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithTimeout(ctx, 12*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		l, err := c.Acquire(actx, key, client.WithTTL(time.Minute))
		if err == nil {
			err = l.Release(ctx)
		}
		done <- err
	}()
	if !eventually(5*time.Second, func() bool { return p.parked() == 1 }) {
		t.Fatal("Acquire never parked")
	}
	// Only P serves so far: the holder's release reaches it and becomes a
	// hand-off to the parked request, held at P's store gate.
	h := p.gate.Hold(storegate.Transfer, key)
	relDone := make(chan error, 1)
	go func() { relDone <- holder.Release(ctx) }()
	h.WaitEntered(t, 5*time.Second)
	q := startGated(t, srv, nil, nil)
	stopped := make(chan struct{})
	go func() { p.svc.Stop(); close(stopped) }()
	// The client hears 503, asks Q with the same id (not acquired: the
	// holder's lease is still there), and parks on Q under a new id.
	if !eventually(5*time.Second, func() bool { return q.parked() == 1 }) {
		t.Fatal("Acquire not parked again on Q")
	}
	h.Open()
	if err := <-relDone; err != nil {
		t.Fatalf("holder's Release = %v", err)
	}
	<-stopped
	info, locked := stillLockedFor(t, holderC, key, holder.Token(), 3*time.Second)
	if locked {
		t.Errorf("guarantee 2: after the holder released, the key stays locked by a grant nobody was told of: %+v", info)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Acquire(%q) = %v (the key was locked by the lock id of its own first request: %+v)", key, err, info)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Acquire did not return")
	}
	if info, err := holderC.Get(ctx, key); err == nil && info.Locked && info.Token != holder.Token() {
		t.Errorf("guarantee 2: Acquire returned and the key is still locked by its orphan: %+v", info)
	}
}

// TestReview9bDeadWaiterGrantedInsideItsWindowBlocksLiveWaiter attacks
// guarantee 3 (a live waiter behind a dead one is delayed at most about a
// window; PROTOCOL.md "Liveness window": "A dead waiter therefore delays the
// live ones behind it by at most alive_ms").
//
// The dead client's acquire is at the head of the queue; its connection
// closes; the holder releases within the dead client's window (0.3s after
// the close, window 1s). The service hands the lock to the dead client's
// request (it is still inside its window, nothing tells the service it is
// gone), the answer goes nowhere, and the lease (10s here; 30s by default,
// up to 10 minutes) is held by nobody. The live waiter behind it gets the
// lock only when that lease runs out.
//
// How it breaks: the live Acquire is granted about 10s after the holder's
// release, not within about a window (1s) of it.
func TestReview9bDeadWaiterGrantedInsideItsWindowBlocksLiveWaiter(t *testing.T) {
	srv := testsrv.NATS(t, "")
	in := startGated(t, srv, nil, nil)
	const window = time.Second
	live, err := client.New(testsrv.Connect(t, srv), client.WithAliveWindow(window))
	if err != nil {
		t.Fatal(err)
	}
	deadNC := testsrv.Connect(t, srv)
	dead, err := client.New(deadNC, client.WithAliveWindow(window))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	key := "r9b.dead.granted"
	holder, err := live.TryAcquire(ctx, key, client.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, _ = dead.Acquire(ctx, key, client.WithTTL(10*time.Second)) }()
	if !eventually(5*time.Second, func() bool { return in.parked() == 1 }) {
		t.Fatal("the dead client's acquire never parked")
	}
	liveDone := make(chan error, 1)
	go func() {
		l, err := live.Acquire(ctx, key, client.WithTTL(time.Minute))
		if err == nil {
			err = l.Release(ctx)
		}
		liveDone <- err
	}()
	if !eventually(5*time.Second, func() bool { return in.parked() == 2 }) {
		t.Fatal("the live client's acquire never parked")
	}
	deadNC.Close()
	time.Sleep(300 * time.Millisecond)
	released := time.Now()
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	bound := window + 3*time.Second
	select {
	case err := <-liveDone:
		if err != nil {
			t.Errorf("live Acquire(%q) = %v", key, err)
		}
		t.Logf("live Acquire granted %v after the holder's release", time.Since(released))
	case <-time.After(bound):
		info, _ := live.Get(ctx, key)
		t.Errorf("guarantee 3: the live waiter behind a dead one is still waiting %v after the holder's release (window %v): the lock went to the dead client's request: %+v", bound, window, info)
		select {
		case <-liveDone:
			t.Logf("live Acquire granted %v after the holder's release", time.Since(released))
		case <-time.After(15 * time.Second):
		}
	}
}

// TestReview9bCutInstanceGrantsWithdrawnID (passes: what held). Guarantees
// 2, 4 and 5 across instances: instance A is cut off from NATS (its service
// connection goes through a proxy) but not from its store, while the
// client's acquire X is parked on it. The client's renewal goes
// unconfirmed, it withdraws X (the cancel reaches only B) and parks again
// on B under a new id. The holder's lease then runs out inside A's window,
// so A may grant X (answer lost). The client's second release, a window
// after the withdraw, frees X; the client then gets the lock under its new
// id, holds it by the store's token, and nothing stays held afterwards.
func TestReview9bCutInstanceGrantsWithdrawnID(t *testing.T) {
	srv := testsrv.NATS(t, "")
	proxy := testsrv.NewProxy(t, srv.Addr().String())
	a := startGated(t, srv, testsrv.Connect(t, srv), testsrv.ConnectURL(t, "nats://"+proxy.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond)))
	ctx := t.Context()
	key := "r9b.cut.grant"
	holderC, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	holder, err := holderC.TryAcquire(ctx, key, client.WithTTL(4*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	type res struct {
		l   *client.Lock
		err error
		at  time.Time
	}
	done := make(chan res, 1)
	go func() {
		l, err := c.Acquire(ctx, key, client.WithTTL(time.Minute))
		done <- res{l, err, time.Now()}
	}()
	if !eventually(5*time.Second, func() bool { return a.parked() == 1 }) {
		t.Fatal("Acquire never parked on A")
	}
	b := startGated(t, srv, nil, nil)
	proxy.Cut()
	var r res
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Acquire did not return within 20s")
	}
	if r.err != nil {
		t.Fatalf("Acquire = %v", r.err)
	}
	t.Logf("granted %v after the holder's lease end; A stats %+v; B parked %d", r.at.Sub(holder.Deadline()), a.svc.Stats().ParkedWaiters, b.parked())
	info, err := holderC.Get(ctx, key)
	if err != nil || !info.Locked || info.Token != r.l.Token() {
		t.Errorf("guarantee 4/5: Acquire returned token %d but Get = %+v, %v", r.l.Token(), info, err)
	}
	if d := r.at.Sub(holder.Deadline()); d > 5*time.Second+3*time.Second {
		t.Errorf("granted %v after the holder's lease ended", d)
	}
	if err := r.l.Release(ctx); err != nil {
		t.Fatalf("Release = %v", err)
	}
	proxy.Heal()
	time.Sleep(7 * time.Second) // past A's window and the second release
	if info, err := holderC.Get(ctx, key); err != nil || info.Locked {
		t.Errorf("guarantee 2: after the release, Get = %+v, %v; want unlocked", info, err)
	}
}
