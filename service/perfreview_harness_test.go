package service

import (
	"testing"
	"testing/synctest"
	"time"
)

// Adversarial review (branch perfreview) of 59972b5, in virtual time.

// TestNotifierLeaseTimerGoesWithTheQueue: on a Notifier store the service
// sets a lease-end timer only for the requests parked on the key; once
// they are gone (here: their wait_ms ran out behind a lease of an hour)
// nothing needs it, yet it stays, one per key that ever had a request
// parked, until each lease's end.
func TestNotifierLeaseTimerGoesWithTheQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := newHarness(t, false, Config{})
		h.holder("long.w", time.Hour)
		h.holder("long.a", time.Hour)
		w := h.send("wait", "long.w", `{"wait_ms":100}`)
		a := h.send("acquire", "long.a", acquireBody(newLockID(), 100, 5_000, ""))
		h.noAnswer(w, "wait behind a lease of an hour")
		h.noAnswer(a, "acquire behind a lease of an hour")
		time.Sleep(200 * time.Millisecond) // virtual time: both wait_ms run out
		if len(h.answers(w)) != 1 || len(h.answers(a)) != 1 {
			t.Fatalf("answers after wait_ms: wait %d, acquire %d, want 1 each", len(h.answers(w)), len(h.answers(a)))
		}
		if n := h.parked(); n != 0 {
			t.Fatalf("%d requests still parked", n)
		}
		h.s.mu.Lock()
		defer h.s.mu.Unlock()
		for key, lw := range h.s.watches {
			t.Errorf("lease timer for %s (token %d) left behind with nothing parked on the key", key, lw.token)
		}
	})
}
