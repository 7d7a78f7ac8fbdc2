package tests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
	"github.com/lockservice/lockservice/store/storetest"
)

// TestStoreNoLeaseComesBackAfterKill: nats-server's file store brings back
// messages that a newer message on their subject had removed once that
// newer message was itself removed by its TTL, when it restarts after
// kill -9 (docs/UPSTREAM-REVIVE.md); with thw.db written after the removal
// it never expires them again. So after the release and expiry markers of
// two leases have expired, a kill -9 brings the leases back. The store must
// treat neither as live (the old lock ids can neither refresh nor write,
// get says unlocked, a new acquire succeeds with a higher token), and must
// replace them itself so that waiters are woken (an Expired event) within
// a few seconds.
func TestStoreNoLeaseComesBackAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a real nats-server")
	}
	needBinaries(t)
	const bucket = "revive"
	const markerTTL = 2 * time.Second
	procs, addrs := startNATS(t, 1)
	url := natsURL(addrs)
	ctx := t.Context()
	connect := func() *nats.Conn {
		nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	newStore := func(nc *nats.Conn) *jsstore.Store {
		s, err := jsstore.New(ctx, nc, jsstore.Config{Bucket: bucket, MarkerTTL: markerTTL})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	raw := connect()
	s1 := newStore(connect())
	js, _ := natsjs.New(raw)
	stream := "KV_" + bucket
	lockSubj := func(key string) string { return "$KV." + bucket + ".l." + key }
	// A message no lease subject uses, at the start of the stream: purging
	// it later makes the server write index.db and thw.db.
	if _, err := js.Publish(ctx, "$KV."+bucket+".junk", []byte("j")); err != nil {
		t.Fatal(err)
	}
	pair := func(s *jsstore.Store, key string, value []byte) {
		t.Helper()
		id := storetest.NewLockID()
		if _, err := s.Acquire(ctx, key, id, store.AcquireOptions{TTL: markerTTL}); err != nil {
			t.Fatal(err)
		}
		u := store.Update{}
		if value != nil {
			u = store.Update{Op: store.Set, Value: value}
		}
		if err := s.Release(ctx, key, id, u); err != nil {
			t.Fatal(err)
		}
	}
	fill := []byte(strings.Repeat("f", 256<<10))

	// "rel": acquired, refreshed, released. "exp": acquired and left to
	// expire. State objects on other keys keep their blocks alive.
	idR, idE := storetest.NewLockID(), storetest.NewLockID()
	gR, err := s1.Acquire(ctx, "rel", idR, store.AcquireOptions{TTL: markerTTL})
	if err != nil {
		t.Fatal(err)
	}
	pair(s1, "fill.0", fill)
	if _, err := s1.Refresh(ctx, "rel", idR, markerTTL); err != nil {
		t.Fatal(err)
	}
	pair(s1, "fill.1", fill)
	if err := s1.Release(ctx, "rel", idR, store.Update{}); err != nil {
		t.Fatal(err)
	}
	gE, err := s1.Acquire(ctx, "exp", idE, store.AcquireOptions{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for i := 2; i < 6; i++ {
		pair(s1, fmt.Sprintf("fill.%d", i), fill)
	}

	last := func(subj string) (*natsjs.RawStreamMsg, error) {
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := js.Stream(c, stream)
		if err != nil {
			return nil, err
		}
		m, err := st.GetLastMsgForSubject(c, subj)
		if errors.Is(err, natsjs.ErrMsgNotFound) {
			return nil, nil
		}
		return m, err
	}
	// Await the removal of both markers by their TTL.
	deadline := time.Now().Add(30 * time.Second)
	for _, k := range []string{"rel", "exp"} {
		for {
			m, err := last(lockSubj(k))
			if err == nil && m == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the lease subject of %s still has a message 30 s on: %v %v", k, m, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// index.db and thw.db now (the server writes them every 2 minutes by
	// itself): a revived lease is then never expired by the server. Then
	// one more write, so that the index is stale and the restart rebuilds.
	resp, err := raw.Request("$JS.API.STREAM.PURGE."+stream, []byte(`{"seq":2}`), 5*time.Second)
	if err != nil || !strings.Contains(string(resp.Data), `"purged":1`) {
		t.Fatalf("purge of the first message: %v %s", err, resp.Data)
	}
	pair(s1, "fill.last", fill)

	procs[0].Kill()
	procs[0].Restart()

	// What the server brought back (read before any store touches it).
	revived := map[string]uint64{}
	for _, k := range []string{"rel", "exp"} {
		var m *natsjs.RawStreamMsg
		for try := 0; ; try++ {
			if m, err = last(lockSubj(k)); err == nil || try == 100 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		if m != nil && m.Header.Get("KV-Operation") == "" && m.Header.Get(natsjs.MarkerReasonHeader) == "" {
			revived[k] = m.Sequence
			t.Logf("nats-server brought back the lease of %s: seq %d, stored %v ago, Nats-TTL %s", k, m.Sequence, time.Since(m.Time).Round(time.Millisecond), m.Header.Get("Nats-TTL"))
		}
	}
	if len(revived) == 0 {
		t.Fatal("nats-server brought no lease back after kill -9: this test no longer exercises the store's defence (see docs/UPSTREAM-REVIVE.md; has nats-server fixed issue 8505?)")
	}

	nc2 := connect()
	s2 := newStore(nc2)
	events := make(chan store.Event, 64)
	s2.Notify(func(ev store.Event) {
		select {
		case events <- ev:
		default:
		}
	})
	for key, id := range map[string]string{"rel": idR, "exp": idE} {
		info, err := s2.Get(ctx, key)
		if err != nil || info.Locked {
			t.Errorf("Get(%s) after the restart = %+v, %v; want unlocked (its lease ended before the kill)", key, info, err)
		}
		if _, err := s2.Refresh(ctx, key, id, markerTTL); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Refresh(%s) by the lock id whose lease ended before the kill = %v, want ErrNotHeld", key, err)
		}
		if err := s2.Write(ctx, key, id, store.Update{Op: store.Set, Value: []byte("zombie")}); !errors.Is(err, store.ErrNotHeld) {
			t.Errorf("Write(%s) by the lock id whose lease ended before the kill = %v, want ErrNotHeld", key, err)
		}
	}
	// The store replaces each revived lease: an Expired event wakes the
	// waiters of other instances, and the subject ends in a removal.
	wait := time.After(10 * time.Second)
	for left := len(revived); left > 0; {
		select {
		case ev := <-events:
			if _, ok := revived[ev.Key]; ok && ev.Kind == store.Expired {
				left--
				t.Logf("event %+v", ev)
			}
		case <-wait:
			t.Fatalf("no Expired event within 10 s for the revived leases %v", revived)
		}
	}
	for k := range revived {
		m, err := last(lockSubj(k))
		if err != nil || m == nil || m.Header.Get("KV-Operation") != "PURGE" {
			t.Errorf("after the store replaced the revived lease of %s, its last message is %+v, %v; want an expiry marker", k, m, err)
		}
	}
	for key, old := range map[string]uint64{"rel": gR.Token, "exp": gE.Token} {
		g, err := s2.Acquire(ctx, key, storetest.NewLockID(), store.AcquireOptions{TTL: markerTTL})
		if err != nil || g.Token <= old {
			t.Errorf("Acquire(%s) after the restart = %+v, %v; want a grant with a token above %d", key, g, err, old)
		}
	}
	if st := s2.Stats(); st.Reaped == 0 {
		t.Errorf("Stats().Reaped = 0 after replacing revived leases")
	}
}
