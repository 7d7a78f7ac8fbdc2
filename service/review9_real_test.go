package service_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store"
)

// FAILS on both backends (guarantee 6: "a request parked on a free key
// must not sit until its wait_ms"). Real-server version of
// TestReview9CancelDuringFailedAttemptStrandsNext.
//
// Two acquires are parked behind a holder. The holder releases (through
// another instance: the store's watcher / the released event wakes the
// key). The head's store attempt is in flight when the head's client
// gives up (cancel); the attempt then fails with an unknown outcome,
// without having been applied (a store timeout before the write). The
// service answers the head acquired:false and gives its "grant" back
// (nothing to release), and makes no further attempt: the second request
// stays parked on a free key until its wait_ms.
func TestReview9RealCancelDuringFailedAttemptStrandsNext(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		st, gate := storegate.New(t, b.newStore(t, srv.ClientURL()))
		svc := startInstance(t, srv.ClientURL(), st, service.Config{})
		other := b.newStore(t, srv.ClientURL()) // another instance's view of the store
		nc := testsrv.Connect(t, srv)
		key := "strand." + client.NewLockID()
		holder := client.NewLockID()
		if _, err := other.Acquire(t.Context(), key, holder, store.AcquireOptions{TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		a, bID := client.NewLockID(), client.NewLockID()
		subA, _ := nc.SubscribeSync(nats.NewInbox())
		subB, _ := nc.SubscribeSync(nats.NewInbox())
		nc.PublishRequest("lock.acquire."+key, subA.Subject, []byte(fmt.Sprintf(`{"lock_id":%q,"wait_ms":30000,"ttl_ms":60000}`, a)))
		waitParked(t, svc, 1)
		nc.PublishRequest("lock.acquire."+key, subB.Subject, []byte(fmt.Sprintf(`{"lock_id":%q,"wait_ms":30000,"ttl_ms":60000}`, bID)))
		waitParked(t, svc, 2)

		ga := gate.Hold(storegate.Acquire, a)
		if err := other.Release(t.Context(), key, holder, store.Update{}); err != nil {
			t.Fatal(err)
		}
		// What the other instance publishes after its release (Redis wakes on it).
		nc.Publish("lock.released."+key, []byte(fmt.Sprintf(`{"key":%q}`, key)))
		ga.WaitEntered(t, 10*time.Second)
		if got, code, msg := raw(t, nc, "lock.cancel."+key, fmt.Sprintf(`{"lock_id":%q}`, a)); got["cancelled"] != true {
			t.Fatalf("cancel = %v %d %s", got, code, msg)
		}
		ga.Fail(fmt.Errorf("%w: injected: timed out before the write", store.ErrUnavailable))
		ga.Open()
		if m, err := subA.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("head not answered: %v", err)
		} else if string(m.Data) == "" || json.Valid(m.Data) && strings.Contains(string(m.Data), `"acquired":true`) {
			t.Fatalf("head answered %q", m.Data)
		}
		start := time.Now()
		m, err := subB.NextMsg(5 * time.Second)
		if err != nil {
			info, _ := other.Get(t.Context(), key)
			t.Fatalf("the second request is still parked %v after the key became free (locked=%v; wait_ms 30000): %v", time.Since(start).Round(time.Second), info.Locked, err)
		}
		if !strings.Contains(string(m.Data), `"acquired":true`) {
			t.Fatalf("second request answered %q", m.Data)
		}
	})
}
