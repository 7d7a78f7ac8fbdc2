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
	"github.com/lockservice/lockservice/store"
)

// notifyingCountingStore counts Acquire calls and keeps the store's
// Notifier (countingStore hides it, so TestOneAttemptPerWake never sees
// the store's own events), but not Transferrer (so a release is a plain
// release followed by a wake-up, as on an instance where nobody waits
// when the release is handled).
type notifyingCountingStore struct{ *countingStore }

func (n notifyingCountingStore) Notify(fn func(store.Event)) {
	n.countingStore.Store.(store.Notifier).Notify(fn)
}

// TestOneReleaseOneAttempt: TestOneAttemptPerWake with the store's
// own events wired, as in production (jsstore implements Notifier). One
// release with 20 parked acquirers must cost one store attempt on the
// instance. Since f597c89 onStoreEvent also wakes on the store's Released
// event, and the instance's own released() has already woken the key: the
// second wake-up runs a second Acquire (for the next in line, which can
// only fail), so every release costs 2 attempts per instance that has
// requests parked.
func TestOneReleaseOneAttempt(t *testing.T) {
	srv := testsrv.NATS(t, "")
	cs := &countingStore{Store: jetstreamBackend().newStore(t, srv.ClientURL())}
	st := notifyingCountingStore{cs}
	svc := startInstance(t, srv.ClientURL(), st, service.Config{})
	nc := testsrv.Connect(t, srv)
	key := "wake." + client.NewLockID()
	held, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)
	inbox := nats.NewInbox()
	replies, _ := nc.SubscribeSync(inbox)
	const waiters = 20
	for i := 0; i < waiters; i++ {
		body := fmt.Sprintf(`{"wait_ms":30000,"owner":"w%02d"}`, i)
		if err := nc.PublishRequest("lock.acquire."+key, inbox, []byte(body)); err != nil {
			t.Fatal(err)
		}
		waitParked(t, svc, i+1)
	}
	before := cs.count()
	raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"]))
	m, err := replies.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got api.AcquireResponse
	json.Unmarshal(m.Data, &got)
	if !got.Acquired || got.Owner != "w00" {
		t.Errorf("first answer after the release = %s, want w00 granted", m.Data)
	}
	time.Sleep(time.Second) // let every wake-up of this one release run
	if n := cs.count() - before; n != 1 {
		t.Errorf("%d store attempts for one release with %d waiters on one instance, want 1", n, waiters)
	}
}
