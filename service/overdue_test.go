package service_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

// TestOverdueGrantIsNeverGivenBack: a parked acquire's wait runs out while
// the driver's store attempt for it is in flight (the store is slow) and
// its answer is lost. The client's documented recovery, a retry with the
// same lock id and wait_ms 0, is answered acquired:true; the service must
// never release that lease on its own afterwards, so nobody else can
// acquire the key while the client believes it holds it.
func TestOverdueGrantIsNeverGivenBack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		st, gate := storegate.New(t, b.newStore(t, srv.ClientURL()))
		svc := startInstance(t, srv.ClientURL(), st, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "overdue." + client.NewLockID()
		held, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)

		id := client.NewLockID()
		lost := nats.NewInbox() // nobody reads the original answer
		nc.PublishRequest("lock.acquire."+key, lost, []byte(fmt.Sprintf(`{"wait_ms":1000,"ttl_ms":60000,"lock_id":%q}`, id)))
		waitParked(t, svc, 1)
		slow := gate.Hold(storegate.Acquire, id)
		// Were the service to give the grant back, its release would wait
		// here until the retry below was answered.
		giveBack := gate.Hold(storegate.Release, id)
		slowTransfer := gate.Hold(storegate.Transfer, id)
		// The release is answered once its store call (maybe the hand-over) returns.
		nc.PublishRequest("lock.release."+key, nats.NewInbox(), []byte(fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"])))
		var h *storegate.Held
		select {
		case <-slow.Entered():
			h = slow
		case <-slowTransfer.Entered():
			h = slowTransfer
		case <-time.After(10 * time.Second):
			t.Fatal("no store attempt for the parked request")
		}
		time.Sleep(1200 * time.Millisecond) // wait_ms runs out during the attempt
		slow.Open()
		slowTransfer.Open()
		<-h.Done()

		got, code, msg := raw(t, nc, "lock.acquire."+key, fmt.Sprintf(`{"ttl_ms":60000,"lock_id":%q}`, id))
		if got["acquired"] != true {
			t.Fatalf("retry with the same lock id = %v %d %s, want the grant", got, code, msg)
		}
		giveBack.Open()
		// Whatever the service still does for the original request, the
		// lease stays with id: another client cannot take the key.
		for i := 0; i < 10; i++ {
			other, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)
			if other["acquired"] == true {
				t.Fatalf("the retry was told acquired:true (token %v), then another client acquired: %v", got["token"], other)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := svc.Stats().GivenBack; n != 0 {
			t.Fatalf("%d grants given back, want 0", n)
		}
	})
}
