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

// TestAdminListAndForce: the admin plane lists the held locks under a
// prefix (paged, with the requests parked on the instance) and force-ends
// a lease whoever holds it: the holder's lock id is spent, a forced event
// records the token, the reason and the instance, the parked request is
// granted with a higher token.
func TestAdminListAndForce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		svc := startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), service.Config{})
		nc := testsrv.Connect(t, srv)
		prefix := "adm" + client.NewLockID()[:6] + "."
		held := map[string]map[string]any{}
		for i := 0; i < 5; i++ {
			key := fmt.Sprintf("%sk%d", prefix, i)
			r, _, _ := raw(t, nc, "lock.acquire."+key, fmt.Sprintf(`{"ttl_ms":60000,"owner":"o%d"}`, i))
			held[key] = r
		}
		raw(t, nc, "lock.acquire.other."+client.NewLockID(), `{"ttl_ms":60000}`)
		// released: not listed
		raw(t, nc, "lock.release."+prefix+"k4", fmt.Sprintf(`{"lock_id":%q}`, held[prefix+"k4"]["lock_id"]))
		parked, _ := nc.SubscribeSync(nats.NewInbox())
		nc.PublishRequest("lock.acquire."+prefix+"k0", parked.Subject, []byte(`{"wait_ms":20000,"ttl_ms":60000}`))
		waitParked(t, svc, 1)

		seen := map[string]api.HeldLock{}
		cursor := ""
		for page := 0; ; page++ {
			if page > 10 {
				t.Fatal("list does not end")
			}
			body, _ := json.Marshal(api.ListRequest{Prefix: prefix, Cursor: cursor, Limit: 2})
			m, err := nc.Request("lock.admin.list", body, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var resp api.ListResponse
			if err := json.Unmarshal(m.Data, &resp); err != nil {
				t.Fatalf("list answered %q %v", m.Data, m.Header)
			}
			for _, l := range resp.Locks {
				seen[l.Key] = l
			}
			if cursor = resp.Cursor; cursor == "" {
				break
			}
		}
		if len(seen) != 4 {
			t.Fatalf("listed %v, want k0..k3", seen)
		}
		k0 := seen[prefix+"k0"]
		if k0.Owner != "o0" || k0.Token != uint64(held[prefix+"k0"]["token"].(float64)) || k0.Parked != 1 || k0.TTLms != 60000 {
			t.Fatalf("k0 listed as %+v", k0)
		}

		events, _ := nc.SubscribeSync("lock.forced.>")
		r, code, msg := raw(t, nc, "lock.admin.force."+prefix+"k0", `{"reason":"stuck job"}`)
		if code != 0 || r["forced"] != true || uint64(r["token"].(float64)) != k0.Token {
			t.Fatalf("force = %v %d %s", r, code, msg)
		}
		ev, err := events.NextMsg(2 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var fe api.ForcedEvent
		json.Unmarshal(ev.Data, &fe)
		if fe.Key != prefix+"k0" || fe.Token != k0.Token || fe.Reason != "stuck job" || fe.Instance != svc.ID() || fe.Owner != "o0" {
			t.Fatalf("forced event %s", ev.Data)
		}
		m, err := parked.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("the parked request was not woken by the force: %v", err)
		}
		var got api.AcquireResponse
		json.Unmarshal(m.Data, &got)
		if !got.Acquired || got.Token <= k0.Token {
			t.Fatalf("parked request answered %s, want a grant with a token above %d", m.Data, k0.Token)
		}
		if _, code, _ := raw(t, nc, "lock.refresh."+prefix+"k0", fmt.Sprintf(`{"lock_id":%q}`, held[prefix+"k0"]["lock_id"])); code != 409 {
			t.Fatalf("refresh by the forced lock id answered %d, want 409", code)
		}
		if r, _, _ := raw(t, nc, "lock.admin.force."+prefix+"k4", `{}`); r["forced"] != false {
			t.Fatalf("force of a free key = %v, want forced:false", r)
		}
		if _, code, _ := raw(t, nc, "lock.admin.list", `{"limit":5000}`); code != 400 {
			t.Fatalf("list with limit 5000 answered %d, want 400", code)
		}
	})
}
