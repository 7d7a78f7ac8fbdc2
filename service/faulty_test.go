package service_test

import (
	"context"
	"encoding/json"

	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// faultyStore wraps a real store so a test can hold a call for a lock id at
// a gate, or fail it before it reaches the store, and so time a request
// against an operation in flight.
type faultyStore struct {
	store.Store
	mu      sync.Mutex
	gates   map[string]chan struct{} // lock id -> closed to let its next call through
	entered chan string              // lock ids whose call reached a gate
	fails   map[string]error         // lock id -> error for its next Acquire
}

// faultyTransferStore adds the hand-over of a store that has one.
type faultyTransferStore struct{ *faultyStore }

func newFaultyStore(st store.Store, transfer bool) (*faultyStore, store.Store) {
	f := &faultyStore{Store: st, gates: map[string]chan struct{}{}, entered: make(chan string, 16), fails: map[string]error{}}
	if _, ok := st.(store.Transferrer); ok && transfer {
		return f, faultyTransferStore{f}
	}
	return f, f
}

// gate holds the next call for lockID until the returned func is called
// (at the latest when the test ends, so no store call stays blocked).
func (f *faultyStore) gate(t *testing.T, lockID string) (open func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	g := make(chan struct{})
	f.gates[lockID] = g
	var once sync.Once
	open = func() { once.Do(func() { close(g) }) }
	t.Cleanup(open)
	return open
}

// awaitGated waits until a call has reached a gate.
func (f *faultyStore) awaitGated(t *testing.T, what string) {
	t.Helper()
	select {
	case <-f.entered:
	case <-time.After(10 * time.Second):
		t.Fatal(what)
	}
}

func (f *faultyStore) failNext(lockID string, err error) {
	f.mu.Lock()
	f.fails[lockID] = err
	f.mu.Unlock()
}

// pass applies the gate and the failure set for lockID, once each.
func (f *faultyStore) pass(ctx context.Context, lockID string) error {
	f.mu.Lock()
	g := f.gates[lockID]
	delete(f.gates, lockID)
	err := f.fails[lockID]
	delete(f.fails, lockID)
	f.mu.Unlock()
	if g != nil {
		f.entered <- lockID
		select {
		case <-g:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (f *faultyStore) Acquire(ctx context.Context, key, lockID string, opts store.AcquireOptions) (store.Grant, error) {
	if err := f.pass(ctx, lockID); err != nil {
		return store.Grant{}, err
	}
	return f.Store.Acquire(ctx, key, lockID, opts)
}

func (f faultyTransferStore) Transfer(ctx context.Context, key, fromID string, u store.Update, toID string, opts store.AcquireOptions) (store.Grant, error) {
	if err := f.pass(ctx, toID); err != nil {
		return store.Grant{}, err
	}
	return f.Store.(store.Transferrer).Transfer(ctx, key, fromID, u, toID, opts)
}

func nextAnswer(t *testing.T, sub *nats.Subscription, what string) (api.AcquireResponse, string) {
	t.Helper()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("%s: no answer: %v", what, err)
	}
	var got api.AcquireResponse
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		return got, code
	}
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatalf("%s: %q: %v", what, m.Data, err)
	}
	return got, ""
}

// TestSupersededGrantGoesToRetry: a parked acquire is being handed the lock
// (the store call is in flight) when the client, having lost the reply,
// retries with the same lock id. The grant must go to the retry at once, not
// be dropped while the retry waits for a wake-up that never comes.
func TestSupersededGrantGoesToRetry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		f, st := newFaultyStore(b.newStore(t, srv.ClientURL()), true)
		svc := startInstance(t, srv.ClientURL(), st, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "superseded." + client.NewLockID()
		held, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)

		id := client.NewLockID()
		first, _ := nc.SubscribeSync(nats.NewInbox())
		retry, _ := nc.SubscribeSync(nats.NewInbox())
		body := fmt.Sprintf(`{"wait_ms":20000,"lock_id":%q}`, id)
		nc.PublishRequest("lock.acquire."+key, first.Subject, []byte(body))
		waitParked(t, svc, 1)

		open := f.gate(t, id)
		rel, _ := nc.SubscribeSync(nats.NewInbox())
		nc.PublishRequest("lock.release."+key, rel.Subject, []byte(fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"])))
		// The hand-over to id is in flight.
		f.awaitGated(t, "the release did not hand the lock to the parked request")

		nc.PublishRequest("lock.acquire."+key, retry.Subject, []byte(body))
		if got, code := nextAnswer(t, first, "superseded request"); code != "" || got.Acquired {
			t.Fatalf("superseded request answered %+v code %q, want not acquired", got, code)
		}
		waitParked(t, svc, 1) // the retry, behind the hand-over in flight
		open()

		got, code := nextAnswer(t, retry, "retry")
		if code != "" || !got.Acquired || got.LockID != id {
			t.Fatalf("retry answered %+v code %q, want the grant for %s", got, code, id)
		}
		info, _, _ := raw(t, nc, "lock.get."+key, `{}`)
		if info["locked"] != true || uint64(info["token"].(float64)) != got.Token {
			t.Fatalf("get = %v, want locked with the retry's token %d", info, got.Token)
		}
		if r, _, _ := raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, id)); r["released"] != true {
			t.Fatalf("release by the retry's lock id = %v", r)
		}
	})
}

// TestSupersededGrantGoesToRetryWhenDriven: the same as
// TestSupersededGrantGoesToRetry on a store without hand-over, where a
// release wakes the key's driver and the driver's acquire is in flight when
// the retry arrives. A second parked request keeps the retry parked (not
// racing for the key itself), so the grant must be adopted, ahead of it.
func TestSupersededGrantGoesToRetryWhenDriven(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		f, st := newFaultyStore(b.newStore(t, srv.ClientURL()), false)
		svc := startInstance(t, srv.ClientURL(), st, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "superseded.driven." + client.NewLockID()
		held, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)

		id := client.NewLockID()
		first, _ := nc.SubscribeSync(nats.NewInbox())
		other, _ := nc.SubscribeSync(nats.NewInbox())
		retry, _ := nc.SubscribeSync(nats.NewInbox())
		body := fmt.Sprintf(`{"wait_ms":20000,"lock_id":%q}`, id)
		nc.PublishRequest("lock.acquire."+key, first.Subject, []byte(body))
		waitParked(t, svc, 1)
		nc.PublishRequest("lock.acquire."+key, other.Subject, []byte(`{"wait_ms":20000,"owner":"other"}`))
		waitParked(t, svc, 2)

		open := f.gate(t, id)
		if r, _, _ := raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"])); r["released"] != true {
			t.Fatalf("release = %v", r)
		}
		// The driver's acquire for id is in flight.
		f.awaitGated(t, "the release did not wake the driver for the parked request")
		nc.PublishRequest("lock.acquire."+key, retry.Subject, []byte(body))
		if got, code := nextAnswer(t, first, "superseded request"); code != "" || got.Acquired {
			t.Fatalf("superseded request answered %+v code %q, want not acquired", got, code)
		}
		waitParked(t, svc, 2) // other, then the retry
		open()

		got, code := nextAnswer(t, retry, "retry")
		if code != "" || !got.Acquired || got.LockID != id {
			t.Fatalf("retry answered %+v code %q, want the grant for %s", got, code, id)
		}
		info, _, _ := raw(t, nc, "lock.get."+key, `{}`)
		if info["locked"] != true || uint64(info["token"].(float64)) != got.Token {
			t.Fatalf("get = %v, want locked with the retry's token %d", info, got.Token)
		}
	})
}

// TestStoreErrorKeepsQueueMoving: when the store fails the attempt for the
// first parked request, that request gets the error and the next one is
// tried at once (the key may well be free), not left parked until its wait
// runs out.
func TestStoreErrorKeepsQueueMoving(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		f, st := newFaultyStore(b.newStore(t, srv.ClientURL()), false)
		svc := startInstance(t, srv.ClientURL(), st, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "storeerr." + client.NewLockID()
		held, _, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":60000}`)

		first, second := client.NewLockID(), client.NewLockID()
		a, _ := nc.SubscribeSync(nats.NewInbox())
		bsub, _ := nc.SubscribeSync(nats.NewInbox())
		nc.PublishRequest("lock.acquire."+key, a.Subject, []byte(fmt.Sprintf(`{"wait_ms":20000,"lock_id":%q}`, first)))
		waitParked(t, svc, 1)
		nc.PublishRequest("lock.acquire."+key, bsub.Subject, []byte(fmt.Sprintf(`{"wait_ms":20000,"lock_id":%q}`, second)))
		waitParked(t, svc, 2)

		f.failNext(first, fmt.Errorf("%w: injected", store.ErrUnavailable))
		if r, _, _ := raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"])); r["released"] != true {
			t.Fatalf("release = %v", r)
		}
		if _, code := nextAnswer(t, a, "first waiter"); code != "503" {
			t.Fatalf("first waiter answered code %q, want 503 for the store error", code)
		}
		got, code := nextAnswer(t, bsub, "second waiter")
		if code != "" || !got.Acquired || got.LockID != second {
			t.Fatalf("second waiter answered %+v code %q, want the grant", got, code)
		}
	})
}
