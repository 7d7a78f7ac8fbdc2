package service_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
)

// Guarantee 1 (held): a force served by either of two instances wakes the
// request parked on the first one, which is granted with a higher token.
func TestReview10ForceWakesParkedOnOtherInstance(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		a := startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), service.Config{})
		nc := testsrv.Connect(t, srv)
		var keys []string
		var subs []*nats.Subscription
		var toks []uint64
		for i := 0; i < 8; i++ {
			key := fmt.Sprintf("fw%s.%d", client.NewLockID()[:6], i)
			r, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)
			toks = append(toks, uint64(r["token"].(float64)))
			sub, _ := nc.SubscribeSync(nats.NewInbox())
			nc.PublishRequest("lock.acquire."+key, sub.Subject, []byte(`{"wait_ms":30000,"ttl_ms":60000}`))
			keys, subs = append(keys, key), append(subs, sub)
		}
		waitParked(t, a, 8)
		startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), service.Config{})
		time.Sleep(200 * time.Millisecond)
		for i, key := range keys {
			r, code, msg := raw(t, nc, "lock.admin.force."+key, `{}`)
			if r["forced"] != true {
				t.Fatalf("force %s = %v %d %s", key, r, code, msg)
			}
			m, err := subs[i].NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("key %d: parked request not woken by force: %v", i, err)
			}
			var got api.AcquireResponse
			json.Unmarshal(m.Data, &got)
			if !got.Acquired || got.Token <= toks[i] {
				t.Fatalf("got %s", m.Data)
			}
		}
	})
}
