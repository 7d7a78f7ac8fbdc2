package jetstream

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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
