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

// TestFIFOBackToBack: eight blocking acquires published back to back on one
// connection are granted in the order they were sent (the order the
// instance's subscription delivers them), one release at a time.
func TestFIFOBackToBack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "fifo." + client.NewLockID()
		held, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)
		inbox := nats.NewInbox()
		sub, _ := nc.SubscribeSync(inbox)
		for round := 0; round < 5; round++ {
			for i := 0; i < 8; i++ {
				nc.PublishRequest("lock.acquire."+key, inbox, []byte(fmt.Sprintf(`{"wait_ms":20000,"ttl_ms":60000,"owner":"o%d"}`, i)))
			}
			prev := held["lock_id"].(string)
			for i := 0; i < 8; i++ {
				if r, _, _ := raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, prev)); r["released"] != true {
					t.Fatalf("release = %v", r)
				}
				m, err := sub.NextMsg(5 * time.Second)
				if err != nil {
					t.Fatal(err)
				}
				var got api.AcquireResponse
				json.Unmarshal(m.Data, &got)
				if !got.Acquired || got.Owner != fmt.Sprintf("o%d", i) {
					t.Fatalf("round %d: grant %d went to %+v, want o%d", round, i, got, i)
				}
				prev = got.LockID
			}
			held = map[string]any{"lock_id": prev}
		}
	})
}

// TestRedisExpiredEventWithoutWaiters: with Redis (no store watcher), the
// instance that granted a lease publishes its expiry even when nobody
// waits, with the lease's token; a released lease gets no expired event.
func TestRedisExpiredEventWithoutWaiters(t *testing.T) {
	srv := testsrv.NATS(t, "")
	startInstance(t, srv.ClientURL(), redisBackend().newStore(t, srv.ClientURL()), service.Config{})
	nc := testsrv.Connect(t, srv)
	key := "expev." + client.NewLockID()
	events, _ := nc.SubscribeSync("lock.expired.>")
	got, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":1000}`)
	rel, _, _ := raw(t, nc, "lock.acquire."+key+".rel", `{"ttl_ms":1000}`)
	raw(t, nc, "lock.release."+key+".rel", fmt.Sprintf(`{"lock_id":%q}`, rel["lock_id"]))
	m, err := events.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no expired event: %v", err)
	}
	var ev api.Event
	json.Unmarshal(m.Data, &ev)
	if m.Subject != "lock.expired."+key || ev.Token != uint64(got["token"].(float64)) {
		t.Fatalf("expired event %s %s, want %s with token %v", m.Subject, m.Data, key, got["token"])
	}
	if m, err := events.NextMsg(1500 * time.Millisecond); err == nil {
		t.Fatalf("second expired event %s %s", m.Subject, m.Data)
	}
}
