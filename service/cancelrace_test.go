package service_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

// TestCancelOvertakesAcquire: a client that gives up right after sending a
// blocking acquire publishes cancel, then release, as the client library
// does. Acquire and cancel arrive on different subscriptions; when the
// cancel is handled first, it retires the lock id, so the acquire is
// refused instead of parking for a caller that is gone (and being granted
// the lock when the holder releases).
func TestCancelOvertakesAcquire(t *testing.T) {
	srv := testsrv.NATS(t, "")
	svc := startInstance(t, srv.ClientURL(), jetstreamBackend().newStore(t, srv.ClientURL()), service.Config{})
	nc := testsrv.Connect(t, srv)
	key := "cancelrace." + client.NewLockID()
	held, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)
	orphans := 0
	for i := 0; i < 200; i++ {
		id := client.NewLockID()
		nc.PublishRequest("lock.acquire."+key, nats.NewInbox(), []byte(fmt.Sprintf(`{"wait_ms":30000,"ttl_ms":60000,"owner":"gone","lock_id":%q}`, id)))
		nc.Publish("lock.cancel."+key, []byte(fmt.Sprintf(`{"lock_id":%q}`, id)))
		raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, id)) // giveUp's release
		time.Sleep(20 * time.Millisecond)
		if n := parked(t, svc); n > orphans {
			orphans = n
		}
	}
	time.Sleep(200 * time.Millisecond)
	n := parked(t, svc)
	raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"]))
	time.Sleep(200 * time.Millisecond)
	info, _, _ := raw(t, nc, "lock.get."+key, ``)
	if n > 0 {
		t.Fatalf("%d of 200 acquires withdrawn with cancel+release are still parked (wait_ms 30 s) for callers that are gone; after the holder released, get = %v", n, info)
	}
}
