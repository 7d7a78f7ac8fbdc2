package jetstream

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

// slowInfo is the bucket's stream with an Info that waits until release is
// closed: it holds the watcher rebuild (startWatch begins with Info) at the
// point it reaches after a reconnection, as the rebuilder's retry backoff
// (up to 2 s after a long disconnection) or a slow round trip does.
type slowInfo struct {
	natsjs.Stream
	release chan struct{}
}

func (s slowInfo) Info(ctx context.Context, opts ...natsjs.StreamInfoOpt) (*natsjs.StreamInfo, error) {
	select {
	case <-s.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return s.Stream.Info(ctx, opts...)
}

// TestStaleHintAfterStreamWentBack: an R1 server loses the tail of the
// stream (restart from a copy of the store taken earlier, as in
// TestStreamWentBackIsDetected). Store a's hints described the lost history
// until its watcher was rebuilt, which runs only after the connection is
// back (and after the rebuilder's backoff; here held at its first request).
// In that window Acquire trusted a hint that said "free at sequence N" and
// compare-and-set against N without a read; in the new history N is b's
// live lease on the same key, granted after the crash, so a took it over:
// two live grants, both made and acknowledged in the surviving history.
// Hints must go at the first sign of a break.
func TestStaleHintAfterStreamWentBack(t *testing.T) {
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
		s, err := New(ctx, conn(), Config{Bucket: "stale"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	crash := func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}

	// The bucket exists in the durable state.
	s0 := newS()
	if _, err := s0.Acquire(ctx, "base", storetest.NewLockID(), store.AcquireOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	base := lastSeq(t, s0)
	s0.Close()
	crash()
	if out, err := exec.Command("cp", "-a", dir+"/.", snap).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	srv = startAt(t, dir, port)

	// History 1 (to be lost): a takes K and gives it back.
	a := newS()
	idA := storetest.NewLockID()
	if _, err := a.Acquire(ctx, "K", idA, store.AcquireOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, "K", idA, store.Update{}); err != nil {
		t.Fatal(err)
	}
	waitPos(t, a, lastSeq(t, a))
	hint, _ := a.getHint("K")
	t.Logf("history 1: K free at seq %d (base %d)", hint.seq, base)

	// The watcher rebuild after the crash stops at its first request.
	release := make(chan struct{})
	defer close(release)
	a.mu.Lock()
	a.str = slowInfo{a.str, release}
	a.mu.Unlock()

	// Crash: the tail is lost.
	crash()
	os.RemoveAll(dir)
	if out, err := exec.Command("cp", "-a", snap+"/.", dir).CombinedOutput(); err != nil {
		t.Fatal(err, string(out))
	}
	srv = startAt(t, dir, port)

	// History 2: b takes another key, then K, whose lease lands on the
	// sequence where K was free in history 1.
	b := newS()
	if got := lastSeq(t, b); got != base {
		t.Fatalf("after the crash the stream ends at %d, want %d", got, base)
	}
	idB := storetest.NewLockID()
	if _, err := b.Acquire(ctx, "other", storetest.NewLockID(), store.AcquireOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	gB, err := b.Acquire(ctx, "K", idB, store.AcquireOptions{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("history 2: b holds K with token %d (seq %d)", gB.Token, gB.Token)

	deadline := time.Now().Add(10 * time.Second)
	for !a.nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("a did not reconnect")
		}
		time.Sleep(5 * time.Millisecond)
	}

	a.mu.Lock()
	gen, broken := a.w.gen, a.w.broken
	a.mu.Unlock()
	t.Logf("a reconnected; its watcher: generation %d, broken %v", gen, broken)

	// a acquires K: b's lease is live for a minute.
	gA, err := a.Acquire(ctx, "K", storetest.NewLockID(), store.AcquireOptions{TTL: time.Minute})
	var locked *store.LockedError
	if errors.As(err, &locked) {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	_, errB := b.Refresh(ctx, "K", idB, time.Minute)
	t.Errorf("a was granted K (token %d) while b's lease on K (token %d, 1 min) was live; b's refresh now: %v",
		gA.Token, gB.Token, errB)
}
