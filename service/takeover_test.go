package service_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

// TestExpiryTakenOverIsAnnounced: a request parked behind a lease is
// granted at the lease's end, usually before nats-server's expiry scan has
// removed the lease message; the expired event must still be published
// (JetStream's watchers report a lease replaced after its end as its
// expiry).
func TestExpiryTakenOverIsAnnounced(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Parallel()
		srv, _ := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		events, err := nc.SubscribeSync("lock.expired.takeover")
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		a, code, msg := raw(t, nc, "lock.acquire.takeover", `{"ttl_ms":1000}`)
		if code != 0 || a["acquired"] != true {
			t.Fatalf("acquire = %v %d %q", a, code, msg)
		}
		w := ask(t, srv.ClientURL(), "lock.acquire.takeover", `{"ttl_ms":30000,"wait_ms":15000}`)
		if x := await(t, w, "parked acquire"); x.code != 0 || x.body["acquired"] != true {
			t.Fatalf("parked acquire = %v %d %q", x.body, x.code, x.msg)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			m, err := events.NextMsg(time.Until(deadline))
			if err != nil {
				t.Fatalf("no expired event for token %v within 5s of the take-over: %v", a["token"], err)
			}
			var ev struct {
				Token uint64 `json:"token"`
			}
			if json.Unmarshal(m.Data, &ev) == nil && float64(ev.Token) == a["token"].(float64) {
				return
			}
		}
	})
}
