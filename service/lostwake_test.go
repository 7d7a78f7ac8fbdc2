package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// ackLostStore is the real JetStream store (Notifier and Transferrer kept)
// whose next Release is applied but answered with an error, as when the
// JetStream ack is lost or the store timeout fires after the server applied
// the publish (leader election, slow disk).
type ackLostStore struct {
	*jsstore.Store
	lose atomic.Bool
}

func (s *ackLostStore) Release(ctx context.Context, key, lockID string, u store.Update) error {
	err := s.Store.Release(ctx, key, lockID, u)
	if err == nil && s.lose.CompareAndSwap(true, false) {
		return fmt.Errorf("%w: injected: ack lost after the release was applied", store.ErrUnavailable)
	}
	return err
}

// TestReleaseWithUnknownOutcomeWakesOtherInstances: a release whose store
// call applied but reported an error publishes no release event; the
// request parked on another instance is woken by its store's watcher,
// which saw the release, not left waiting out its wait_ms on a free key.
func TestReleaseWithUnknownOutcomeWakesOtherInstances(t *testing.T) {
	_, urls := testsrv.NATSUsers(t, map[string][]string{"a": {"lock.acquire.>"}, "b": {"lock.release.>"}})
	quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	newJS := func() *jsstore.Store {
		s, err := jsstore.New(t.Context(), testsrv.ConnectURL(t, urls["full"]), jsstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	lossy := &ackLostStore{Store: newJS()}
	start := func(user string, st store.Store) *service.Service {
		svc, err := service.New(testsrv.ConnectURL(t, urls[user], quiet), st, service.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc.Stop() })
		return svc
	}
	start("a", lossy) // serves releases only
	bi := start("b", newJS())
	nc := testsrv.ConnectURL(t, urls["full"])
	key := "lostwake." + client.NewLockID()
	held, code, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)
	if code != 0 || held["acquired"] != true {
		t.Fatalf("acquire = %v %d", held, code)
	}
	inbox := nats.NewInbox()
	replies, _ := nc.SubscribeSync(inbox)
	nc.PublishRequest("lock.acquire."+key, inbox, []byte(`{"wait_ms":4000}`))
	waitParked(t, bi, 1)

	lossy.lose.Store(true)
	_, code, msg := raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"]))
	t.Logf("release answered %d %q", code, msg)
	released := time.Now()
	info, _, _ := raw(t, nc, "lock.get."+key, ``)
	t.Logf("get right after: locked=%v", info["locked"])

	m, err := replies.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got api.AcquireResponse
	json.Unmarshal(m.Data, &got)
	if !got.Acquired || time.Since(released) > time.Second {
		t.Fatalf("waiter parked on B answered %s after %v; the key was free since the release (get said locked=%v)",
			m.Data, time.Since(released).Round(time.Millisecond), info["locked"])
	}
}
