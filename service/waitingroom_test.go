package service

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/store"
)

// The waiting room's state machine on the in-memory store, in virtual time.
// Each test names the hole of issue 9 it closes; each fails without the fix.

func forShapes(t *testing.T, fn func(t *testing.T, redisLike bool)) {
	for _, redisLike := range []bool{false, true} {
		name := "notifier"
		if redisLike {
			name = "plain"
		}
		t.Run(name, func(t *testing.T) { synctest.Test(t, func(t *testing.T) { fn(t, redisLike) }) })
	}
}

// Hole 1: a parked acquire's wait runs out while the driver's store attempt
// is in flight. The request is answered with the attempt's outcome (here a
// grant, slightly late), and a retry with the same lock id is told the same
// grant; the service never releases that lease on its own.
func TestOverdueAttemptIsAnsweredWithItsOutcome(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "overdue"
		holder := h.holder(key, time.Minute)
		id := newLockID()
		first := h.send("acquire", key, acquireBody(id, 1000, 60000, ""))
		if h.parked() != 1 {
			t.Fatal("the acquire is not parked")
		}
		gate := h.gate.Hold(storegate.Acquire, id)
		if err := h.other.Release(t.Context(), key, holder, store.Update{}); err != nil {
			t.Fatal(err)
		}
		if redisLike {
			h.s.onRelease(key) // the released event of the other instance
		}
		<-gate.Entered()
		time.Sleep(1500 * time.Millisecond) // wait_ms runs out during the attempt
		h.noAnswer(first, "the deadline passed while the attempt was in flight")
		gate.Open()
		token := h.acquired("the overdue request", first)
		retry := h.send("acquire", key, acquireBody(id, 0, 60000, ""))
		if got := h.acquired("the retry with the same lock id", retry); got != token {
			t.Fatalf("retry token %d, want %d", got, token)
		}
		time.Sleep(time.Second)
		if info := h.info(key); !info.Locked || info.Lease.Token != token {
			t.Fatalf("after the retry was told acquired, Get = %+v, want locked with token %d", info, token)
		}
		if n := h.s.Stats().GivenBack; n != 0 {
			t.Fatalf("%d grants given back, want 0", n)
		}
	})
}

// Hole 2: a cancel handled before its acquire retires the lock id: the
// acquire is refused, never parked, never granted.
func TestCancelBeforeAcquireRetiresTheID(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "cancel.first"
		holder := h.holder(key, time.Minute)
		id := newLockID()
		h.send("cancel", key, fmt.Sprintf(`{"lock_id":%q}`, id))
		acq := h.send("acquire", key, acquireBody(id, 30000, 60000, ""))
		h.notAcquired("an acquire whose lock id was cancelled", acq)
		if n := h.parked(); n != 0 {
			t.Fatalf("%d parked, want 0", n)
		}
		h.other.Release(t.Context(), key, holder, store.Update{})
		if redisLike {
			h.s.onRelease(key)
		}
		time.Sleep(time.Second)
		if info := h.info(key); info.Locked {
			t.Fatalf("Get = %+v after the holder released, want unlocked", info)
		}
		// On another key the id is not retired.
		other := h.send("acquire", "cancel.other", acquireBody(id, 0, 60000, ""))
		h.acquired("the same id on another key", other)
	})
}

// A cancel of an acquire whose attempt is in flight, or that was granted
// moments ago, gives the grant back.
func TestCancelGivesBackAGrantInFlight(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "cancel.inflight"
		id := newLockID()
		gate := h.gate.Hold(storegate.Acquire, id)
		acq := h.send("acquire", key, acquireBody(id, 30000, 60000, ""))
		<-gate.Entered()
		c := h.send("cancel", key, fmt.Sprintf(`{"lock_id":%q}`, id))
		gate.Open()
		h.notAcquired("the cancelled acquire", acq)
		if v, e := h.answer(c); e != "" || v["cancelled"] != true {
			t.Fatalf("cancel answered %v %s", v, e)
		}
		if info := h.info(key); info.Locked {
			t.Fatalf("Get = %+v, want the grant given back", info)
		}

		key = "cancel.granted"
		id = newLockID()
		acq = h.send("acquire", key, acquireBody(id, 0, 60000, ""))
		h.acquired("the acquire", acq)
		h.send("cancel", key, fmt.Sprintf(`{"lock_id":%q}`, id))
		synctest.Wait()
		if info := h.info(key); info.Locked {
			t.Fatalf("Get = %+v, want the recent grant given back", info)
		}
	})
}

// Hole 5: a request with a liveness window that is not renewed is dropped
// when the window runs out, its lock id retired, and the live request
// behind it gets the lock; a renewed one stays parked.
func TestLivenessWindow(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "alive"
		holder := h.holder(key, time.Minute)
		dead, live := newLockID(), newLockID()
		deadReply := h.send("acquire", key, acquireBody(dead, 20000, 60000, `"alive_ms":2000`))
		liveReply := h.send("acquire", key, acquireBody(live, 20000, 60000, `"alive_ms":2000`))
		for range 10 { // 5 s of renewals for the live one only
			time.Sleep(500 * time.Millisecond)
			r := h.send("alive", key, fmt.Sprintf(`{"id":%q}`, live))
			if v, e := h.answer(r); e != "" || v["alive"] != true {
				t.Fatalf("renewal answered %v %s", v, e)
			}
		}
		if n := h.parked(); n != 1 {
			t.Fatalf("%d parked after 5 s, want 1 (the renewed one)", n)
		}
		h.noAnswer(deadReply, "the request that was not renewed (dropped without an answer)")
		if r := h.send("alive", key, fmt.Sprintf(`{"id":%q}`, dead)); len(h.answers(r)) != 0 {
			t.Fatal("a renewal of the dropped request was answered")
		}
		h.other.Release(t.Context(), key, holder, store.Update{})
		if redisLike {
			h.s.onRelease(key)
		}
		h.acquired("the renewed request", liveReply)
		if n := h.s.Stats().Lapsed; n != 1 {
			t.Fatalf("lapsed = %d, want 1", n)
		}
		// The dropped id is retired: a later acquire with it is refused.
		again := h.send("acquire", key, acquireBody(dead, 0, 60000, ""))
		h.notAcquired("an acquire with the retired id", again)
	})
}

// A window that runs out while the attempt is in flight: the grant is
// given back (the id is retired: its caller stopped renewing), never sent.
func TestLapseDuringAttemptGivesBack(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "alive.inflight"
		holder := h.holder(key, time.Minute)
		id := newLockID()
		reply := h.send("acquire", key, acquireBody(id, 20000, 60000, `"alive_ms":1000`))
		gate := h.gate.Hold(storegate.Acquire, id)
		h.other.Release(t.Context(), key, holder, store.Update{})
		if redisLike {
			h.s.onRelease(key)
		}
		<-gate.Entered()
		time.Sleep(2 * time.Second)
		gate.Open()
		h.noAnswer(reply, "the lapsed request (dropped without an answer)")
		if info := h.info(key); info.Locked {
			t.Fatalf("Get = %+v, want the lapsed request's grant given back", info)
		}
	})
}

// Hole 6: parking order is arrival order, and grants follow it.
func TestFIFO(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "fifo"
		holder := h.holder(key, time.Minute)
		var ids, replies []string
		for i := range 8 {
			id := newLockID()
			ids = append(ids, id)
			replies = append(replies, h.send("acquire", key, acquireBody(id, 60000, 60000, fmt.Sprintf(`"owner":"o%d"`, i))))
		}
		prev := holder
		for i := range 8 {
			rel := h.send("release", key, fmt.Sprintf(`{"lock_id":%q}`, prev))
			if v, e := h.answer(rel); e != "" || v["released"] != true {
				t.Fatalf("release %d answered %v %s", i, v, e)
			}
			h.acquired(fmt.Sprintf("o%d", i), replies[i])
			for j := i + 1; j < 8; j++ {
				h.noAnswer(replies[j], fmt.Sprintf("o%d before o%d", j, i+1))
			}
			prev = ids[i]
		}
	})
}

// Hole 7: every error answer counts, and an answered request's processing
// time runs from receipt to answer (here: a wait of exactly 1.5 s).
func TestStatsCountEveryAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, false, Config{})
		for range 8 {
			h.send("acquire", "stats", `{"ttl_ms":-1}`)
		}
		h.holder("stats", time.Minute)
		h.send("acquire", "stats", `{"wait_ms":1500}`)
		time.Sleep(2 * time.Second)
		synctest.Wait()
		o := h.s.stats.ops["acquire"]
		if n := o.errors[400].Load(); n != 8 {
			t.Fatalf("400s counted %d, want 8", n)
		}
		if n := o.answered.Load(); n != 9 {
			t.Fatalf("answered %d, want 9", n)
		}
		if d := time.Duration(o.nanos.Load()); d != 1500*time.Millisecond {
			t.Fatalf("processing time %v, want 1.5s (the parked request's wait)", d)
		}
	})
}

// Hole 8: one key cannot take every waiter slot of the instance.
func TestPerKeyCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, false, Config{MaxWaitersPerKey: 3})
		h.holder("cap", time.Minute)
		h.holder("cap.other", time.Minute)
		for range 3 {
			h.send("acquire", "cap", `{"wait_ms":10000}`)
		}
		r := h.send("acquire", "cap", `{"wait_ms":10000}`)
		if _, e := h.answer(r); !strings.HasPrefix(e, "503 ") || !strings.Contains(e, "too many requests parked on this key (3)") {
			t.Fatalf("fourth waiter on the key answered %q, want the per-key 503", e)
		}
		h.send("acquire", "cap.other", `{"wait_ms":10000}`)
		if n := h.parked(); n != 4 {
			t.Fatalf("%d parked, want 4 (another key still parks)", n)
		}
	})
}

// Hole 9 (stores without Notifier): the instance that granted a lease
// publishes its expiry even when nobody waits, once, with the token; a
// released lease publishes none.
func TestExpiredEventWithoutWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, true, Config{})
		r := h.send("acquire", "exp", `{"ttl_ms":2000}`)
		token := h.acquired("acquire", r)
		r2 := h.send("acquire", "rel", `{"ttl_ms":2000}`)
		v, e := h.answer(r2)
		mustAcquired(t, "acquire", v, e)
		h.send("release", "rel", fmt.Sprintf(`{"lock_id":%q}`, v["lock_id"]))
		time.Sleep(3 * time.Second)
		ms := h.answers("lock.expired.exp")
		if len(ms) != 1 || string(ms[0].Data) != fmt.Sprintf(`{"key":"exp","token":%d}`, token) {
			t.Fatalf("expired events %v, want one with token %d", ms, token)
		}
		if ms := h.answers("lock.expired.rel"); len(ms) != 0 {
			t.Fatalf("expired event for a released lease: %q", ms[0].Data)
		}
		// A refresh moves the expiry: no event at the old end.
		r3 := h.send("acquire", "ref", `{"ttl_ms":2000}`)
		v, e = h.answer(r3)
		mustAcquired(t, "acquire", v, e)
		time.Sleep(time.Second)
		h.send("refresh", "ref", fmt.Sprintf(`{"lock_id":%q,"ttl_ms":5000}`, v["lock_id"]))
		time.Sleep(2 * time.Second)
		if ms := h.answers("lock.expired.ref"); len(ms) != 0 {
			t.Fatalf("expired event for a refreshed lease at its old end: %q", ms[0].Data)
		}
		time.Sleep(4 * time.Second)
		if ms := h.answers("lock.expired.ref"); len(ms) != 1 {
			t.Fatalf("%d expired events after the refreshed lease ended, want 1", len(ms))
		}
	})
}

// A hand-off whose Transfer outcome is unknown keeps the head parked and
// asks the store again (acquire is idempotent): the head gets the lock.
func TestHandOffUnknownOutcomeAsksAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, false, Config{})
		key := "handoff.unknown"
		holder := h.holder(key, time.Minute)
		id := newLockID()
		reply := h.send("acquire", key, acquireBody(id, 20000, 60000, ""))
		if h.parked() != 1 {
			t.Fatal("not parked")
		}
		gate := h.gate.Hold(storegate.Transfer, id)
		gate.FailAfter(fmt.Errorf("%w: injected: ack lost", store.ErrUnavailable))
		gate.Open()
		rel := h.send("release", key, fmt.Sprintf(`{"lock_id":%q}`, holder))
		if _, e := h.answer(rel); !strings.HasPrefix(e, "503 ") {
			t.Fatalf("release answered %q, want 503 (unknown outcome)", e)
		}
		token := h.acquired("the head", reply)
		if info := h.info(key); !info.Locked || info.Lease.Token != token {
			t.Fatalf("Get = %+v, want held with token %d", info, token)
		}
	})
}

// A store error on the head's attempt is answered through the error table
// (503, counted) and the next request is tried at once.
func TestStoreErrorAnsweredAndCounted(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "storeerr"
		holder := h.holder(key, time.Minute)
		a, b := newLockID(), newLockID()
		ra := h.send("acquire", key, acquireBody(a, 20000, 60000, ""))
		rb := h.send("acquire", key, acquireBody(b, 20000, 60000, ""))
		gate := h.gate.Hold(storegate.Acquire, a)
		gate.Fail(fmt.Errorf("%w: injected", store.ErrUnavailable))
		gate.Open()
		h.other.Release(t.Context(), key, holder, store.Update{})
		if redisLike {
			h.s.onRelease(key)
		}
		if _, e := h.answer(ra); !strings.HasPrefix(e, "503 ") {
			t.Fatalf("first answered %q, want 503", e)
		}
		h.acquired("the next request", rb)
		if n := h.s.stats.storeErrors.Load(); n != 1 {
			t.Fatalf("store errors %d, want 1", n)
		}
	})
}

// Waits parked behind acquires are answered when the lock changes hands,
// and by a read when only waits are parked.
func TestWaitAnswered(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "wait"
		holder := h.holder(key, 2*time.Second)
		w := h.send("wait", key, `{"wait_ms":10000}`)
		h.noAnswer(w, "locked")
		time.Sleep(3 * time.Second) // the lease expires
		if v, e := h.answer(w); e != "" || v["key"] != key {
			t.Fatalf("wait answered %v %s", v, e)
		}
		_ = holder
	})
}
