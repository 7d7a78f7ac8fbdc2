package jetstream

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

func startAt(t *testing.T, dir string, port int) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{ServerName: "wb", Host: "127.0.0.1", Port: port,
		JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("not ready")
	}
	return s
}

// TestStreamWentBackIsDetected: an R1 server loses the tail of the stream
// (restart from a copy of the store taken earlier, as an OS crash within
// sync_interval leaves it). nats.go's ordered consumer would resume at its
// old position + 1, beyond the stream's new end, and never see the messages
// that reuse sequences up to that position. A lease subject that is free at
// the same sequence in both histories then let Acquire skip the read of an
// object written after the crash and return no value. The store must notice
// the break through the real reset path (the connection drop) and rebuild
// its view from the stream as it is.
func TestStreamWentBackIsDetected(t *testing.T) {
	dir, snap := t.TempDir(), t.TempDir()
	port := testsrv.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	srv := startAt(t, dir, port)
	defer func() { srv.Shutdown() }()
	ctx := context.Background()
	conn := func() *nats.Conn {
		nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	newS := func() *Store {
		s, err := New(ctx, conn(), Config{Bucket: "wb", Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a := newS() // the instance whose watcher we follow
	gen0 := a.w.gen
	pair := func(s *Store, key string) {
		id := storetest.NewLockID()
		if _, err := s.Acquire(ctx, key, id, store.AcquireOptions{TTL: 10 * time.Minute}); err != nil {
			t.Fatal(err)
		}
		if err := s.Release(ctx, key, id, store.Update{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		pair(a, "base")
	}
	waitPos(t, a, lastSeq(t, a))
	base := lastSeq(t, a)

	// Snapshot of the durable state: what survives the crash.
	srv.Shutdown()
	srv.WaitForShutdown()
	if out, err := exec.Command("cp", "-a", dir+"/.", snap).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	srv = startAt(t, dir, port)

	// History 1 (to be lost): K acquired, X acquired, K released without state.
	c := newS()
	idK, idX := storetest.NewLockID(), storetest.NewLockID()
	if _, err := c.Acquire(ctx, "K", idK, store.AcquireOptions{TTL: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx, "X", idX, store.AcquireOptions{TTL: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx, "K", idK, store.Update{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 10; i++ {
		pair(c, fmt.Sprintf("fill1.%d", i))
	}
	oldPos := lastSeq(t, c)
	waitPos(t, a, oldPos)
	a.mu.Lock()
	h := a.hints["K"]
	a.mu.Unlock()
	t.Logf("history 1: base %d, K free at %d (watched %v), watcher at %d", base, h.seq, h.watched, oldPos)

	// Crash: the tail is lost.
	srv.Shutdown()
	srv.WaitForShutdown()
	os.RemoveAll(dir)
	if out, err := exec.Command("cp", "-a", snap+"/.", dir).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	srv = startAt(t, dir, port)

	// History 2 (durable): K acquired, K's state written, K released.
	d := newS()
	if got := lastSeq(t, d); got != base {
		t.Fatalf("after the crash the stream ends at %d, want %d", got, base)
	}
	id2 := storetest.NewLockID()
	if _, err := d.Acquire(ctx, "K", id2, store.AcquireOptions{TTL: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(ctx, "K", id2, store.Update{Op: store.Set, Value: []byte("precious")}); err != nil {
		t.Fatal(err)
	}
	if err := d.Release(ctx, "K", id2, store.Update{}); err != nil {
		t.Fatal(err)
	}
	// Ordinary traffic carries the stream past the old position.
	for lastSeq(t, d) <= oldPos+2 {
		pair(d, "fill2")
	}
	waitPos(t, a, lastSeq(t, d))
	a.mu.Lock()
	h = a.hints["K"]
	full := a.w.objsFull
	_, hasK := a.w.objs["K"]
	a.mu.Unlock()
	info, _ := d.Get(ctx, "K")
	cur, _ := d.readLock(ctx, "K")
	t.Logf("history 2: K free at %d in the stream; a's hint for K: seq %d watched %v; a.objsFull=%v, K in a.objs=%v; Get(K) via another store = %q",
		cur.seq, h.seq, h.watched, full, hasK, info.Value)

	check := func(when string) {
		t.Helper()
		before := a.Stats()
		id := storetest.NewLockID()
		g, err := a.Acquire(ctx, "K", id, store.AcquireOptions{TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		after := a.Stats()
		if string(g.Value) != "precious" {
			t.Fatalf("%s: Acquire(K) through the instance that lived through the crash: granted token %d with value %q (object read skipped: %v); the key's state is %q",
				when, g.Token, g.Value, after.Skipped > before.Skipped, info.Value)
		}
		if err := a.Release(ctx, "K", id, store.Update{}); err != nil {
			t.Fatal(err)
		}
	}
	check("right after the crash")

	// Once the watcher is rebuilt from the stream as it is, it knows K's
	// object again, and keys without one are skipped again.
	deadline := time.Now().Add(20 * time.Second)
	for {
		a.mu.Lock()
		ok := a.w.gen > gen0 && !a.w.broken && a.w.caughtUp
		a.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watcher was not rebuilt after the crash")
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitPos(t, a, lastSeq(t, a))

	check("after the rebuild")
	pair(a, "fill3")
	waitPos(t, a, lastSeq(t, a))
	before := a.Stats()
	pair(a, "fill3")
	if after := a.Stats(); after.Skipped == before.Skipped {
		t.Error("after the rebuild, an acquire of a key without state still read the object")
	}
}
