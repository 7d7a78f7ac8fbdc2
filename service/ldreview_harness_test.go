package service

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/memstore"
)

// Review of the lock-delay feature in virtual time (testing/synctest,
// memstore): the wake-ups at the end of a lock-delay and the expired
// events, for both store shapes.

// delayHolder takes key through the other instance with a lock-delay.
func (h *harness) delayHolder(key string, ttl, delay time.Duration) (string, uint64) {
	h.t.Helper()
	id := newLockID()
	g, err := h.other.Acquire(h.t.Context(), key, id, store.AcquireOptions{TTL: ttl, Delay: delay})
	if err != nil {
		h.t.Fatalf("Acquire(%q) = %v", key, err)
	}
	return id, g.Token
}

// expiredEvents counts the expired events published for key's lease with
// token so far.
func (h *harness) expiredEvents(key string, token uint64) int {
	n := 0
	for _, m := range h.answers("lock.expired." + key) {
		var ev struct {
			Token uint64 `json:"token"`
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			h.t.Fatal(err)
		}
		if ev.Token == token {
			n++
		}
	}
	return n
}

// TestLockDelayWakeUps: a parked acquire and a parked wait, parked during
// the lease or during its lock-delay, are answered when the delay ends (not
// at the lease's end, not at their wait_ms); one expired event is published
// then.
func TestLockDelayWakeUps(t *testing.T) {
	const lease, delay = 2 * time.Second, 5 * time.Second
	cases := []struct {
		name    string
		parkAt  time.Duration // after the grant
		acquire bool
	}{
		{"acquire parked during the lease", 500 * time.Millisecond, true},
		{"wait parked during the lease", 500 * time.Millisecond, false},
		{"acquire parked in the delay", 3 * time.Second, true},
		{"wait parked in the delay", 3 * time.Second, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forShapes(t, func(t *testing.T, redisLike bool) {
				h := newHarness(t, redisLike, Config{})
				key := "ld.wake"
				start := time.Now()
				_, token := h.delayHolder(key, lease, delay)
				time.Sleep(c.parkAt)
				var reply string
				if c.acquire {
					reply = h.send("acquire", key, acquireBody(newLockID(), 60000, 10000, ""))
				} else {
					reply = h.send("wait", key, `{"wait_ms":60000}`)
				}
				time.Sleep(lease + delay - c.parkAt - 10*time.Millisecond)
				h.noAnswer(reply, "10ms before the lock-delay ends")
				time.Sleep(100 * time.Millisecond)
				if len(h.answers(reply)) == 0 {
					t.Fatalf("%s: not answered 90ms after the lock-delay ended (%v after the grant)", c.name, time.Since(start))
				}
				if c.acquire {
					h.acquired("parked acquire", reply)
				} else if v, e := h.answer(reply); e != "" || v["key"] != key {
					t.Fatalf("parked wait answered %v %s", v, e)
				}
				time.Sleep(30 * time.Second)
				if n := h.expiredEvents(key, token); n != 1 {
					t.Errorf("%d expired events for one lease that expired, want 1", n)
				}
			})
		})
	}
}

// TestLockDelayForcedElsewhereWakeUps: a lease with a lock-delay is forced
// through another instance while an acquire or a wait is parked here: it
// is answered when the delay (counted from the force) ends.
func TestLockDelayForcedElsewhereWakeUps(t *testing.T) {
	const lease, delay = 60 * time.Second, 5 * time.Second
	for _, acquire := range []bool{true, false} {
		name := "wait"
		if acquire {
			name = "acquire"
		}
		t.Run(name, func(t *testing.T) {
			forShapes(t, func(t *testing.T, redisLike bool) {
				h := newHarness(t, redisLike, Config{})
				key := "ld.force"
				_, token := h.delayHolder(key, lease, delay)
				var reply string
				if acquire {
					reply = h.send("acquire", key, acquireBody(newLockID(), 60000, 10000, ""))
				} else {
					reply = h.send("wait", key, `{"wait_ms":60000}`)
				}
				time.Sleep(time.Second)
				if _, err := store.Admin(h.other).Force(t.Context(), key); err != nil {
					t.Fatal(err)
				}
				if redisLike {
					h.releasedEvent(key)
				}
				time.Sleep(delay - 10*time.Millisecond)
				h.noAnswer(reply, "10ms before the lock-delay ends")
				time.Sleep(100 * time.Millisecond)
				if len(h.answers(reply)) == 0 {
					t.Fatalf("not answered 90ms after the lock-delay of the forced lease ended")
				}
				if acquire {
					h.acquired("parked acquire", reply)
				}
				time.Sleep(5 * time.Second)
				if n := h.expiredEvents(key, token); n != 1 {
					t.Errorf("%d expired events for the forced lease at its delay's end, want 1", n)
				}
			})
		})
	}
}

// TestLockDelayHandOffChain: a release hands over at once (no delay) to
// the parked head, with the head's own lock-delay; when that lease
// expires, the next parked request is granted after its delay.
func TestLockDelayHandOffChain(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "ld.chain"
		holder, _ := h.delayHolder(key, 60*time.Second, 5*time.Second)
		r1 := h.send("acquire", key, acquireBody(newLockID(), 60000, 2000, `"lock_delay_ms":3000`))
		r2 := h.send("acquire", key, acquireBody(newLockID(), 60000, 2000, ""))
		if h.parked() != 2 {
			t.Fatal("not parked")
		}
		released := time.Now()
		rel := h.send("release", key, `{"lock_id":"`+holder+`"}`)
		if v, e := h.answer(rel); e != "" || v["released"] != true {
			t.Fatalf("release = %v %s", v, e)
		}
		time.Sleep(100 * time.Millisecond)
		v, e := h.answer(r1)
		t1 := mustAcquired(t, "head after the release", v, e)
		if v["lock_delay_ms"] != float64(3000) {
			t.Errorf("head's grant = %v, want its lock_delay_ms 3000", v)
		}
		time.Sleep(2*time.Second + 3*time.Second - 200*time.Millisecond)
		h.noAnswer(r2, "before the head's lease (2s) and lock-delay (3s) ran out")
		time.Sleep(300 * time.Millisecond)
		if len(h.answers(r2)) == 0 {
			t.Fatalf("second request not granted %v after the release (head: lease 2s + delay 3s)", time.Since(released))
		}
		if t2 := h.acquired("second", r2); t2 <= t1 {
			t.Errorf("token %d after %d", t2, t1)
		}
	})
}

// TestLockDelayOneExpiredEventWhenAWaitSeesTheEnd (stores without
// Notifier): a wait parked during the lease makes the instance look at the
// key at the lease's end; it finds the lock-delay running and sets a timer
// for its end. When the key is read free by another look first (here a
// second wait arriving just after the delay ended, before the timer), that
// look publishes the expiry, and the timer, still armed, publishes it a
// second time. Without a lock-delay the lease's timer is dropped when it
// wakes the key, so the expiry is published once.
func TestLockDelayOneExpiredEventWhenAWaitSeesTheEnd(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, true, Config{})
		key := "ld.twice"
		_, token := h.delayHolder(key, 2*time.Second, 5*time.Second)
		w1 := h.send("wait", key, `{"wait_ms":60000}`)
		time.Sleep(7*time.Second + time.Millisecond) // just after the delay's end
		w2 := h.send("wait", key, `{"wait_ms":60000}`)
		for _, w := range []string{w1, w2} {
			if v, e := h.answer(w); e != "" || v["key"] != key {
				t.Fatalf("wait answered %v %s", v, e)
			}
		}
		time.Sleep(10 * time.Second)
		if n := h.expiredEvents(key, token); n != 1 {
			t.Errorf("%d expired events for one lease that expired, want 1", n)
		}
	})
}

// TestLockDelayForcedHereOneExpiredEvent (stores without Notifier): a lease
// with a lock-delay forced through this instance has its expiry published
// once, when the delay ends, whether or not a request is parked here.
func TestLockDelayForcedHereOneExpiredEvent(t *testing.T) {
	for _, parked := range []bool{false, true} {
		t.Run(fmt.Sprintf("parked=%v", parked), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newAdminHarness(t)
				key := "ld.forcehere"
				_, token := h.delayHolder(key, time.Minute, 5*time.Second)
				var reply string
				if parked {
					reply = h.send("acquire", key, acquireBody(newLockID(), 60000, 10000, ""))
				}
				h.mu.Lock()
				h.n++
				fr := "_INBOX.h.force." + strconv.Itoa(h.n)
				h.mu.Unlock()
				h.s.adminForce(&request{key: key, reply: fr, data: []byte(`{"reason":"test"}`), received: time.Now(),
					stats: h.s.stats.ops[api.OpAdminForce], finish: func() {}})
				if v, e := h.answer(fr); e != "" || v["forced"] != true {
					t.Fatalf("force = %v %s", v, e)
				}
				time.Sleep(4 * time.Second)
				if n := h.expiredEvents(key, token); n != 0 {
					t.Errorf("%d expired events in the lock-delay, want 0", n)
				}
				time.Sleep(2 * time.Second)
				if parked {
					h.acquired("parked acquire", reply)
				}
				time.Sleep(5 * time.Second)
				if n := h.expiredEvents(key, token); n != 1 {
					t.Errorf("%d expired events after the lock-delay of the forced lease, want 1", n)
				}
			})
		})
	}
}

// plainAdmin is a store without Notifier (as Redis) that has Admin.
type plainAdmin struct {
	store.Store
	store.Admin
}

// newAdminHarness is newHarness for stores without Notifier, with Admin
// and without the gate.
func newAdminHarness(t *testing.T) *harness {
	t.Helper()
	srv, err := memstore.NewServer(memstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	ms := memstore.New(srv)
	cfg := Config{}
	cfg.SetDefaults()
	h := &harness{t: t, other: memstore.New(srv), msgs: make(map[string][]*nats.Msg)}
	h.s = newService(plainAdmin{ms, ms}, cfg, h.capture)
	h.s.id = "harness"
	t.Cleanup(func() { h.s.Stop() })
	return h
}

// TestLockDelayReleaseInTheDelayHandsNothingOver: the expired holder's
// release in the lock-delay (a hand-off's Transfer for the parked head)
// is answered released:false and hands nothing over; the head is granted
// when the delay ends.
func TestLockDelayReleaseInTheDelayHandsNothingOver(t *testing.T) {
	forShapes(t, func(t *testing.T, redisLike bool) {
		h := newHarness(t, redisLike, Config{})
		key := "ld.lateholder"
		holder, _ := h.delayHolder(key, 2*time.Second, 5*time.Second)
		w := h.send("acquire", key, acquireBody(newLockID(), 60000, 10000, ""))
		time.Sleep(3 * time.Second)
		rel := h.send("release", key, `{"lock_id":"`+holder+`"}`)
		if v, e := h.answer(rel); e != "" || v["released"] != false {
			t.Fatalf("release by the expired holder in its lock-delay = %v %s, want released:false", v, e)
		}
		ref := h.send("refresh", key, `{"lock_id":"`+holder+`"}`)
		if _, e := h.answer(ref); e == "" || e[:3] != "409" {
			t.Fatalf("refresh by the expired holder in its lock-delay = %s, want 409", e)
		}
		time.Sleep(4*time.Second - 10*time.Millisecond)
		h.noAnswer(w, "before the lock-delay ends")
		time.Sleep(100 * time.Millisecond)
		h.acquired("parked acquire", w)
	})
}
