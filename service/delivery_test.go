package service_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
)

// TestUndeliveredGrantIsGivenBack: a waiter with a liveness window gives up
// listening (unsubscribes its reply subject, as a client that died does)
// and is granted within its window. The grant reaches nobody, so the
// service gives it back and the live waiter behind it gets the lock at
// once, not after the dead waiter's lease.
func TestUndeliveredGrantIsGivenBack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		svc := startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "undelivered." + client.NewLockID()
		held, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)

		dead, _ := nc.SubscribeSync(nc.NewInbox())
		nc.PublishRequest("lock.acquire."+key, dead.Subject, []byte(`{"wait_ms":20000,"ttl_ms":60000,"alive_ms":10000,"owner":"dead"}`))
		waitParked(t, svc, 1)
		live, _ := nc.SubscribeSync(nc.NewInbox())
		nc.PublishRequest("lock.acquire."+key, live.Subject, []byte(`{"wait_ms":20000,"ttl_ms":60000,"owner":"live"}`))
		waitParked(t, svc, 2)
		dead.Unsubscribe()
		nc.Flush()

		released := time.Now()
		raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"]))
		m, err := live.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("the live waiter was not granted: %v (stats %+v)", err, svc.Stats())
		}
		var got api.AcquireResponse
		json.Unmarshal(m.Data, &got)
		if !got.Acquired {
			t.Fatalf("live waiter answered %s", m.Data)
		}
		t.Logf("live waiter granted %v after the release", time.Since(released).Round(time.Millisecond))
		if st := svc.Stats(); st.Undelivered != 1 || st.GivenBack != 1 {
			t.Fatalf("stats %+v, want one undelivered grant given back", st)
		}
	})
}
