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
	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// TestForgedEventsAreOnlyWakeUps: released, expired and forced events
// published by anyone (here a plain client, while the key is held) are at
// most a wake-up: a parked acquirer is not let in, every answer about the
// key stays what the store says, and the parked acquirer still gets the
// lock when the holder's lease really ends. On Redis the service wakes on
// released and expired events (each forged one costs a store attempt,
// awaited at the gate); on JetStream it ignores them. A forged released
// event marked handed off must not make a Redis instance forget the end of
// the holder's lease: its waiters would sit out their wait_ms (20 s here)
// instead of being granted when the lease ends (3 s).
func TestForgedEventsAreOnlyWakeUps(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		st, gate := storegate.New(t, b.newStore(t, srv.ClientURL()))
		svc := startInstance(t, srv.ClientURL(), st, service.Config{})
		_, wakes := st.(store.Notifier)
		wakes = !wakes // stores without Notifier wake on events
		nc := testsrv.Connect(t, srv)
		forger := testsrv.Connect(t, srv)
		key := "forged." + client.NewLockID()

		got, code, msg := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000,"owner":"holder"}`)
		if code != 0 || got["acquired"] != true {
			t.Fatalf("acquire = %v %d %s", got, code, msg)
		}
		holder, token := got["lock_id"].(string), got["token"].(float64)
		waiter := client.NewLockID()
		sub, _ := nc.SubscribeSync(nats.NewInbox())
		nc.PublishRequest("lock.acquire."+key, sub.Subject, fmt.Appendf(nil, `{"lock_id":%q,"wait_ms":20000,"ttl_ms":60000}`, waiter))
		waitParked(t, svc, 1)

		held := func(what string) {
			t.Helper()
			got, _, _ := raw(t, nc, "lock.get."+key, ``)
			if got["locked"] != true || got["token"] != token || got["owner"] != "holder" {
				t.Fatalf("after %s: get = %v, want locked by the holder (token %v)", what, got, token)
			}
			got, _, _ = raw(t, nc, "lock.acquire."+key, fmt.Sprintf(`{"lock_id":%q}`, client.NewLockID()))
			if got["acquired"] != false || got["token"] != token {
				t.Fatalf("after %s: a try-acquire = %v, want acquired:false naming token %v", what, got, token)
			}
			if got, code, msg := raw(t, nc, "lock.wait."+key, ``); code != 408 {
				t.Fatalf("after %s: wait = %v %d %s, want 408 (locked)", what, got, code, msg)
			}
			if got, code, msg := raw(t, nc, "lock.write."+key, fmt.Sprintf(`{"lock_id":%q,"value":%q}`, holder, what)); code != 0 || got["written"] != true {
				t.Fatalf("after %s: the holder's write = %v %d %s, want written", what, got, code, msg)
			}
			if m, err := sub.NextMsg(0); err == nil {
				t.Fatalf("after %s: the parked acquirer was answered %q %v", what, m.Data, m.Header)
			}
			if n := svc.Stats().ParkedWaiters; n != 1 {
				t.Fatalf("after %s: %d requests parked, want 1", what, n)
			}
		}
		forge := func(what, kind string, hdr nats.Header, body any) {
			t.Helper()
			data, _ := json.Marshal(body)
			var attempt *storegate.Held
			if wakes && kind != api.EventForced && hdr.Get(api.HandedOffHeader) == "" {
				attempt = gate.Hold(storegate.Acquire, waiter)
			}
			if hdr == nil {
				hdr = nats.Header{}
			}
			hdr.Set(api.ContentTypeHeader, api.JSONContentType)
			if err := forger.PublishMsg(&nats.Msg{Subject: api.Subject(api.DefaultPrefix, kind, key), Data: data, Header: hdr}); err != nil {
				t.Fatal(err)
			}
			if attempt != nil {
				// The wake-up's store attempt for the waiter: it finds the key
				// held and the waiter stays parked.
				attempt.WaitEntered(t, 10*time.Second)
				attempt.Open()
				<-attempt.Done()
				waitFor(t, "the woken attempt is settled", func() bool { return svc.Stats().ParkedWaiters == 1 })
			}
			held(what)
		}
		other := func() nats.Header { return nats.Header{api.InstanceHeader: {"another-instance"}} }
		forge("a forged released event", api.EventReleased, nil, api.Event{Key: key})
		forge("a forged released event naming an instance", api.EventReleased, other(), api.Event{Key: key})
		forge("a forged expired event", api.EventExpired, other(), api.Event{Key: key, Token: uint64(token)})
		forge("a forged forced event", api.EventForced, other(), api.ForcedEvent{Key: key, Token: uint64(token), Reason: "forged", Instance: "another-instance"})

		// The holder's lease now ends in 3 s; a forged hand-off follows.
		if got, code, msg := raw(t, nc, "lock.refresh."+key, fmt.Sprintf(`{"lock_id":%q,"ttl_ms":3000}`, holder)); code != 0 || got["token"] != token {
			t.Fatalf("the holder's refresh = %v %d %s", got, code, msg)
		}
		handedOff := other()
		handedOff.Set(api.HandedOffHeader, "true")
		forge("a forged hand-off", api.EventReleased, handedOff, api.Event{Key: key, HandedOff: true})

		m, err := sub.NextMsg(25 * time.Second)
		if err != nil {
			t.Fatalf("the parked acquirer got no answer: %v", err)
		}
		var ar api.AcquireResponse
		if err := json.Unmarshal(m.Data, &ar); err != nil || !ar.Acquired || ar.Token <= uint64(token) || !strings.Contains(string(ar.Value), "a forged hand-off") {
			t.Fatalf("the parked acquirer was answered %q %v, want acquired with a token above %v and the holder's last state, once the lease ended", m.Data, m.Header, token)
		}
	})
}
