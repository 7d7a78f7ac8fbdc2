package service_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

// Review of the lock-delay feature: tests that show bugs.

// TestLockDelayInvalidWaiterBreaksRelease: on JetStream a lease plus its
// lock-delay must fit in the bucket's marker TTL (10m by default, the same
// as the service's max TTL), which the service cannot check at admission:
// an acquire of ttl_ms 600000 with a lock-delay is refused by the store
// (400) at its first attempt. A request parked behind the head of the
// queue makes no attempt, so it can become the head when the holder
// releases: the hand-off's Transfer then fails for the waiter's options,
// and the holder's valid release is answered 400 (the waiter's error) and
// does not happen.
func TestLockDelayInvalidWaiterBreaksRelease(t *testing.T) {
	srv, svcs := deployment(t, jetstreamBackend(), 1, service.Config{})
	url := srv.ClientURL()
	nc := testsrv.Connect(t, srv)
	a, code, msg := raw(t, nc, "lock.acquire.inv", `{"ttl_ms":30000}`)
	if code != 0 || a["acquired"] != true {
		t.Fatalf("acquire = %v %d %q", a, code, msg)
	}
	w1 := ask(t, url, "lock.acquire.inv", `{"ttl_ms":30000,"wait_ms":15000}`)
	waitParked(t, svcs[0], 1)
	w2 := ask(t, url, "lock.acquire.inv", `{"ttl_ms":600000,"lock_delay_ms":1000,"wait_ms":15000}`)
	waitParked(t, svcs[0], 2)
	if r, code, msg := raw(t, nc, "lock.release.inv", `{"lock_id":"`+a["lock_id"].(string)+`"}`); code != 0 || r["released"] != true {
		t.Fatalf("release by the holder = %v %d %q", r, code, msg)
	}
	g1 := await(t, w1, "first parked acquire")
	if g1.code != 0 || g1.body["acquired"] != true {
		t.Fatalf("first parked acquire = %v %d %q", g1.body, g1.code, g1.msg)
	}
	// The first waiter's release must succeed whatever the second asked.
	r, code, msg := raw(t, nc, "lock.release.inv", `{"lock_id":"`+g1.body["lock_id"].(string)+`"}`)
	if code != 0 || r["released"] != true {
		t.Errorf("release by a holder with an invalid request parked behind it = %v %d %q, want released:true", r, code, msg)
	}
	g2 := await(t, w2, "invalid parked acquire")
	if g2.code != 400 {
		t.Errorf("parked acquire with ttl_ms+lock_delay_ms over the bucket's marker TTL = %v %d %q, want 400", g2.body, g2.code, g2.msg)
	}
	if g, _, _ := raw(t, nc, "lock.get.inv", `{}`); g["locked"] != false {
		t.Errorf("get after the release = %v, want unlocked", g)
	}
}

// TestLockDelayForcedExpiredEventOnEveryBackend: after a force of a lease
// with a lock-delay, the key cannot be taken until the delay ends; the
// released event comes at the force, when an acquire would still be
// refused. With JetStream the service publishes the expired event when the
// delay ends (the store reports the blocker's removal), which tells
// listeners the key can now be taken. With Redis nothing is published at
// the delay's end unless a request happens to be parked on an instance
// (then that instance's attempt publishes it): the events a listener gets
// depend on the backend and on who else is waiting.
func TestLockDelayForcedExpiredEventOnEveryBackend(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Parallel()
		srv, _ := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		expired, err := nc.SubscribeSync("lock.expired.fx")
		if err != nil {
			t.Fatal(err)
		}
		a, code, msg := raw(t, nc, "lock.acquire.fx", `{"ttl_ms":30000,"lock_delay_ms":1000}`)
		if code != 0 || a["acquired"] != true {
			t.Fatalf("acquire = %v %d %q", a, code, msg)
		}
		if f, code, msg := raw(t, nc, "lock.admin.force.fx", `{"reason":"test"}`); code != 0 || f["forced"] != true {
			t.Fatalf("force = %v %d %q", f, code, msg)
		}
		m, err := expired.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no expired event within 10s of the end of the lock-delay (1s) of a forced lease: %v", err)
		}
		var ev struct {
			Token float64 `json:"token"`
		}
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Token != a["token"] {
			t.Errorf("expired event %s, want the forced lease's token %v", m.Data, a["token"])
		}
	})
}

// TestLockDelayIdempotentRetryReportsTheLeasesDelay: an acquire retried
// with the same lock id returns the same grant, unchanged (its lock-delay
// included), but the answer's lock_delay_ms is the retry's request's
// (here: none), not the lease's: the caller is told its lease has no
// lock-delay when it has one, and vice versa.
func TestLockDelayIdempotentRetryReportsTheLeasesDelay(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Parallel()
		srv, _ := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		const id = "ldreview-retry-lock-id-0001"
		a, code, msg := raw(t, nc, "lock.acquire.rt", `{"lock_id":"`+id+`","ttl_ms":30000,"lock_delay_ms":5000}`)
		if code != 0 || a["acquired"] != true || a["lock_delay_ms"] != float64(5000) {
			t.Fatalf("acquire = %v %d %q", a, code, msg)
		}
		r, code, msg := raw(t, nc, "lock.acquire.rt", `{"lock_id":"`+id+`","ttl_ms":30000}`)
		if code != 0 || r["acquired"] != true || r["token"] != a["token"] {
			t.Fatalf("retry = %v %d %q, want the same grant", r, code, msg)
		}
		if r["lock_delay_ms"] != float64(5000) {
			t.Errorf("retry of the acquire = %v, want the lease's lock_delay_ms 5000 (the grant is unchanged)", r)
		}
	})
}

// TestLockDelayWaitZeroInTheDelay: wait answers "once the key is seen
// unlocked and out of any lock-delay (it could be taken)" (PROTOCOL.md);
// a parked wait is, but a wait with wait_ms 0 (the immediate check) says
// the key is free while the lock-delay of a forced lease still keeps it
// from everyone (an acquire right after is refused).
func TestLockDelayWaitZeroInTheDelay(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Parallel()
		srv, _ := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		a, code, msg := raw(t, nc, "lock.acquire.w0", `{"ttl_ms":30000,"lock_delay_ms":30000}`)
		if code != 0 || a["acquired"] != true {
			t.Fatalf("acquire = %v %d %q", a, code, msg)
		}
		if f, code, msg := raw(t, nc, "lock.admin.force.w0", `{"reason":"test"}`); code != 0 || f["forced"] != true {
			t.Fatalf("force = %v %d %q", f, code, msg)
		}
		w, code, msg := raw(t, nc, "lock.wait.w0", `{}`)
		if code != 408 {
			t.Errorf("wait with wait_ms 0 in the 30s lock-delay of a forced lease = %v %d %q, want 408 (the key cannot be taken)", w, code, msg)
		}
		if try, code, _ := raw(t, nc, "lock.acquire.w0", `{}`); code != 0 || try["acquired"] != false || try["delay_ms"] == nil {
			t.Errorf("try in the lock-delay = %v %d, want refused with delay_ms", try, code)
		}
	})
}

// TestLockDelayRefusalNamesTheEndedLease: PROTOCOL.md: a try refused by a
// lock-delay carries delay_ms and "token/owner are the ended lease's".
// Redis's refusal has the token but not the owner label (the delay key
// holds only the token).
func TestLockDelayRefusalNamesTheEndedLease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Parallel()
		srv, _ := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		a, code, msg := raw(t, nc, "lock.acquire.own", `{"ttl_ms":30000,"lock_delay_ms":30000,"owner":"batch-7"}`)
		if code != 0 || a["acquired"] != true {
			t.Fatalf("acquire = %v %d %q", a, code, msg)
		}
		if f, code, msg := raw(t, nc, "lock.admin.force.own", `{"reason":"test"}`); code != 0 || f["forced"] != true {
			t.Fatalf("force = %v %d %q", f, code, msg)
		}
		try, code, _ := raw(t, nc, "lock.acquire.own", `{}`)
		if code != 0 || try["acquired"] != false || try["delay_ms"] == nil {
			t.Fatalf("try in the lock-delay = %v %d, want refused with delay_ms", try, code)
		}
		if try["token"] != a["token"] || try["owner"] != "batch-7" {
			t.Errorf("try in the lock-delay = %v, want the ended lease's token %v and owner \"batch-7\"", try, a["token"])
		}
	})
}
