package jetstream

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

func TestListFilter(t *testing.T) {
	s := &Store{lockPfx: "$KV.b.l."}
	for _, c := range []struct{ prefix, want string }{
		{"", "$KV.b.l.>"},
		{"a", "$KV.b.l.>"},
		{"a.", "$KV.b.l.a.>"},
		{"a.b", "$KV.b.l.a.>"},
		{"a.bc.d", "$KV.b.l.a.bc.>"},
		{".a", "$KV.b.l.>"},
		{"a..b", "$KV.b.l.>"},
		{"a.*.b", "$KV.b.l.>"},
		{"a.>.b", "$KV.b.l.>"},
		{"a b.c", "$KV.b.l.>"},
	} {
		if got := s.listFilter(c.prefix); got != c.want {
			t.Errorf("listFilter(%q) = %q, want %q", c.prefix, got, c.want)
		}
	}
}

// TestListSkipsLeasesPastTheirEnd: a lease message still in the stream
// after its end by the server's clock (a recovering server brought it
// back, or the server's expiry pass has not run yet) is not listed, as it
// is not held for any other operation.
func TestListSkipsLeasesPastTheirEnd(t *testing.T) {
	srv := testsrv.NATS(t, "")
	s := newStore(t, srv.ClientURL())
	ctx := t.Context()
	acquire(t, s, "past.short") // 1 minute
	if _, err := s.Acquire(ctx, "past.long", storetest.NewLockID(), store.AcquireOptions{TTL: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	s.stop() // no reaping: the message of the ended lease stays
	s.clock.mu.Lock()
	s.clock.skewForTest = 2 * time.Minute // the 1-minute lease has ended, by this store's view of the server's clock
	s.clock.mu.Unlock()
	held, next, err := s.List(ctx, "past.", "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].Key != "past.long" || next != "" {
		t.Errorf("List = %+v, %q; want only past.long", held, next)
	}
	if st, err := s.readLock(ctx, "past.short"); err != nil || !st.held {
		t.Fatalf("the ended lease's message = %+v, %v; want still in the stream for this test", st, err)
	}
}

// TestListReadsNoStateObjects: the listing receives lease headers only,
// not the state objects next to them.
func TestListReadsNoStateObjects(t *testing.T) {
	srv := testsrv.NATS(t, "")
	nc := testsrv.Connect(t, srv)
	s, err := New(t.Context(), nc, Config{Bucket: "noobjects"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := t.Context()
	big := bytes.Repeat([]byte("x"), 512<<10)
	const keys = 8
	for i := 0; i < keys; i++ {
		key := fmt.Sprintf("obj.k%d", i)
		id, _ := acquire(t, s, key)
		if err := s.Write(ctx, key, id, store.Update{Op: store.Set, Value: big}); err != nil {
			t.Fatal(err)
		}
	}
	waitPos(t, s, lastSeq(t, s))
	before := nc.Stats().InBytes
	held, _, err := s.List(ctx, "", "", 100)
	if err != nil || len(held) != keys {
		t.Fatalf("List = %d leases, %v; want %d", len(held), err, keys)
	}
	if got := nc.Stats().InBytes - before; got > 64<<10 {
		t.Errorf("List of %d leases received %d bytes; their state objects are %d bytes each", keys, got, len(big))
	}
	msgs, err := s.lastLeases(ctx, s.listFilter(""))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if !strings.HasPrefix(m.Subject, s.lockPfx) {
			t.Errorf("List read %s, not a lease subject", m.Subject)
		}
	}
}

// TestListPagesHeldKeysOnceInOrder: paging one key at a time while other
// keys under the prefix are taken and released returns every key held
// throughout exactly once, in key order, and leaves no consumer behind.
func TestListPagesHeldKeysOnceInOrder(t *testing.T) {
	srv := testsrv.NATS(t, "")
	s := newStore(t, srv.ClientURL())
	ctx := t.Context()
	var want []string
	for i := 0; i < 12; i++ {
		key := fmt.Sprintf("page.k%02d", i)
		acquire(t, s, key)
		want = append(want, key)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			key, id := fmt.Sprintf("page.k%02d-churn", i%12), storetest.NewLockID()
			if _, err := s.Acquire(ctx, key, id, store.AcquireOptions{TTL: time.Minute}); err != nil {
				t.Errorf("Acquire(%q) = %v", key, err)
				return
			}
			if err := s.Release(ctx, key, id, store.Update{}); err != nil {
				t.Errorf("Release(%q) = %v", key, err)
				return
			}
		}
	}()
	var got []string
	for cursor, pages := "", 0; ; pages++ {
		if pages > 100 {
			t.Fatal("more than 100 pages")
		}
		held, next, err := s.List(ctx, "page.", cursor, 1)
		if err != nil {
			t.Fatalf("List(cursor %q) = %v", cursor, err)
		}
		for _, h := range held {
			switch {
			case strings.HasSuffix(h.Key, "-churn"): // taken during the listing: may or may not come
			case slices.Contains(want, h.Key):
				got = append(got, h.Key)
			default:
				t.Errorf("List returned %q, never taken", h.Key)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	close(stop)
	wg.Wait()
	if !slices.Equal(got, want) {
		t.Errorf("keys held throughout, as listed = %v, want %v", got, want)
	}
	st, err := s.js.Stream(ctx, s.stream)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for ci := range st.ListConsumers(ctx).Info() {
		names = append(names, ci.Name)
	}
	if len(names) != 1 {
		t.Errorf("consumers on the stream after the listing = %v, want the watcher's only", names)
	}
}

// TestForceWritesAReleaseMarker: Force leaves the marker a release leaves
// (the last lease for Get), saying it was forced.
func TestForceWritesAReleaseMarker(t *testing.T) {
	srv := testsrv.NATS(t, "")
	s := newStore(t, srv.ClientURL())
	ctx := t.Context()
	_, g := acquire(t, s, "forced")
	if _, err := s.Force(ctx, "forced"); err != nil {
		t.Fatal(err)
	}
	m, err := s.getLast(ctx, s.lockPfx+"forced")
	if err != nil || m == nil {
		t.Fatalf("lease subject = %v, %v", m, err)
	}
	if !removal(m.Header) || expiredMarker(m.Header) || m.Header.Get(reasonHeader) != reasonForced {
		t.Errorf("marker headers = %v, want a release marker with %s: %s", m.Header, reasonHeader, reasonForced)
	}
	info, err := s.Get(ctx, "forced")
	if err != nil || info.Locked || info.Lease.Token != g.Token {
		t.Errorf("Get after Force = %+v, %v; want unlocked with the last token %d", info, err, g.Token)
	}
}

// TestListReadsAsFarAsTheLeader: List's consumer may run on a follower that
// has not applied the last writes the leader acknowledged; it is read until
// it delivered the leader's last message. Here the leader's answer names a
// sequence the (single) server has not stored yet, as a follower would see
// it, and the write comes later.
func TestListReadsAsFarAsTheLeader(t *testing.T) {
	srv := testsrv.NATS(t, "")
	s := newStore(t, srv.ClientURL())
	ctx := t.Context()
	acquire(t, s, "lag.a")
	next := lastSeq(t, s) + 1
	type result struct {
		msgs []*natsjs.RawStreamMsg
		err  error
	}
	done := make(chan result, 1)
	go func() {
		msgs, err := s.readLast(ctx, s.listFilter("lag."), func(context.Context) (uint64, error) { return next, nil })
		done <- result{msgs, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("readLast = %d messages, %v before the leader's last message came", len(r.msgs), r.err)
	case <-time.After(300 * time.Millisecond):
	}
	if _, g := acquire(t, s, "lag.b"); g.Token != next {
		t.Fatalf("lag.b's lease at sequence %d, want %d", g.Token, next)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("readLast did not return after the leader's last message was written")
	}
	var subjects []string
	for _, m := range r.msgs {
		subjects = append(subjects, m.Subject)
	}
	if r.err != nil || !slices.Contains(subjects, s.lockPfx+"lag.a") || !slices.Contains(subjects, s.lockPfx+"lag.b") {
		t.Errorf("readLast = %v, %v; want lag.a and lag.b", subjects, r.err)
	}

	// The leader's last message removed with no successor (an expired
	// marker): the leader then names an older one, and that is enough.
	var asked atomic.Int32
	msgs, err := s.readLast(ctx, s.listFilter("lag."), func(context.Context) (uint64, error) {
		if asked.Add(1) == 1 {
			return next + 100, nil
		}
		return next, nil
	})
	if err != nil || len(msgs) != 2 {
		t.Errorf("readLast after the leader's last went away = %d messages, %v; want 2", len(msgs), err)
	}
}

// startCluster starts n in-process nats-servers with JetStream, clustered,
// and returns their client URLs once JetStream answers.
func startCluster(t *testing.T, n int) []string {
	t.Helper()
	var cports []int
	for i := 0; i < n; i++ {
		cports = append(cports, testsrv.FreePort(t))
	}
	var routes []string
	for _, p := range cports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	var urls []string
	for i := 0; i < n; i++ {
		srv, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i), Host: "127.0.0.1", Port: -1,
			JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{Name: "admin", Host: "127.0.0.1", Port: cports[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		})
		if err != nil {
			t.Fatal(err)
		}
		srv.Start()
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		if !srv.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats-server not ready")
		}
		urls = append(urls, srv.ClientURL())
	}
	js, err := natsjs.New(testsrv.ConnectURL(t, urls[0]))
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return urls
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream cluster not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestListOnAReplicatedBucket: on an R3 bucket List's consumer lands on any
// of the three servers; a lease acknowledged before List is listed
// whichever it is, seen from a connection to each server.
func TestListOnAReplicatedBucket(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node nats-server cluster")
	}
	urls := startCluster(t, 3)
	var stores []*Store
	for i, url := range urls {
		var (
			s   *Store
			err error
		)
		for try := 0; try < 20; try++ { // the first creates the stream; the others may find it still forming
			if s, err = New(t.Context(), testsrv.ConnectURL(t, url), Config{Bucket: "admin", Replicas: 3}); err == nil {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("New on n%d = %v", i, err)
		}
		t.Cleanup(func() { s.Close() })
		stores = append(stores, s)
	}
	ctx := t.Context()
	for i := 0; i < 30; i++ {
		key := fmt.Sprintf("r3.k%02d", i)
		w := stores[i%3]
		if _, err := w.Acquire(ctx, key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		r := stores[(i+1)%3]
		held, _, err := r.List(ctx, key, "", 1)
		if err != nil {
			t.Fatalf("List after acquiring %s = %v", key, err)
		}
		if len(held) != 1 || held[0].Key != key {
			t.Errorf("List(%q) right after acquiring it (acknowledged) = %v, want it", key, held)
		}
	}
	got, err := func() (int, error) {
		held, next, err := stores[0].List(ctx, "r3.", "", 100)
		if next != "" {
			return 0, fmt.Errorf("cursor %q after all 30", next)
		}
		return len(held), err
	}()
	if err != nil || got != 30 {
		t.Errorf("List = %d leases, %v; want 30", got, err)
	}
}
