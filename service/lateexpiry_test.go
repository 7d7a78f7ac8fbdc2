package service

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/memstore"
)

// lateExpiries is a Notifier store whose expiry reports never come, as a
// JetStream server in a busy bucket reports an expiry only when its expiry
// scan gets to the lease message (up to 250 ms late, or later): the store
// itself still decides by its clock that the lease has ended.
type lateExpiries struct{ *memstore.Store }

func (s lateExpiries) Notify(fn func(store.Event)) {
	s.Store.Notify(func(e store.Event) {
		if e.Kind != store.Expired {
			fn(e)
		}
	})
}

// TestParkedAcquireActsAtTheLeaseEndNotTheStoresReport: with a Notifier
// store, a request parked behind a lease is granted at the lease's end
// (a timer from LockedError.ExpiresIn, the attempt decided by the store's
// clock), not when the store gets round to reporting the expiry (issue
// 13, T5: JetStream expiries seen 60-160 ms late in a busy bucket).
func TestParkedAcquireActsAtTheLeaseEndNotTheStoresReport(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, err := memstore.NewServer(memstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		gated, _ := storegate.New(t, lateExpiries{memstore.New(srv)})
		cfg := Config{}
		cfg.SetDefaults()
		h := &harness{t: t, other: memstore.New(srv), msgs: make(map[string][]*nats.Msg)}
		h.s = newService(gated, cfg, h.capture)
		h.s.id = "harness"
		t.Cleanup(func() { h.s.Stop() })

		h.holder("late", time.Second)
		h.holder("late.w", time.Second)
		w := h.send("acquire", "late", acquireBody(newLockID(), 10_000, 5_000, ""))
		wait := h.send("wait", "late.w", `{"wait_ms":10000}`)
		h.noAnswer(w, "acquire parked behind a live lease")
		h.noAnswer(wait, "wait parked behind a live lease")
		time.Sleep(time.Second + 10*time.Millisecond) // virtual time: the lease's end and 10 ms
		h.acquired("parked acquire 10 ms after the lease's end", w)
		if v, e := h.answer(wait); e != "" || v["key"] != "late.w" {
			t.Errorf("parked wait 10 ms after the lease's end = %v %s, want answered", v, e)
		}
	})
}
