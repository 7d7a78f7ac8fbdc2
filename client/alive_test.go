package client_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

func TestNewChecksTheAliveWindow(t *testing.T) {
	srv := testsrv.NATS(t, "")
	nc := testsrv.Connect(t, srv)
	for _, tc := range []struct {
		window time.Duration
		ok     bool
	}{
		{0, true},
		{time.Second, true},
		{5 * time.Second, true},
		{time.Minute, true},
		{-time.Second, false},
		{999 * time.Millisecond, false},
		{time.Minute + time.Millisecond, false},
	} {
		_, err := client.New(nc, client.WithAliveWindow(tc.window))
		if (err == nil) != tc.ok {
			t.Errorf("New(WithAliveWindow(%v)) = %v, want ok %v", tc.window, err, tc.ok)
		}
	}
}

// TestBlockingRequestsWithoutServiceAreUnavailable: a blocking request
// under a liveness window has a reply subscription of its own, on which
// the NATS server's "no responders" status arrives; it must be reported as
// ErrUnavailable at once, not waited out.
func TestBlockingRequestsWithoutServiceAreUnavailable(t *testing.T) {
	srv := testsrv.NATS(t, "")
	c, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := c.Acquire(ctx, "nobody.k"); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("Acquire without a service = %v, want ErrUnavailable", err)
	}
	if _, err := c.Wait(ctx, "nobody.k"); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("Wait without a service = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("took %v, want an answer at once", d)
	}
}

// instance is a service instance whose service and store share one NATS
// connection of their own: closing it is the instance crashing (nothing
// is answered, nothing more reaches the store).
type instance struct {
	nc  *nats.Conn
	svc *service.Service
}

func startInstance(t testing.TB, srv *server.Server) *instance {
	t.Helper()
	nc := testsrv.Connect(t, srv)
	js, err := jsstore.New(t.Context(), nc, jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { js.Close() })
	svc, err := service.New(nc, js, service.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	return &instance{nc: nc, svc: svc}
}

func (in *instance) parked() int { return in.svc.Stats().ParkedWaiters }

// eventually polls cond until it holds (true) or d has passed (false).
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// TestWaiterOfACrashedInstanceIsParkedAgain: a blocking request parked on
// an instance that crashes is never answered. With the liveness window,
// the client's next renewal goes unconfirmed, so it withdraws the request
// and sends it again, now parked on the surviving instance, and it gets
// the lock (or the wait its answer) soon after the holder releases. A
// caller-chosen lock id cannot be sent again once withdrawn: that Acquire
// returns ErrUnavailable, no lock is left held under the id, and a later
// Acquire with the id fails at once.
func TestWaiterOfACrashedInstanceIsParkedAgain(t *testing.T) {
	for _, op := range []string{"Acquire", "Wait", "AcquireWithLockID"} {
		t.Run(op, func(t *testing.T) {
			srv := testsrv.NATS(t, "")
			insts := []*instance{startInstance(t, srv), startInstance(t, srv)}
			c, err := client.New(testsrv.Connect(t, srv)) // default window: 5s
			if err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			key := "crash." + op
			holder, err := c.TryAcquire(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			chosen := client.NewLockID()
			done := make(chan error, 1)
			go func() {
				switch op {
				case "Acquire":
					l, err := c.Acquire(ctx, key)
					if err == nil {
						err = l.Release(ctx)
					}
					done <- err
				case "AcquireWithLockID":
					_, err := c.Acquire(ctx, key, client.WithLockID(chosen))
					done <- err
				case "Wait":
					_, err := c.Wait(ctx, key)
					done <- err
				}
			}()
			var crashed, survivor *instance
			if !eventually(5*time.Second, func() bool {
				for i, in := range insts {
					if in.parked() == 1 {
						crashed, survivor = in, insts[1-i]
						return true
					}
				}
				return false
			}) {
				t.Fatalf("%s never parked", op)
			}
			crashed.nc.Close()

			if op == "AcquireWithLockID" {
				select {
				case err := <-done:
					if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "withdrawn") {
						t.Errorf("Acquire(%q) with a chosen lock id after its instance crashed = %v, want ErrUnavailable saying the id was withdrawn", key, err)
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("Acquire(%q) with a chosen lock id did not return within 10s of its instance's crash", key)
				}
				if err := holder.Release(ctx); err != nil {
					t.Fatal(err)
				}
				eventuallyUnlocked(t, c, key, "the withdrawn Acquire and the holder's release")
				// The service refuses the withdrawn id: Acquire says so at
				// once instead of asking again until ctx ends.
				actx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				start := time.Now()
				if _, err := c.Acquire(actx, key, client.WithLockID(chosen)); !errors.Is(err, client.ErrUnavailable) || time.Since(start) > 2*time.Second {
					t.Errorf("Acquire(%q) with the withdrawn lock id = %v after %v, want ErrUnavailable at once", key, err, time.Since(start))
				}
				return
			}
			if !eventually(10*time.Second, func() bool { return survivor.parked() == 1 }) {
				t.Fatalf("%s not parked again on the surviving instance within 10s of the crash", op)
			}
			released := time.Now()
			if err := holder.Release(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s(%q) = %v, want success once the holder released", op, key, err)
				}
				t.Logf("%s returned %v after the release", op, time.Since(released))
			case <-time.After(3 * time.Second):
				t.Fatalf("%s(%q) not done within 3s of the holder's release", op, key)
			}
		})
	}
}

// TestParkedRequestOfADeadClientIsDropped: a client whose connection dies
// while its acquire is parked stops renewing it, so the service drops the
// request within the liveness window; a live request parked behind it is
// then granted at the holder's release instead of waiting for a lease
// handed to the dead client to run out.
func TestParkedRequestOfADeadClientIsDropped(t *testing.T) {
	srv := testsrv.NATS(t, "")
	in := startInstance(t, srv)
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
	key := "dead.k"
	holder, err := live.TryAcquire(ctx, key, client.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	deadDone := make(chan error, 1)
	go func() {
		_, err := dead.Acquire(ctx, key, client.WithTTL(time.Minute))
		deadDone <- err
	}()
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
	closed := time.Now()
	if !eventually(window+2*time.Second, func() bool { return in.parked() == 1 }) {
		t.Fatalf("the dead client's request still parked %v after its connection closed (window %v)", time.Since(closed), window)
	}
	t.Logf("dropped %v after the connection closed", time.Since(closed))
	select {
	case err := <-deadDone:
		if err == nil {
			t.Error("Acquire on a closed connection succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Error("Acquire on a closed connection did not return")
	}
	released := time.Now()
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-liveDone:
		if err != nil {
			t.Errorf("live Acquire(%q) = %v", key, err)
		}
		t.Logf("live Acquire returned %v after the release", time.Since(released))
	case <-time.After(2 * time.Second):
		t.Fatalf("live Acquire(%q) not granted within 2s of the holder's release", key)
	}
}

// TestWaiterOfAStoppedInstanceIsParkedAgain: an instance that stops
// answers its parked requests 503, an unknown outcome for an acquire. The
// client asks again with the same lock id and wait_ms 0 (another instance
// answers: not acquired, the key is held) and goes on waiting, parked on
// the other instance, until the holder releases.
func TestWaiterOfAStoppedInstanceIsParkedAgain(t *testing.T) {
	srv := testsrv.NATS(t, "")
	insts := []*instance{startInstance(t, srv), startInstance(t, srv)}
	c, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	key := "stop.k"
	holder, err := c.TryAcquire(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		l, err := c.Acquire(ctx, key)
		if err == nil {
			err = l.Release(ctx)
		}
		done <- err
	}()
	var stopped, survivor *instance
	if !eventually(5*time.Second, func() bool {
		for i, in := range insts {
			if in.parked() == 1 {
				stopped, survivor = in, insts[1-i]
				return true
			}
		}
		return false
	}) {
		t.Fatal("Acquire never parked")
	}
	stopped.svc.Stop()
	if !eventually(5*time.Second, func() bool { return survivor.parked() == 1 }) {
		t.Fatal("Acquire not parked again on the other instance within 5s of the stop")
	}
	if err := holder.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Acquire(%q) = %v, want success once the holder released", key, err)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("Acquire(%q) not done within 3s of the holder's release", key)
	}
}
