package service_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// Adversarial review (branch review9c) of the delivery check (delivery.go)
// and of Stop. Each test names the guarantee of the brief it attacks.

// answerOf waits for the next message on sub and returns its decoded
// acquire answer, or the error code of an error answer.
func answerOf(t *testing.T, sub *nats.Subscription, what string) (api.AcquireResponse, int) {
	t.Helper()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("%s: no answer: %v", what, err)
	}
	if c := m.Header.Get(micro.ErrorCodeHeader); c != "" {
		var code int
		fmt.Sscan(c, &code)
		return api.AcquireResponse{}, code
	}
	var a api.AcquireResponse
	if err := json.Unmarshal(m.Data, &a); err != nil {
		t.Fatalf("%s: answer %q is not JSON", what, m.Data)
	}
	return a, 0
}

// Guards (guarantee 2: "Stop never leaves a granted lease
// whose client was told 503"; the fix of 1e534b9, "Stop answers an
// in-flight attempt with its outcome", misses superseded requests).
//
// Acquire A (lock id X) is parked and its store attempt is in flight. A
// blocking retry B with the same lock id supersedes it (A is answered
// acquired:false; A's grant, if any, belongs to B). Stop now answers B 503:
// failAllWaiters skips only requests whose own attempt is in flight, and
// B's attempt is A's. The client does what the protocol says after a 503
// (rule 7): it retries with wait_ms 0 on another instance (the key is still
// held: acquired:false) and gives the lock id up (cancel, which the
// stopping instance no longer receives, then release: nothing to release).
// Then the key is freed and A's attempt returns granted: settleLocked's
// superseded branch finds B done and keeps the lease for X. Nobody was told
// acquired:true, the only client of X was told 503 and gave X up, and the
// key stays held by X for the whole lease (60 s here). (The Go client's
// second release a liveness window after withdrawing would free it; the
// give-up of PROTOCOL.md rule 8 has no second release.)
func TestReview9cStopSupersededAttemptLeaves503Grant(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		st1, gate := storegate.New(t, b.newStore(t, srv.ClientURL()))
		svc1 := startInstance(t, srv.ClientURL(), st1, service.Config{StoreTimeout: 10 * time.Second})
		other := b.newStore(t, srv.ClientURL())
		nc := testsrv.Connect(t, srv)
		key := "stopsuper." + client.NewLockID()
		holder := client.NewLockID()
		if _, err := other.Acquire(t.Context(), key, holder, store.AcquireOptions{TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		x := client.NewLockID()
		ga := gate.Hold(storegate.Acquire, x) // A's first attempt (the key is still held)
		subA, _ := nc.SubscribeSync(nats.NewInbox())
		subB, _ := nc.SubscribeSync(nats.NewInbox())
		body := fmt.Sprintf(`{"lock_id":%q,"wait_ms":30000,"ttl_ms":60000}`, x)
		nc.PublishRequest("lock.acquire."+key, subA.Subject, []byte(body))
		ga.WaitEntered(t, 10*time.Second)
		nc.PublishRequest("lock.acquire."+key, subB.Subject, []byte(body))
		if a, code := answerOf(t, subA, "A (superseded)"); code != 0 || a.Acquired {
			t.Fatalf("A answered %+v %d, want acquired:false", a, code)
		}
		waitParked(t, svc1, 1)

		stopped := make(chan struct{})
		go func() { svc1.Stop(); close(stopped) }()
		// B inherits A's attempt in flight: Stop answers it with that
		// attempt's outcome, not 503.
		if m, err := subB.NextMsg(300 * time.Millisecond); err == nil {
			t.Fatalf("B answered %q %v while the attempt it inherited was in flight", m.Data, m.Header)
		}
		// The holder leaves; A's attempt, still in flight, now gets the key.
		if err := other.Release(t.Context(), key, holder, store.Update{}); err != nil {
			t.Fatal(err)
		}
		ga.Open()
		got, code := answerOf(t, subB, "B (stopping)")
		if code != 0 || !got.Acquired {
			t.Fatalf("B answered %+v %d, want the grant of the attempt it inherited", got, code)
		}
		select {
		case <-stopped:
		case <-time.After(30 * time.Second):
			t.Fatal("Stop did not return")
		}
		info, err := other.Get(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Locked || info.Lease.Token != got.Token {
			t.Fatalf("after Stop, Get = %+v, want held with the token B was told (%d)", info, got.Token)
		}
	})
}

// Guards (guarantee 1: "an answer acquired:true is never
// followed by the service releasing that lease on its own", with a retry
// on another instance).
//
// A client parks acquire A (lock id X, alive_ms 60000) on instance 1. Its
// NATS connection drops for a moment (it keeps its reply subscription:
// nats.go resubscribes when it reconnects); the key is released meanwhile
// and instance 1 grants A. The grant reaches nobody, the NATS server says
// "no responders", and instance 1 retires X and starts the give-back -
// which cannot reach the store yet (a store hiccup on instance 1; giveBack
// retries it every second until the lease ends). The client's acquire
// times out (its answer was lost) before any renewal went unanswered
// (renewals every 20 s), so the protocol tells it to retry once with the
// same lock id and wait_ms 0 (rules 1 and 7). The retry reaches instance 2
// (instance 1 has lost its NATS connection here; with both up it is a coin
// toss of the queue group), whose store acquire for X returns the grant A
// got: acquired:true. Then instance 1's give-back goes through and
// releases X: the lease the client was told it holds is gone, and another
// acquirer gets the key while the client still believes it holds it.
func TestReview9cUndeliveredGiveBackRevokesRetryGrant(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		st1, gate := storegate.New(t, b.newStore(t, srv.ClientURL()))
		pI := testsrv.NewProxy(t, srv.Addr().String())
		ncI := testsrv.ConnectURL(t, "nats://"+pI.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
		svc1, err := service.New(ncI, st1, service.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc1.Stop() })
		t.Cleanup(pI.Heal) // runs first: Stop with NATS down is slow (TestReview9cStopWithNATSDownIsSlow)
		other := b.newStore(t, srv.ClientURL())
		direct := testsrv.Connect(t, srv)
		pC := testsrv.NewProxy(t, srv.Addr().String())
		cc := testsrv.ConnectURL(t, "nats://"+pC.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))

		key := "retrygb." + client.NewLockID()
		holder := client.NewLockID()
		if _, err := other.Acquire(t.Context(), key, holder, store.AcquireOptions{TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		x := client.NewLockID()
		subA, _ := cc.SubscribeSync(cc.NewInbox())
		cc.PublishRequest("lock.acquire."+key, subA.Subject, []byte(fmt.Sprintf(`{"lock_id":%q,"wait_ms":10000,"ttl_ms":60000,"alive_ms":60000}`, x)))
		waitParked(t, svc1, 1)
		svc2 := startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), service.Config{})

		// instance 1's store is briefly unreachable for the give-back
		gb := gate.Hold(storegate.Release, x)
		gb.Fail(fmt.Errorf("%w: injected: store unreachable from instance 1", store.ErrUnavailable))

		// the client's connection drops; the key is freed meanwhile
		pC.Cut()
		waitFor(t, "the server drops the client's reply interest", func() bool {
			return !srv.GlobalAccount().SubscriptionInterest(subA.Subject)
		})
		if err := other.Release(t.Context(), key, holder, store.Update{}); err != nil {
			t.Fatal(err)
		}
		direct.Publish("lock.released."+key, []byte(fmt.Sprintf(`{"key":%q}`, key))) // Redis wakes on it
		gb.Open()
		waitFor(t, "instance 1 takes the grant for undelivered", func() bool {
			return svc1.Stats().Undelivered == 1
		})
		<-gb.Done() // the first give-back failed; giveBack tries again in a second
		pC.Heal()
		waitFor(t, "the client reconnects and resubscribes", func() bool {
			return cc.IsConnected() && srv.GlobalAccount().SubscriptionInterest(subA.Subject)
		})

		// instance 1 loses NATS (not its store); the retry goes to instance 2
		pI.Cut()
		waitFor(t, "instance 1 leaves the queue group", func() bool { return !ncI.IsConnected() })
		time.Sleep(50 * time.Millisecond)
		m, err := cc.Request("lock.acquire."+key, []byte(fmt.Sprintf(`{"lock_id":%q,"ttl_ms":60000}`, x)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var retry api.AcquireResponse
		if err := json.Unmarshal(m.Data, &retry); err != nil || !retry.Acquired {
			t.Skipf("the retry was not granted (%q, stats 1 %+v, 2 %+v): scenario not reached", m.Data, svc1.Stats(), svc2.Stats())
		}
		t.Logf("retry with wait_ms 0 on instance 2: acquired:true, token %d", retry.Token)

		// instance 1's background give-back retry (once a second)
		time.Sleep(2500 * time.Millisecond)
		info, err := other.Get(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Locked || info.Lease.Token != retry.Token {
			t.Fatalf("the client was told acquired:true (token %d) for lock id X, then instance 1 gave X's grant back on its own: key locked=%v token %d (stats 1 %+v)", retry.Token, info.Locked, info.Lease.Token, svc1.Stats())
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Guards (guarantee 3: "Stop() returns within a bounded time, about
// StoreTimeout + a few seconds").
//
// An instance whose NATS connection is down (reconnecting: a network cut,
// a NATS server restart) is stopped. Nothing is parked and no store
// operation is in progress, so Stop has nothing to wait for; yet it takes
// FlushTimeout(1 s) + the Drain wait (up to 1 s) + the final nc.Flush(),
// which has nats.go's default 10 s timeout: about 12 s with StoreTimeout
// 1 s. (With a store attempt in flight it is StoreTimeout + 1 s more.)
func TestReview9cStopWithNATSDownIsSlow(t *testing.T) {
	srv := testsrv.NATS(t, "")
	st := jetstreamBackend().newStore(t, srv.ClientURL())
	p := testsrv.NewProxy(t, srv.Addr().String())
	nc := testsrv.ConnectURL(t, "nats://"+p.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	svc, err := service.New(nc, st, service.Config{StoreTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p.Cut()
	waitFor(t, "the instance's connection is down", func() bool { return !nc.IsConnected() })
	start := time.Now()
	svc.Stop()
	took := time.Since(start)
	t.Logf("Stop took %v", took.Round(10*time.Millisecond))
	if limit := time.Second + 3*time.Second; took > limit {
		t.Fatalf("Stop with the NATS connection down took %v (StoreTimeout 1s, nothing parked, nothing in flight); want at most %v", took.Round(10*time.Millisecond), limit)
	}
}
