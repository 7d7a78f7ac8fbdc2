package service

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// Adversarial review (branch review9) of the rewritten waiting room. Each
// test names the guarantee of the brief it attacks; the ones that fail at
// the commit they were written against say so and how.

// releasedEvent hands h.s the released event of another instance for key,
// as its NATS subscription would (stores without Notifier): the lease
// timer of the holder is dropped and the key woken.
func (h *harness) releasedEvent(key string) {
	h.s.onEvent(&nats.Msg{
		Subject: "lock." + api.EventReleased + "." + key,
		Header:  nats.Header{api.InstanceHeader: {"another-instance"}},
		Data:    []byte(fmt.Sprintf(`{"key":%q}`, key)),
	})
}

// freeKey releases holder through the other instance and tells h.s about
// it the way its store shape would.
func (h *harness) freeKey(key, holder string, redisLike bool) {
	h.t.Helper()
	if err := h.other.Release(h.t.Context(), key, holder, store.Update{}); err != nil {
		h.t.Fatal(err)
	}
	if redisLike {
		h.releasedEvent(key)
	}
}

func entered(h *storegate.Held, d time.Duration) bool {
	select {
	case <-h.Entered():
		return true
	case <-time.After(d):
		return false
	}
}

// Guards (guarantee 3: "a request is never granted by an attempt STARTED
// after its deadline").
//
// A release hands the lock to the parked head (Transfer); wait_ms runs out
// while the Transfer is in flight (onTimer marks the head overdue and does
// not re-arm its timer); the Transfer then fails with an unknown outcome
// without having been applied. settleLocked's a.retry branch keeps the
// overdue request parked and wakes the driver, which starts a brand-new
// Acquire for it 0.5 s after its deadline. When the key is free by then
// (here: the holder's release is retried through another instance), that
// new attempt grants it and the request is answered acquired:true late.
func TestReview9OverdueHeadIsRetriedAfterItsDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, false, Config{})
		key := "r9.overdue.retry"
		holder := h.holder(key, time.Minute)
		id := newLockID()
		reply := h.send("acquire", key, acquireBody(id, 1000, 60000, ""))
		if h.parked() != 1 {
			t.Fatal("the acquire is not parked")
		}
		deadline := time.Now().Add(time.Second)
		tr := h.gate.Hold(storegate.Transfer, id)
		again := h.gate.Hold(storegate.Acquire, id)
		rel := h.send("release", key, fmt.Sprintf(`{"lock_id":%q}`, holder))
		<-tr.Entered()
		time.Sleep(1500 * time.Millisecond) // wait_ms runs out during the hand-off
		tr.Fail(fmt.Errorf("%w: injected: Transfer not applied", store.ErrUnavailable))
		tr.Open()
		if _, e := h.answer(rel); !strings.HasPrefix(e, "503 ") {
			t.Fatalf("release answered %q, want 503", e)
		}
		if entered(again, 3*time.Second) {
			started := time.Now()
			// The holder retries its release elsewhere: the key is free
			// when the new attempt reaches the store.
			if err := h.other.Release(t.Context(), key, holder, store.Update{}); err != nil {
				t.Fatal(err)
			}
			again.Open()
			v, e := h.answer(reply)
			t.Errorf("a store attempt for the request started %v after its deadline (wait_ms 1000); the request was then answered %v %s",
				started.Sub(deadline), v, e)
			return
		}
		h.notAcquired("the overdue request", reply)
	})
}

// Guards (guarantee 6: nothing is stranded; "a request parked on a free key
// must not sit until its wait_ms").
//
// The head's attempt is in flight when its lock id is cancelled; the
// attempt then fails with an unknown outcome that was in fact not applied.
// settleLocked's unknown-error branch for a retired id gives the grant
// back and answers the head, but does not set out.wake; the give-back
// finds nothing to release (ErrNotHeld), so no released event and no store
// event follows. The release that woke the head was consumed by its
// attempt. The next parked request sits on the free key until its wait_ms.
// Same with a lapse instead of the cancel. Both store shapes.
func TestReview9CancelDuringFailedAttemptStrandsNext(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "r9.strand.cancel"
		holder := h.holder(key, time.Minute)
		a, b := newLockID(), newLockID()
		ra := h.send("acquire", key, acquireBody(a, 30000, 60000, ""))
		rb := h.send("acquire", key, acquireBody(b, 30000, 60000, ""))
		if n := h.parked(); n != 2 {
			t.Fatalf("%d parked, want 2", n)
		}
		ga := h.gate.Hold(storegate.Acquire, a)
		h.freeKey(key, holder, redisLike)
		if !entered(ga, 3*time.Second) {
			t.Fatal("no attempt for the head after the release")
		}
		h.send("cancel", key, fmt.Sprintf(`{"lock_id":%q}`, a))
		ga.Fail(fmt.Errorf("%w: injected: not applied", store.ErrUnavailable))
		ga.Open()
		h.notAcquired("the cancelled head", ra)
		time.Sleep(5 * time.Second)
		if ms := h.answers(rb); len(ms) == 0 {
			t.Fatalf("the second request is still parked 5 s after the key became free (wait_ms 30000): stranded")
		}
		h.acquired("the second request", rb)
	})
}

// Guards (guarantee 6, stores without Notifier; also guarantee 8).
//
// The head's id is cancelled while its attempt is in flight; the attempt
// grants (lease 2 s) and settleLocked gives it back, but the give-back's
// Release fails (store error). settleLocked's retired-grant branch sets no
// wake-up and no lease timer is set for the given-back lease (only
// grantLocked and observeLocked set one), so when that lease expires two
// seconds later nothing wakes the request parked behind it: it sits on a
// free key until its wait_ms, and no expired event is published for the
// lease although it was granted through this instance and never released.
func TestReview9FailedGiveBackStrandsNextWithoutNotifier(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, true, Config{})
		key := "r9.strand.giveback"
		holder := h.holder(key, time.Minute)
		a, b := newLockID(), newLockID()
		ra := h.send("acquire", key, acquireBody(a, 30000, 2000, ""))
		rb := h.send("acquire", key, acquireBody(b, 30000, 60000, ""))
		if n := h.parked(); n != 2 {
			t.Fatalf("%d parked, want 2", n)
		}
		ga := h.gate.Hold(storegate.Acquire, a)
		h.freeKey(key, holder, true)
		if !entered(ga, 3*time.Second) {
			t.Fatal("no attempt for the head after the release")
		}
		h.send("cancel", key, fmt.Sprintf(`{"lock_id":%q}`, a))
		gb := h.gate.Hold(storegate.Release, a)
		gb.Fail(fmt.Errorf("%w: injected: give-back fails", store.ErrUnavailable))
		gb.Open()
		ga.Open()
		h.notAcquired("the cancelled head", ra)
		info := h.info(key)
		if !info.Locked {
			t.Fatalf("Get = %+v, want the cancelled grant still held (its give-back failed)", info)
		}
		time.Sleep(5 * time.Second)
		// The give-back is tried again: the lease is released (not left to
		// expire) and the request behind it is granted.
		if n := h.s.Stats().GivenBack; n != 1 {
			t.Errorf("given back %d, want 1 (the retried give-back)", n)
		}
		h.acquired("the request behind the cancelled one", rb)
	})
}

// Guards (guarantee 8: every lease granted through an instance of a store
// without Notifier gets its expired event, even with nobody waiting).
//
// The lease-end timer of a lease granted here fires while a request is
// parked on the key: leaseDue drops the timer, notes the token in
// ks.expiring and wakes the driver. That attempt fails (store error): the
// request is answered 503, the key's state (with ks.expiring) is dropped,
// and the expired event is never published.
func TestReview9ExpiredEventLostWhenWokenAttemptFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, true, Config{})
		key := "r9.expiring.lost"
		token := h.acquired("the holder", h.send("acquire", key, `{"ttl_ms":2000}`))
		b := newLockID()
		rb := h.send("acquire", key, acquireBody(b, 30000, 60000, ""))
		if n := h.parked(); n != 1 {
			t.Fatalf("%d parked, want 1", n)
		}
		gb := h.gate.Hold(storegate.Acquire, b)
		gb.Fail(fmt.Errorf("%w: injected", store.ErrUnavailable))
		gb.Open()
		time.Sleep(3 * time.Second) // the lease ends at 2 s
		if _, e := h.answer(rb); !strings.HasPrefix(e, "503 ") {
			t.Fatalf("parked request answered %q, want 503 (its attempt failed)", e)
		}
		time.Sleep(10 * time.Second)
		want := fmt.Sprintf(`{"key":%q,"token":%d}`, key, token)
		for _, m := range h.answers("lock.expired." + key) {
			if string(m.Data) == want {
				return
			}
		}
		t.Fatalf("no expired event %s: the lease granted here expired and its event was never published", want)
	})
}

// Guards (guarantee 8).
//
// A parked acquire's attempt is in flight when a retry with its lock id
// supersedes it; the retry (blocking) times out before the attempt returns.
// The attempt then grants: settleLocked's superseded branch keeps the
// lease for the id ("a retry with it gets it back") without
// grantLocked, so no lease-end timer is set for it and its expiry is never
// announced, although the lease was granted through this instance and
// never released.
func TestReview9SupersededGrantHasNoExpiredEvent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, true, Config{})
		key := "r9.superseded.expiry"
		holder := h.holder(key, time.Minute)
		id := newLockID()
		first := h.send("acquire", key, acquireBody(id, 30000, 2000, ""))
		if n := h.parked(); n != 1 {
			t.Fatalf("%d parked, want 1", n)
		}
		g := h.gate.Hold(storegate.Acquire, id)
		h.freeKey(key, holder, true)
		if !entered(g, 3*time.Second) {
			t.Fatal("no attempt after the release")
		}
		retry := h.send("acquire", key, acquireBody(id, 500, 2000, ""))
		h.notAcquired("the superseded request", first)
		time.Sleep(time.Second)
		h.notAcquired("the retry whose wait ran out", retry)
		g.Open()
		synctest.Wait()
		info := h.info(key)
		if !info.Locked {
			t.Fatalf("Get = %+v, want the grant of the in-flight attempt kept for the id", info)
		}
		time.Sleep(10 * time.Second)
		want := fmt.Sprintf(`{"key":%q,"token":%d}`, key, info.Lease.Token)
		for _, m := range h.answers("lock.expired." + key) {
			if string(m.Data) == want {
				return
			}
		}
		t.Fatalf("no expired event %s for the lease granted through this instance (2 s, never released)", want)
	})
}

// Guards (guarantee 5: blocking acquires on one instance are granted in
// arrival order).
//
// A client whose grant answer was lost retries with the same lock id (rule
// 1 of PROTOCOL.md; here with wait_ms > 0) after its lease ran out. Being
// a retry of an id granted here recently (afterGrant), it skips the queue
// and goes straight to the store; the key is free (the request parked
// before it is being woken by the expiry), so it is granted a new lease
// ahead of the request that arrived before it, which is then still parked.
func TestReview9AfterGrantRetryJumpsTheQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, false, Config{})
		key := "r9.aftergrant"
		a, b := newLockID(), newLockID()
		h.acquired("the first grant", h.send("acquire", key, acquireBody(a, 0, 2000, "")))
		rb := h.send("acquire", key, acquireBody(b, 30000, 60000, ""))
		if n := h.parked(); n != 1 {
			t.Fatalf("%d parked, want 1", n)
		}
		gb := h.gate.Hold(storegate.Acquire, b) // the wake-up attempt after the expiry
		time.Sleep(2500 * time.Millisecond)
		if !entered(gb, time.Second) {
			t.Fatal("the parked request was not woken by the expiry")
		}
		// arrives after b: must be granted after b
		ra := h.send("acquire", key, acquireBody(a, 30000, 60000, ""))
		synctest.Wait() // its store attempt returns while b's is at the gate
		gb.Open()
		synctest.Wait()
		if ms := h.answers(ra); len(ms) != 0 && len(h.answers(rb)) == 0 {
			t.Fatalf("the later blocking acquire was answered %q while the earlier one is still parked", ms[0].Data)
		}
		h.acquired("the earlier request", rb)
	})
}

// Guards (guarantee 7: the stats' ParkedWaiters is wrong).
//
// A wait parked alone is marked "fresh" (not yet counted); an acquire
// parked before the driver runs becomes the head and the driver's attempt
// is for the acquire only. The wait stays fresh while parked: ParkedWaiters
// reports 1 for two parked requests (both have been looked at: the key is
// held), and stays so for as long as they wait.
func TestReview9ParkedWaitersCountsEveryParkedRequest(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, false, Config{})
		// Whether the driver reads the key before the acquire is admitted
		// is up to the scheduler: try several keys.
		const n = 20
		for i := range n {
			key := fmt.Sprintf("r9.fresh.%d", i)
			h.holder(key, time.Minute)
			h.send("wait", key, `{"wait_ms":30000}`)
			h.send("acquire", key, acquireBody(newLockID(), 30000, 60000, ""))
		}
		time.Sleep(5 * time.Second)
		synctest.Wait()
		h.s.mu.Lock()
		waiters, fresh := h.s.waiters, h.s.fresh
		h.s.mu.Unlock()
		if got := h.parked(); got != 2*n {
			t.Fatalf("ParkedWaiters = %d after 5 s with a wait and an acquire parked on each of %d held keys, want %d (waiters %d, fresh %d)",
				got, n, 2*n, waiters, fresh)
		}
	})
}

// Held (guarantee 9): Stop while a driver's attempt and a hand-off are in
// flight answers the other parked requests 503 at once, and the one whose
// attempt is in flight with that attempt's outcome before it returns; no
// timer or goroutine is left (synctest fails the bubble otherwise).
func TestReview9StopDuringAttempt(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{StoreTimeout: 2 * time.Second})
		key := "r9.stop"
		holder := h.holder(key, time.Minute)
		a, b := newLockID(), newLockID()
		ra := h.send("acquire", key, acquireBody(a, 30000, 60000, `"alive_ms":5000`))
		rb := h.send("acquire", key, acquireBody(b, 30000, 60000, ""))
		w := h.send("wait", key, `{"wait_ms":30000}`)
		if n := h.parked(); n != 3 {
			t.Fatalf("%d parked, want 3", n)
		}
		g := h.gate.Hold(storegate.Acquire, a)
		h.freeKey(key, holder, redisLike)
		if !entered(g, time.Second) {
			t.Fatal("no attempt")
		}
		done := make(chan struct{})
		go func() { h.s.Stop(); close(done) }()
		synctest.Wait()
		for _, r := range []string{rb, w} {
			if _, e := h.answer(r); !strings.HasPrefix(e, "503 ") {
				t.Fatalf("%s answered %q, want 503", r, e)
			}
		}
		// The request whose attempt is in flight gets its outcome.
		h.noAnswer(ra, "the request whose attempt is in flight")
		g.Open()
		<-done
		token := h.acquired("the request whose attempt was in flight at Stop", ra)
		if info := h.info(key); !info.Locked || info.Lease.Token != token {
			t.Fatalf("Get = %+v: want the grant answered during Stop held", info)
		}
		time.Sleep(time.Minute) // no timer may fire an answer or an attempt now
		if n := len(h.answers(ra)); n != 1 {
			t.Fatalf("%d answers after Stop", n)
		}
	})
}

// Held (guarantees 2, 7): the per-key cap counts a retry that supersedes a
// parked request as one; a cancel of the superseded chain reaches the
// newest request.
func TestReview9CapWithSupersedeAndCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, false, Config{MaxWaitersPerKey: 2})
		key := "r9.cap"
		h.holder(key, time.Minute)
		a, b := newLockID(), newLockID()
		r1 := h.send("acquire", key, acquireBody(a, 30000, 60000, ""))
		h.send("acquire", key, acquireBody(b, 30000, 60000, ""))
		r2 := h.send("acquire", key, acquireBody(a, 30000, 60000, "")) // supersedes r1
		h.notAcquired("the superseded request", r1)
		if n := h.parked(); n != 2 {
			t.Fatalf("%d parked, want 2", n)
		}
		c := h.send("cancel", key, fmt.Sprintf(`{"lock_id":%q}`, a))
		h.notAcquired("the cancelled retry", r2)
		if v, e := h.answer(c); e != "" || v["cancelled"] != true {
			t.Fatalf("cancel answered %v %s", v, e)
		}
		r3 := h.send("acquire", key, acquireBody(a, 30000, 60000, ""))
		h.notAcquired("an acquire with the cancelled id", r3)
		if n := h.parked(); n != 1 {
			t.Fatalf("%d parked, want 1", n)
		}
	})
}

// Held (guarantee 4): a renewal at the very instant the window ends keeps
// the request (timer re-checks under the lock), one just after is too late
// and unanswered, and both the acquire and a wait with wait_id/alive_ms
// lapse, dropped without an answer.
func TestReview9AliveAtTheEdge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, true, Config{})
		key := "r9.alive"
		h.holder(key, time.Minute)
		id, wid := newLockID(), newLockID()
		r := h.send("acquire", key, acquireBody(id, 30000, 60000, `"alive_ms":1000`))
		w := h.send("wait", key, fmt.Sprintf(`{"wait_ms":30000,"wait_id":%q,"alive_ms":1000}`, wid))
		time.Sleep(999 * time.Millisecond)
		if v, e := h.answer(h.send("alive", key, fmt.Sprintf(`{"id":%q}`, id))); e != "" || v["alive"] != true {
			t.Fatalf("renewal answered %v %s", v, e)
		}
		time.Sleep(1001 * time.Millisecond)
		if a := h.send("alive", key, fmt.Sprintf(`{"id":%q}`, id)); len(h.answers(a)) != 0 {
			t.Fatal("a late renewal was answered")
		}
		h.noAnswer(r, "the lapsed acquire (dropped without an answer)")
		h.noAnswer(w, "the lapsed wait (dropped without an answer)")
		if n := h.s.Stats().Lapsed; n != 2 {
			t.Fatalf("lapsed %d, want 2", n)
		}
	})
}
