package jetstream

import (
	"context"
	"encoding/base64"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

func newStore(t *testing.T, url string) *Store {
	t.Helper()
	s, err := New(t.Context(), testsrv.ConnectURL(t, url), Config{Bucket: "objects"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// waitPos waits until s's watcher has applied stream sequence seq.
func waitPos(t *testing.T, s *Store, seq uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		pos := s.w.pos
		s.mu.Unlock()
		if pos >= seq {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("watcher at %d, want %d", pos, seq)
		}
		time.Sleep(time.Millisecond)
	}
}

func lastSeq(t *testing.T, s *Store) uint64 {
	t.Helper()
	st, err := s.js.Stream(t.Context(), s.stream)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.LastSeq
}

func acquire(t *testing.T, s *Store, key string) (string, store.Grant) {
	t.Helper()
	id := storetest.NewLockID()
	g, err := s.Acquire(t.Context(), key, id, store.AcquireOptions{TTL: time.Minute})
	if err != nil {
		t.Fatalf("acquire %s: %v", key, err)
	}
	return id, g
}

// A key without state is acquired without reading its object once the
// watcher has seen the release; a key with state is always read, whichever
// store wrote it and however (write while holding, release with a value,
// transfer with a value), and a deleted object reads as none.
func TestAcquireSkipsObjectReadOnlyWithoutState(t *testing.T) {
	srv := testsrv.NATS(t, "")
	a, b := newStore(t, srv.ClientURL()), newStore(t, srv.ClientURL())
	ctx := context.Background()

	// Stateless key: after the first pair, no reads.
	key := "skip.stateless"
	for i := 0; i < 5; i++ {
		id, _ := acquire(t, a, key)
		if err := a.Release(ctx, key, id, store.Update{}); err != nil {
			t.Fatal(err)
		}
		waitPos(t, a, lastSeq(t, a))
	}
	before := a.Stats()
	for i := 0; i < 20; i++ {
		id, g := acquire(t, a, key)
		if g.Value != nil {
			t.Fatalf("stateless key read value %q", g.Value)
		}
		if err := a.Release(ctx, key, id, store.Update{}); err != nil {
			t.Fatal(err)
		}
		waitPos(t, a, lastSeq(t, a))
	}
	if st := a.Stats(); st.Acquires-before.Acquires != 20 || st.Skipped-before.Skipped != 20 {
		t.Errorf("20 acquires of a key without state: %d attempts, %d without reading the object; want 20 and 20", st.Acquires-before.Acquires, st.Skipped-before.Skipped)
	}

	// State written through the other store, in every way a holder can.
	writes := []struct {
		name string
		do   func(t *testing.T, key, id string) string // returns the value now stored
	}{
		{"write while holding", func(t *testing.T, key, id string) string {
			if err := b.Write(ctx, key, id, store.Update{Op: store.Set, Value: []byte("w")}); err != nil {
				t.Fatal(err)
			}
			if err := b.Release(ctx, key, id, store.Update{}); err != nil {
				t.Fatal(err)
			}
			return "w"
		}},
		{"release with a value", func(t *testing.T, key, id string) string {
			if err := b.Release(ctx, key, id, store.Update{Op: store.Set, Value: []byte("r")}); err != nil {
				t.Fatal(err)
			}
			return "r"
		}},
		{"transfer with a value", func(t *testing.T, key, id string) string {
			to := storetest.NewLockID()
			if _, err := b.Transfer(ctx, key, id, store.Update{Op: store.Set, Value: []byte("x")}, to, store.AcquireOptions{TTL: time.Minute}); err != nil {
				t.Fatal(err)
			}
			if err := b.Release(ctx, key, to, store.Update{}); err != nil {
				t.Fatal(err)
			}
			return "x"
		}},
		{"delete", func(t *testing.T, key, id string) string {
			if err := b.Release(ctx, key, id, store.Update{Op: store.Delete}); err != nil {
				t.Fatal(err)
			}
			return ""
		}},
	}
	for i := 0; i < 10; i++ {
		for _, w := range writes {
			key := fmt.Sprintf("skip.state.%d", i)
			id, _ := acquire(t, b, key)
			want := w.do(t, key, id)
			// Both the lagging and the caught-up watcher must see it.
			if i%2 == 1 {
				waitPos(t, a, lastSeq(t, a))
			}
			id, g := acquire(t, a, key)
			if string(g.Value) != want || (want == "" && g.Value != nil) {
				t.Fatalf("%s, round %d: acquire through the other store read %q, want %q", w.name, i, g.Value, want)
			}
			if err := a.Release(ctx, key, id, store.Update{}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A store started after objects were written knows them from its first
// message on: the watcher starts from the last message of every subject.
func TestObjectsWrittenBeforeStart(t *testing.T) {
	srv := testsrv.NATS(t, "")
	a := newStore(t, srv.ClientURL())
	ctx := context.Background()
	id, _ := acquire(t, a, "before.k")
	if err := a.Release(ctx, "before.k", id, store.Update{Op: store.Set, Value: []byte("old")}); err != nil {
		t.Fatal(err)
	}

	c := newStore(t, srv.ClientURL())
	// Move c's watcher past the release with traffic on another key.
	id, _ = acquire(t, c, "before.other")
	if err := c.Release(ctx, "before.other", id, store.Update{}); err != nil {
		t.Fatal(err)
	}
	waitPos(t, c, lastSeq(t, c))
	_, g := acquire(t, c, "before.k")
	if string(g.Value) != "old" {
		t.Fatalf("a store started after the write read %q, want %q", g.Value, "old")
	}
}

// Lease records parse only when this store could have written them: a
// record in the Lockservice-Lease header, a 16-byte holder, a token below the
// message's own sequence, a server TTL no longer than the bucket's longest
// lease. Anything else is never a live lease (a client that can publish to
// the bucket could otherwise lock a key forever or push tokens to 2^64-1).
func TestParseRejectsRecordsNotWrittenByTheStore(t *testing.T) {
	now := time.Now()
	const maxTTL = 10 * time.Minute
	rec := record{Holder: holderHash("0123456789abcdef"), Owner: "o", Token: 7, TTLms: 1000}
	lease := func(r record, ttl string) nats.Header {
		h := nats.Header{leaseHeader: {encodeRecord(r)}}
		if ttl != "" {
			h.Set("Nats-TTL", ttl)
		}
		return h
	}
	st := parse(11, lease(rec, "1s"), now, maxTTL)
	if !st.held || st.token != 7 || st.rec.Owner != "o" || st.ttl != time.Second || !st.exact {
		t.Fatalf("header record parsed as %+v", st)
	}
	if st := parse(12, lease(record{Holder: rec.Holder, TTLms: 1000}, "2s"), now, maxTTL); !st.held || st.token != 12 {
		t.Fatalf("a first grant's record (token 0: its own sequence) parsed as %+v", st)
	}
	st = parse(10, nats.Header{"KV-Operation": {"PURGE"}, leaseHeader: {encodeRecord(rec)}}, now, maxTTL)
	if st.held || st.token != 7 {
		t.Fatalf("release marker parsed as %+v", st)
	}
	body, _ := msgpack.Marshal(rec)
	for name, h := range map[string]nats.Header{
		"record only in the body (never released 0.1.0 format)": {"Nats-TTL": {"1s"}},
		"token 2^64-1":           lease(record{Holder: rec.Holder, Token: 1<<64 - 1, TTLms: 1000}, "1s"),
		"token equal to its seq": lease(record{Holder: rec.Holder, Token: 20, TTLms: 1000}, "1s"),
		"no TTL":                 lease(rec, ""),
		"TTL never":              lease(rec, "never"),
		"TTL beyond the longest": lease(rec, "11m"),
		"TTL zero":               lease(rec, "0"),
		"holder of 3 bytes":      lease(record{Holder: []byte("abc"), TTLms: 1000}, "1s"),
		"record not base64":      {leaseHeader: {"!!"}, "Nats-TTL": {"1s"}},
		"record not msgpack":     {leaseHeader: {"AAAA"}, "Nats-TTL": {"1s"}},
	} {
		_ = body
		st := parse(20, h, now, maxTTL)
		if st.held || st.corrupt == "" {
			t.Errorf("%s: parsed as %+v, want corrupt and not held", name, st)
		}
	}
	// A record written by hand that declares a 4 GiB holder: corrupt, and
	// nothing allocated from the declared length.
	// Averaged over runs: TotalAlloc counts every goroutine's allocations.
	bomb := nats.Header{leaseHeader: {base64.RawStdEncoding.EncodeToString([]byte("\x81\xa1h\xc6\xff\xff\xff\xf0"))}, "Nats-TTL": {"1s"}}
	const runs = 20
	var ms1, ms2 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	for range runs {
		st = parse(12, bomb, now, maxTTL)
	}
	runtime.ReadMemStats(&ms2)
	if st.held || st.corrupt == "" {
		t.Fatalf("a malformed record parsed as %+v, want corrupt", st)
	}
	if got := (ms2.TotalAlloc - ms1.TotalAlloc) / runs; got > 256<<10 {
		t.Fatalf("parsing a malformed 8-byte record allocated %d bytes", got)
	}
}

// The watcher's bookkeeping errs towards reading: a removal older than what
// it applied keeps the key in the set, a hint the watcher did not apply
// itself is not trusted, and any sign of a break in the watcher's view (here:
// a connection drop) stops skipping until the watcher is rebuilt.
func TestObjectBookkeepingErrsTowardsReading(t *testing.T) {
	srv := testsrv.NATS(t, "")
	s := newStore(t, srv.ClientURL())
	const key = "book.k"
	s.mu.Lock()
	base := s.w.pos + 1000
	apply := func(seq uint64, subj string, hdr nats.Header) {
		s.applyLocked(seq, subj, hdr, time.Now())
		if seq > s.w.pos {
			s.w.pos = seq
		}
	}
	apply(base+10, s.objPfx+key, nats.Header{})
	apply(base+5, s.objPfx+key, nats.Header{"KV-Operation": {"PURGE"}}) // late, out of order
	_, has := s.w.objs[key]
	if !has {
		t.Error("an out-of-order removal dropped a key whose later write was applied")
	}
	apply(base+11, s.objPfx+key, nats.Header{"KV-Operation": {"PURGE"}})
	// A free lease message set by the store itself, not seen by the watcher.
	s.setHintLocked(key, lockState{seq: base + 12})
	s.w.pos = base + 12
	s.mu.Unlock()
	if s.noObject(key, base+12) {
		t.Error("noObject trusted a hint the watcher never applied")
	}
	s.mu.Lock()
	apply(base+12, s.lockPfx+key, nats.Header{"KV-Operation": {"PURGE"}, leaseHeader: {encodeRecord(record{Token: 3})}})
	s.mu.Unlock()
	if !s.noObject(key, base+12) {
		t.Fatal("noObject = false for a key with no object after the watcher applied its release")
	}
	s.mu.Lock()
	s.w.rebuild = make(chan struct{}, 1) // keep the rebuilder from replacing the state under test
	s.mu.Unlock()
	s.suspect(0)
	if s.noObject(key, base+12) {
		t.Error("noObject still trusted after a break in the watcher's view")
	}
}

// encodeRecord renders rec as the Lockservice-Lease header does.
func encodeRecord(rec record) string {
	return (&Store{}).recordMsg("k", rec, nats.Header{}).Header.Get(leaseHeader)
}
