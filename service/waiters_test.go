package service_test

import (
	"context"
	"encoding/json"
	"errors"
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

// TestCrossInstanceWakeup parks a waiter on instance B and releases through
// instance A: B must be woken by A's release event. NATS permissions steer
// the requests: A may not subscribe to acquires, B not to releases. The
// lease is long: without the wake-up the waiter would sit until the test's
// deadline.
func TestCrossInstanceWakeup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		_, urls := testsrv.NATSUsers(t, map[string][]string{"a": {"lock.acquire.>"}, "b": {"lock.release.>"}})
		quiet := nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
		newInstance := func(user string) *service.Service {
			nc := testsrv.ConnectURL(t, urls[user], quiet)
			svc, err := service.New(nc, b.newStore(t, urls["full"]), service.Config{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { svc.Stop() })
			return svc
		}
		a, bi := newInstance("a"), newInstance("b")
		ca, err := client.New(testsrv.ConnectURL(t, urls["full"]))
		if err != nil {
			t.Fatal(err)
		}
		key := "cross." + client.NewLockID()

		l, err := ca.Acquire(t.Context(), key, client.WithTTL(5*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		// The waiter asks B directly (raw), so a missed wake-up shows as
		// "acquired":false when its wait runs out, not as a late retry.
		nc := testsrv.ConnectURL(t, urls["full"])
		inbox := nats.NewInbox()
		replies, err := nc.SubscribeSync(inbox)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.PublishRequest("lock.acquire."+key, inbox, []byte(`{"wait_ms":20000}`)); err != nil {
			t.Fatal(err)
		}
		waitParked(t, bi, 1)
		if parked(t, a) != 0 {
			t.Fatalf("waiter parked on A, want B")
		}
		if err := l.ReleaseWith(t.Context(), []byte(`"from A"`)); err != nil {
			t.Fatal(err)
		}
		m, err := replies.NextMsg(30 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var got api.AcquireResponse
		if err := json.Unmarshal(m.Data, &got); err != nil {
			t.Fatal(err)
		}
		if !got.Acquired || string(got.Value) != `"from A"` || got.Token <= l.Token() {
			t.Errorf("waiter on B got %s, want acquired with value \"from A\" and a token > %d", m.Data, l.Token())
		}
	})
}

// parked reads an instance's parked waiters from its micro stats.
func parked(t testing.TB, s *service.Service) int {
	t.Helper()
	st := s.Stats()
	return st.ParkedWaiters
}

func waitParked(t testing.TB, s *service.Service, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for parked(t, s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters parked, want %d", parked(t, s), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestExpiryWakeup: a holder that never releases; a waiter is granted once
// the lease ends (never before) and an expired event is published.
func TestExpiryWakeup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, svcs := deployment(t, b, 2, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "expiry." + client.NewLockID()
		events, err := nc.SubscribeSync("lock.expired." + key)
		if err != nil {
			t.Fatal(err)
		}
		nc.Flush()
		c := newClient(t, srv)
		start := time.Now()
		dead, err := c.Acquire(t.Context(), key, client.WithTTL(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		l, err := newClient(t, srv).Acquire(ctx, key)
		if err != nil {
			t.Fatalf("waiter after the holder's lease ended: %v (parked: %d, %d)", err, parked(t, svcs[0]), parked(t, svcs[1]))
		}
		if since := time.Since(start); since < time.Second {
			t.Errorf("granted after %v, before the 1s lease ended", since)
		}
		if l.Token() <= dead.Token() {
			t.Errorf("token %d after expiry, want > %d", l.Token(), dead.Token())
		}
		m, err := events.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("no lock.expired event: %v", err)
		}
		var ev api.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Key != key || ev.Token != dead.Token() {
			t.Errorf("expired event = %s, want key %q token %d", m.Data, key, dead.Token())
		}
		if err := dead.ReleaseWith(t.Context(), []byte(`"stale"`)); !errors.Is(err, client.ErrNotHeld) {
			t.Errorf("release by expired holder = %v, want ErrNotHeld", err)
		}
		if info, _ := c.Get(t.Context(), key); info == nil || info.Value != nil {
			t.Errorf("stale write applied: %+v", info)
		}
	})
}

// TestLostReplyRetry: an acquire whose reply never arrives, retried with
// the same lock id, returns the same grant instead of a second lock.
func TestLostReplyRetry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, _ := deployment(t, b, 3, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "lost." + client.NewLockID()
		id := client.NewLockID()
		body := fmt.Sprintf(`{"lock_id":%q,"ttl_ms":60000}`, id)
		// Lost reply: nobody listens on the reply subject.
		if err := nc.PublishRequest("lock.acquire."+key, nats.NewInbox(), []byte(body)); err != nil {
			t.Fatal(err)
		}
		var first map[string]any
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, _, _ := raw(t, nc, "lock.get."+key, ``)
			if got["locked"] == true {
				first = got
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the lost acquire was never applied")
			}
			time.Sleep(5 * time.Millisecond)
		}
		for i := 0; i < 3; i++ {
			got, code, msg := raw(t, nc, "lock.acquire."+key, body)
			if code != 0 || got["acquired"] != true || got["token"] != first["token"] || got["lock_id"] != id {
				t.Errorf("retry %d = %v %d %s, want the same grant (token %v)", i, got, code, msg, first["token"])
			}
		}
		if got, _, _ := raw(t, nc, "lock.acquire."+key, ``); got["acquired"] != false {
			t.Errorf("another lock id acquired a held lock: %v", got)
		}
	})
}

// TestDeadlineNeverGrantsAfter: a waiter whose wait runs out is answered
// "not acquired" and is not granted the lock afterwards.
func TestDeadlineNeverGrantsAfter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, svcs := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		c := newClient(t, srv)
		key := "deadline." + client.NewLockID()
		l, err := c.Acquire(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		got, code, _ := raw(t, nc, "lock.acquire."+key, `{"wait_ms":200}`)
		if code != 0 || got["acquired"] != false {
			t.Fatalf("acquire with wait_ms 200 on a held key = %v %d, want acquired false", got, code)
		}
		if parked(t, svcs[0]) != 0 {
			t.Errorf("waiter still parked after its deadline")
		}
		if err := l.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		if info, _ := c.Get(t.Context(), key); info == nil || info.Locked {
			t.Errorf("key locked after the only holder released: %+v", info)
		}
	})
}

// TestCancel: a client that gives up waiting leaves no lock behind.
func TestCancel(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, svcs := deployment(t, b, 2, service.Config{})
		c := newClient(t, srv)
		key := "cancel." + client.NewLockID()
		l, err := c.Acquire(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, err := newClient(t, srv).Acquire(ctx, key, client.WithTTL(time.Minute))
			done <- err
		}()
		deadline := time.Now().Add(10 * time.Second)
		for parked(t, svcs[0])+parked(t, svcs[1]) == 0 {
			if time.Now().After(deadline) {
				t.Fatal("waiter never parked")
			}
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Acquire = %v, want context.Canceled", err)
		}
		deadline = time.Now().Add(10 * time.Second)
		for parked(t, svcs[0])+parked(t, svcs[1]) != 0 {
			if time.Now().After(deadline) {
				t.Fatal("cancelled waiter still parked")
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := l.Release(t.Context()); err != nil {
			t.Fatal(err)
		}
		if info, _ := c.Get(t.Context(), key); info == nil || info.Locked {
			t.Errorf("lock held after the waiter cancelled and the holder released: %+v", info)
		}
	})
}

func TestWaitersBounded(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, svcs := deployment(t, b, 1, service.Config{MaxWaiters: 2})
		nc := testsrv.Connect(t, srv)
		key := "bounded." + client.NewLockID()
		raw(t, nc, "lock.acquire."+key, `{}`)
		for i := 0; i < 2; i++ {
			if err := nc.PublishRequest("lock.wait."+key, nats.NewInbox(), []byte(`{"wait_ms":30000}`)); err != nil {
				t.Fatal(err)
			}
		}
		waitParked(t, svcs[0], 2)
		_, code, msg := raw(t, nc, "lock.acquire."+key, `{"wait_ms":30000}`)
		if code != 503 {
			t.Errorf("third parked request = code %d %q, want 503", code, msg)
		}
		// Try-acquire and other keys are still served.
		if got, code, _ := raw(t, nc, "lock.acquire.other."+client.NewLockID(), `{}`); code != 0 || got["acquired"] != true {
			t.Errorf("acquire of another key with waiters full = %v %d", got, code)
		}
	})
}

func TestShutdownAnswersWaiters(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, svcs := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "shutdown." + client.NewLockID()
		raw(t, nc, "lock.acquire."+key, `{}`)
		inbox := nats.NewInbox()
		sub, _ := nc.SubscribeSync(inbox)
		nc.PublishRequest("lock.acquire."+key, inbox, []byte(`{"wait_ms":60000}`))
		waitParked(t, svcs[0], 1)
		svcs[0].Stop()
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil || m.Header.Get(micro.ErrorCodeHeader) != "503" {
			t.Fatalf("parked waiter at shutdown got %v %v, want 503", m, err)
		}
		if _, err := nc.Request("lock.get."+key, nil, time.Second); !errors.Is(err, nats.ErrNoResponders) {
			t.Errorf("request after Stop = %v, want no responders", err)
		}
	})
}

// TestHandlerNeverBlocks: many parked waiters on one key do not delay
// requests on the same endpoint for other keys.
func TestHandlerNeverBlocks(t *testing.T) {
	srv, svcs := deployment(t, jetstreamBackend(), 1, service.Config{})
	nc := testsrv.Connect(t, srv)
	key := "busy." + client.NewLockID()
	raw(t, nc, "lock.acquire."+key, `{}`)
	for i := 0; i < 200; i++ {
		nc.PublishRequest("lock.acquire."+key, nats.NewInbox(), []byte(`{"wait_ms":60000}`))
	}
	waitParked(t, svcs[0], 200)
	got, code, _ := raw(t, nc, "lock.acquire.free."+client.NewLockID(), `{}`)
	if code != 0 || got["acquired"] != true {
		t.Errorf("acquire with 200 parked waiters = %v %d", got, code)
	}
}

func TestDiscovery(t *testing.T) {
	srv, svcs := deployment(t, jetstreamBackend(), 2, service.Config{Metadata: map[string]string{"store": "jetstream"}})
	nc := testsrv.Connect(t, srv)
	m, err := nc.Request("$SRV.INFO.lockservice."+svcs[0].ID(), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil {
		t.Fatal(err)
	}
	subjects := map[string]string{}
	for _, e := range info.Endpoints {
		subjects[e.Name] = e.Subject
		if e.Metadata["description"] == "" {
			t.Errorf("endpoint %s has no description metadata", e.Name)
		}
	}
	for _, op := range []string{"acquire", "release", "refresh", "write", "delete", "get", "wait", "cancel"} {
		if subjects[op] != "lock."+op+".>" {
			t.Errorf("endpoint %s subject = %q, want lock.%s.>", op, subjects[op], op)
		}
	}
	if info.Metadata["store"] != "jetstream" || info.Version != service.Version {
		t.Errorf("info metadata %v version %s", info.Metadata, info.Version)
	}
	// Stats carry the service's own counters, errors by code included.
	for range svcs {
		raw(t, nc, "lock.acquire.stats.k", `{"ttl_ms":-1}`)
	}
	m, err = nc.Request("$SRV.STATS.lockservice."+svcs[0].ID(), nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats micro.Stats
	if err := json.Unmarshal(m.Data, &stats); err != nil || len(stats.Endpoints) == 0 {
		t.Fatalf("stats: %v", err)
	}
	var data map[string]any
	if err := json.Unmarshal(stats.Endpoints[0].Data, &data); err != nil || data["parked_waiters"] == nil {
		t.Errorf("stats data = %s, want parked_waiters", stats.Endpoints[0].Data)
	}
	errs, _ := data["errors"].(map[string]any)
	if errs == nil || errs["400"] == nil {
		t.Errorf("stats data = %s, want errors by code", stats.Endpoints[0].Data)
	}
}

// TestErrorTable: every store error maps to a code that the client maps
// back to the matching sentinel.
func TestErrorTable(t *testing.T) {
	cases := []struct {
		err  error
		code int
		want error
	}{
		{store.ErrNotHeld, 409, client.ErrNotHeld},
		{fmt.Errorf("x: %w", store.ErrInvalid), 400, client.ErrBadRequest},
		{fmt.Errorf("x: %w", store.ErrUnavailable), 503, client.ErrUnavailable},
		{context.DeadlineExceeded, 503, client.ErrUnavailable},
		{errors.New("boom"), 500, client.ErrInternal},
	}
	for _, c := range cases {
		code := service.CodeFor(c.err)
		if code != c.code {
			t.Errorf("CodeFor(%v) = %d, want %d", c.err, code, c.code)
		}
		if ce := (&client.Error{Code: code}); !errors.Is(ce, c.want) {
			t.Errorf("client error for code %d does not match %v", code, c.want)
		}
	}
	if !errors.Is(&client.Error{Code: 408}, client.ErrTimeout) {
		t.Errorf("408 does not map to ErrTimeout")
	}
}

// countingStore counts Acquire calls on a real store.
type countingStore struct {
	store.Store
	mu       sync.Mutex
	acquires int
}

func (c *countingStore) Acquire(ctx context.Context, key, lockID string, opts store.AcquireOptions) (store.Grant, error) {
	c.mu.Lock()
	c.acquires++
	c.mu.Unlock()
	return c.Store.Acquire(ctx, key, lockID, opts)
}

func (c *countingStore) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.acquires
}

// TestOneAttemptPerWake: a release with 20 parked acquirers on one
// instance costs one store attempt, not one per waiter, and grants to the
// first in line.
func TestOneAttemptPerWake(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv := testsrv.NATS(t, "")
		cs := &countingStore{Store: b.newStore(t, srv.ClientURL())}
		svc := startInstance(t, srv.ClientURL(), cs, service.Config{})
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
			waitParked(t, svc, i+1) // park in a known order
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
			t.Errorf("first answer after the release = %s, want the first parked waiter (w00) granted", m.Data)
		}
		if n := cs.count() - before; n != 1 {
			t.Errorf("%d store attempts for one release with %d waiters, want 1", n, waiters)
		}
		if parked(t, svc) != waiters-1 {
			t.Errorf("%d still parked, want %d", parked(t, svc), waiters-1)
		}
	})
}

// TestHandOff: a release on the instance where requests are parked hands
// the lock straight to the first of them, in order, with the state the
// releaser wrote, and other instances are not woken for nothing.
func TestHandOff(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, svcs := deployment(t, b, 1, service.Config{})
		svc := svcs[0]
		nc := testsrv.Connect(t, srv)
		key := "handoff." + client.NewLockID()
		events, _ := nc.SubscribeSync("lock.released." + key)
		held, _, _ := raw(t, nc, "lock.acquire."+key, `{}`)
		inbox := nats.NewInbox()
		replies, _ := nc.SubscribeSync(inbox)
		const waiters = 5
		for i := 0; i < waiters; i++ {
			nc.PublishRequest("lock.acquire."+key, inbox, []byte(fmt.Sprintf(`{"wait_ms":30000,"owner":"w%d"}`, i)))
			waitParked(t, svc, i+1)
		}
		before := svc.Stats().Handoffs
		id, token := held["lock_id"].(string), uint64(held["token"].(float64))
		for i := 0; i < waiters; i++ {
			got, code, _ := raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q,"value":%d}`, id, i))
			if code != 0 || got["released"] != true {
				t.Fatalf("release %d = %v %d", i, got, code)
			}
			m, err := replies.NextMsg(10 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var g api.AcquireResponse
			json.Unmarshal(m.Data, &g)
			if !g.Acquired || g.Owner != fmt.Sprintf("w%d", i) || string(g.Value) != fmt.Sprint(i) || g.Token <= token {
				t.Fatalf("grant %d = %s, want w%d with value %d and a token > %d", i, m.Data, i, i, token)
			}
			id, token = g.LockID, g.Token
			ev, err := events.NextMsg(10 * time.Second)
			if err != nil || ev.Header.Get(api.HandedOffHeader) != "true" {
				t.Errorf("release event %v %v, want one marked handed off", ev, err)
			}
		}
		if n := svc.Stats().Handoffs - before; n != waiters {
			t.Errorf("%d hand-offs, want %d", n, waiters)
		}
		// The last holder releases with nobody waiting: a plain release.
		if got, _, _ := raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, id)); got["released"] != true {
			t.Errorf("final release = %v", got)
		}
		if ev, err := events.NextMsg(10 * time.Second); err != nil || ev.Header.Get(api.HandedOffHeader) != "" {
			t.Errorf("final release event %v %v, want a plain release", ev, err)
		}
	})
}

// TestGrantedHolderDies: requests parked behind a holder that this
// instance granted (here by hand-over) are woken when that holder's lease
// ends without a release.
func TestGrantedHolderDies(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, svcs := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "dies." + client.NewLockID()
		held, _, _ := raw(t, nc, "lock.acquire."+key, `{}`)
		inbox := nats.NewInbox()
		replies, _ := nc.SubscribeSync(inbox)
		nc.PublishRequest("lock.acquire."+key, inbox, []byte(`{"wait_ms":30000,"ttl_ms":1000,"owner":"dies"}`))
		waitParked(t, svcs[0], 1)
		nc.PublishRequest("lock.acquire."+key, inbox, []byte(`{"wait_ms":20000,"owner":"next"}`))
		waitParked(t, svcs[0], 2)
		raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, held["lock_id"]))
		for _, want := range []string{"dies", "next"} {
			m, err := replies.NextMsg(25 * time.Second)
			if err != nil {
				t.Fatalf("waiting for the grant to %s: %v", want, err)
			}
			var g api.AcquireResponse
			json.Unmarshal(m.Data, &g)
			if !g.Acquired || g.Owner != want {
				t.Fatalf("answer %s, want a grant to %s", m.Data, want)
			}
		}
	})
}
