package service_test

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// Adversarial review (branch perfreview) of 59972b5: lease-end timers for
// Notifier stores while requests are parked.

// countedGets is a JetStream store (Notifier and Transferrer promoted)
// that counts the reads the service makes.
type countedGets struct {
	*jsstore.Store
	gets atomic.Int64
}

func (s *countedGets) Get(ctx context.Context, key string) (store.Info, error) {
	s.gets.Add(1)
	return s.Store.Get(ctx, key)
}

// TestWaitBehindAFractionalLeaseDoesNotPoll: a wait parked behind a
// JetStream lease of 1500 ms. The lease message's Nats-TTL is whole
// seconds (2 s), and the store keeps the key locked until then, but the
// lease's ExpiresAt is at 1.5 s. The service's timer for the parked wait
// is set by remaining(info.Lease) (ExpiresAt); once that has passed it is
// 1 ms, so from 1.5 s to 2 s the service re-reads the key every ~3 ms
// (each read also asks the server for its clock): a timer re-armed in a
// loop without progress. A handful of reads is enough: one when the wait
// parks, one at the lease's end, one when the store reports the expiry.
func TestWaitBehindAFractionalLeaseDoesNotPoll(t *testing.T) {
	srv := testsrv.NATS(t, "")
	js, err := jsstore.New(t.Context(), testsrv.Connect(t, srv), jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { js.Close() })
	st := &countedGets{Store: js}
	startInstance(t, srv.ClientURL(), st, service.Config{})
	nc := testsrv.Connect(t, srv)
	if a, code, msg := raw(t, nc, "lock.acquire.frac", `{"ttl_ms":1500}`); code != 0 || a["acquired"] != true {
		t.Fatalf("acquire = %v %d %q", a, code, msg)
	}
	w := ask(t, srv.ClientURL(), "lock.wait.frac", `{"wait_ms":15000}`)
	if x := await(t, w, "parked wait"); x.code != 0 || x.body["key"] != "frac" {
		t.Fatalf("parked wait = %v %d %q, want answered", x.body, x.code, x.msg)
	}
	if n := st.gets.Load(); n > 10 {
		t.Errorf("the service read the key %d times for one wait parked behind a 1500 ms lease, want a handful (a timer re-armed at 1 ms until the store's end of the lease)", n)
	}
}
