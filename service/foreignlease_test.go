package service_test

import (
	"crypto/sha256"
	"encoding/base64"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

// foreignLease publishes, as a client with publish rights on the bucket
// could, a lease message on key's lease subject that lockservice did not
// write: a well-formed record, with the given Nats-TTL ("" for none).
func foreignLease(t *testing.T, nc *nats.Conn, key, ttl string) {
	t.Helper()
	h := sha256.Sum256([]byte("someone-else-entirely"))
	b, err := msgpack.Marshal(map[string]any{"h": h[:16], "l": int64(1000)})
	if err != nil {
		t.Fatal(err)
	}
	m := &nats.Msg{Subject: "$KV.lockservice.l." + key, Header: nats.Header{}}
	m.Header.Set("Lockservice-Lease", base64.RawStdEncoding.EncodeToString(b))
	if ttl != "" {
		m.Header.Set("Nats-TTL", ttl)
	}
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
}

// TestForeignOverlongLeaseWakesParked: docs/STORES.md ("Records
// written by someone else") says a lease message lockservice could not
// have written (no TTL, Nats-TTL never, a TTL beyond the longest lease, ...)
// "is logged and treated as a free key that the next acquire replaces".
// For a record without a TTL that holds: the watcher reports it as a
// release and the parked acquire takes the key at once. For a record whose
// TTL is beyond the bucket's marker TTL, 96b1f5d's watcher
// (applyLocked, st.overlong) marks the key held, reports nothing and only
// re-reads it in the background; the read finds it still foreign (get
// says unlocked, a try-acquire takes it) but reports nothing either. The
// parked acquire and wait are never woken: they run into their wait_ms
// (here 8 s), and in production stay parked for the whole wait_ms (up to
// 10 min) while the key is free. No warning is logged for it either.
// Passes on 354c7d6 (the parent of 96b1f5d): a regression of 96b1f5d.
func TestForeignOverlongLeaseWakesParked(t *testing.T) {
	for _, tc := range []struct{ name, ttl string }{
		{"no TTL", ""},
		{"TTL beyond the marker TTL", "1h"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testsrv.NATS(t, "")
			url := srv.ClientURL()
			startInstance(t, url, jetstreamBackend().newStore(t, url), service.Config{})
			cl := testsrv.ConnectURL(t, url)
			key := "foreign.k"
			got, code, msg := raw(t, cl, "lock.acquire."+key, `{"ttl_ms":60000}`)
			if code != 0 || got["acquired"] != true {
				t.Fatalf("acquire = %v %d %s", got, code, msg)
			}
			type res struct {
				m  *nats.Msg
				at time.Time
			}
			acq := make(chan res, 1)
			wt := make(chan res, 1)
			go func() {
				m, _ := cl.Request("lock.acquire."+key, []byte(`{"wait_ms":8000}`), 20*time.Second)
				acq <- res{m, time.Now()}
			}()
			go func() {
				m, _ := cl.Request("lock.wait."+key, []byte(`{"wait_ms":8000}`), 20*time.Second)
				wt <- res{m, time.Now()}
			}()
			time.Sleep(500 * time.Millisecond) // both parked

			foreignLease(t, cl, key, tc.ttl)
			at := time.Now()
			time.Sleep(200 * time.Millisecond)
			// Free by the store's rules: unlocked, or already taken by the
			// parked acquire (a token above the original grant's).
			info, _, _ := raw(t, cl, "lock.get."+key, ``)
			t.Logf("get 200 ms after the foreign record: %v", info)
			if info["locked"] == true && info["token"] == got["token"] {
				t.Fatalf("the original lease is still held after the foreign record: test premise broken")
			}
			for name, c := range map[string]chan res{"acquire": acq, "wait": wt} {
				r := <-c
				if r.m == nil {
					t.Fatalf("%s: no answer", name)
				}
				took := r.at.Sub(at).Round(time.Millisecond)
				t.Logf("parked %s answered %v after the foreign record: %s %s", name, took, r.m.Header, r.m.Data)
				if took > 3*time.Second {
					t.Errorf("parked %s answered only %v after the key became free (get: unlocked): %s %s", name, took, r.m.Header, r.m.Data)
				}
			}
		})
	}
}
