package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
	"github.com/lockservice/lockservice/store/storetest"
)

// countingStore counts the store operations the service makes.
type countingStore struct {
	*jsstore.Store
	acquires, gets, transfers, releases atomic.Int64
}

func (c *countingStore) Acquire(ctx context.Context, key, id string, o store.AcquireOptions) (store.Grant, error) {
	c.acquires.Add(1)
	return c.Store.Acquire(ctx, key, id, o)
}

func (c *countingStore) Get(ctx context.Context, key string) (store.Info, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key)
}

func (c *countingStore) Release(ctx context.Context, key, id string, u store.Update) error {
	c.releases.Add(1)
	return c.Store.Release(ctx, key, id, u)
}

func (c *countingStore) Transfer(ctx context.Context, key, from string, u store.Update, to string, o store.AcquireOptions) (store.Grant, error) {
	c.transfers.Add(1)
	return c.Store.Transfer(ctx, key, from, u, to, o)
}

type parkedResult struct {
	key      string
	acquired bool
	code     string
	at       time.Time
	err      error
}

// parkAcquire sends a blocking acquire and reports its answer on out.
func parkAcquire(cl *nats.Conn, key string, waitMs int, out chan<- parkedResult) {
	body := fmt.Sprintf(`{"ttl_ms":60000,"wait_ms":%d}`, waitMs)
	m, err := cl.Request("lock.acquire."+key, []byte(body), time.Duration(waitMs)*time.Millisecond+20*time.Second)
	r := parkedResult{key: key, at: time.Now(), err: err}
	if err == nil {
		r.code = m.Header.Get(micro.ErrorCodeHeader)
		var b map[string]any
		_ = json.Unmarshal(m.Data, &b)
		r.acquired = b["acquired"] == true
	}
	out <- r
}

// TestParkedAfterNATSRestart: a real nats-server (file store) is
// killed with kill -9 while 2000 keys are held (long leases) and requests
// are parked in the service on other keys: some whose leases end while the
// server is down, some released after it is back, some on long-held keys
// (they must time out). The service's API runs on another NATS server, so
// the parked requests' clients are not disconnected.
func TestParkedAfterNATSRestart(t *testing.T) {
	needBinaries(t)
	procs, addrs := startNATS(t, 1)
	ctx := t.Context()
	nc, err := nats.Connect(natsURL(addrs), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jsstore.New(ctx, nc, jsstore.Config{Bucket: "r5"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { js.Close() })
	st := &countingStore{Store: js}

	api := testsrv.NATS(t, "")
	svcNC := testsrv.Connect(t, api)
	svc, err := service.New(svcNC, st, service.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	cl := testsrv.Connect(t, api)

	const held, short, rel, long = 2000, 50, 50, 20
	heldIDs := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	take := func(key string, ttl time.Duration) {
		defer wg.Done()
		sem <- struct{}{}
		defer func() { <-sem }()
		id := storetest.NewLockID()
		if _, err := js.Acquire(ctx, key, id, store.AcquireOptions{TTL: ttl}); err != nil {
			t.Error(key, err)
			return
		}
		mu.Lock()
		heldIDs[key] = id
		mu.Unlock()
	}
	for i := 0; i < held; i++ {
		wg.Add(1)
		go take(fmt.Sprintf("held.%d", i), 120*time.Second)
	}
	for i := 0; i < short; i++ {
		wg.Add(1)
		go take(fmt.Sprintf("short.%d", i), 4*time.Second)
	}
	for i := 0; i < rel; i++ {
		wg.Add(1)
		go take(fmt.Sprintf("rel.%d", i), 120*time.Second)
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	shortAt := time.Now() // short leases end 4-5 s after this

	res := make(chan parkedResult, short+rel+long)
	for i := 0; i < short; i++ {
		go parkAcquire(cl, fmt.Sprintf("short.%d", i), 30000, res)
	}
	for i := 0; i < rel; i++ {
		go parkAcquire(cl, fmt.Sprintf("rel.%d", i), 30000, res)
	}
	for i := 0; i < long; i++ {
		go parkAcquire(cl, fmt.Sprintf("held.%d", i), 12000, res)
	}
	parkedAt := time.Now()
	for svc.Stats().ParkedWaiters != short+rel+long {
		if time.Since(parkedAt) > 5*time.Second {
			t.Fatalf("not all parked: %+v", svc.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := st.acquires.Load() + st.gets.Load()

	procs[0].Kill()
	killedAt := time.Now()
	time.Sleep(6*time.Second - time.Since(shortAt)) // the short leases end while the server is down
	procs[0].Restart()
	restartedAt := time.Now()
	t.Logf("killed %v, restarted after %v", killedAt.Sub(shortAt).Round(time.Millisecond), restartedAt.Sub(killedAt).Round(time.Millisecond))
	for !nc.IsConnected() {
		time.Sleep(10 * time.Millisecond)
	}
	reconnectedAt := time.Now()
	// Release the rel.* keys through the store (as another instance would).
	time.Sleep(500 * time.Millisecond)
	relAt := time.Now()
	for i := 0; i < rel; i++ {
		key := fmt.Sprintf("rel.%d", i)
		var err error
		for try := 0; try < 20; try++ {
			c, cancel := context.WithTimeout(ctx, 2*time.Second)
			err = js.Release(c, key, heldIDs[key], store.Update{})
			cancel()
			if err == nil || errors.Is(err, store.ErrNotHeld) {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Errorf("release %s after the restart: %v", key, err)
		}
	}

	got := map[string]parkedResult{}
	timeout := time.After(40 * time.Second)
	for len(got) < short+rel+long {
		select {
		case r := <-res:
			got[r.key] = r
		case <-timeout:
			t.Fatalf("only %d of %d parked requests answered", len(got), short+rel+long)
		}
	}
	var lates []string
	var shortT, relT []time.Duration
	for k, r := range got {
		switch {
		case r.err != nil:
			t.Errorf("%s: %v", k, r.err)
		case k[:5] == "short":
			if !r.acquired {
				t.Errorf("%s: not acquired (code %q) though its lease ended while the server was down", k, r.code)
			}
			shortT = append(shortT, r.at.Sub(reconnectedAt))
		case k[:3] == "rel":
			if !r.acquired {
				t.Errorf("%s: not acquired (code %q) though released after the restart", k, r.code)
			}
			relT = append(relT, r.at.Sub(relAt))
		default:
			if r.acquired {
				t.Errorf("%s: acquired though its 120 s lease is live", k)
			}
			if d := r.at.Sub(parkedAt); d > 14*time.Second {
				lates = append(lates, fmt.Sprintf("%s %v", k, d))
			}
		}
	}
	sort.Slice(shortT, func(i, j int) bool { return shortT[i] < shortT[j] })
	sort.Slice(relT, func(i, j int) bool { return relT[i] < relT[j] })
	if len(shortT) > 0 {
		t.Logf("short.* granted after reconnect: min %v max %v", shortT[0].Round(time.Millisecond), shortT[len(shortT)-1].Round(time.Millisecond))
		if shortT[len(shortT)-1] > 5*time.Second {
			t.Errorf("a parked acquire on a key whose lease ended during the outage was granted %v after reconnect", shortT[len(shortT)-1].Round(time.Millisecond))
		}
	}
	if len(relT) > 0 {
		t.Logf("rel.* granted after their release: min %v max %v", relT[0].Round(time.Millisecond), relT[len(relT)-1].Round(time.Millisecond))
		if relT[len(relT)-1] > 3*time.Second {
			t.Errorf("a parked acquire was granted %v after its key's release", relT[len(relT)-1].Round(time.Millisecond))
		}
	}
	if len(lates) > 0 {
		t.Errorf("timed-out requests answered late: %v", lates)
	}
	attempts := st.acquires.Load() + st.gets.Load() - before
	t.Logf("store attempts by the service since the kill: %d (acquires %d gets %d transfers %d), stats %+v, reaped %d",
		attempts, st.acquires.Load(), st.gets.Load(), st.transfers.Load(), svc.Stats(), js.Stats().Reaped)
	if attempts > 3*(short+rel+long) {
		t.Errorf("%d store attempts for %d parked requests", attempts, short+rel+long)
	}
	// Every held key is still held by its holder.
	for i := 0; i < held; i++ {
		key := fmt.Sprintf("held.%d", i)
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.Acquire(c, key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Second})
		cancel()
		var le *store.LockedError
		if !errors.As(err, &le) {
			t.Fatalf("%s: acquire by another id after the restart: %v (want locked)", key, err)
		}
	}
}
