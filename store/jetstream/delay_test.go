package jetstream

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

// TestLockDelayEndIsEffectiveBeforeGetSaysUnlocked: a lease with a
// lock-delay stays in the stream after its holder's part ends (its message
// lives for the delay too), so a write of the old holder decided before the
// end and guarded only by the lease's sequence could land in the delay.
// Once a get has said "unlocked", that write must fail: the get replaced
// the lease by a blocker first.
func TestLockDelayEndIsEffectiveBeforeGetSaysUnlocked(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := context.Background()
	s, err := New(ctx, testsrv.Connect(t, srv), Config{Bucket: "delay"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	other, err := New(ctx, testsrv.Connect(t, srv), Config{Bucket: "delay"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })

	key, id := "k", storetest.NewLockID()
	g, err := s.Acquire(ctx, key, id, store.AcquireOptions{TTL: time.Second, Delay: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	lease, err := s.readLock(ctx, key)
	if err != nil || !lease.held {
		t.Fatalf("lease = %+v, %v", lease, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var info store.Info
	for {
		if info, err = other.Get(ctx, key); err != nil {
			t.Fatal(err)
		}
		if !info.Locked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease of 1s still locked after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if info.Delay <= 0 || info.Lease.Token != g.Token {
		t.Fatalf("Get after the lease's end = %+v, want its lock-delay running for token %d", info, g.Token)
	}
	// The old holder's write, guarded by its lease's sequence as Write
	// guards it, arriving now.
	m := s.objectMsg(key, store.Update{Op: store.Set, Value: []byte(`"late"`)})
	m.Header.Set(natsjs.ExpectedLastSubjSeqSubjHeader, s.lockPfx+key)
	m.Header.Set(natsjs.ExpectedLastSubjSeqHeader, strconv.FormatUint(lease.seq, 10))
	if _, err := s.publish(ctx, m); !errors.Is(err, errWrongSeq) {
		t.Fatalf("write guarded by the ended lease's sequence after get said unlocked = %v, want a wrong-sequence refusal", err)
	}
	cur, err := other.readLock(ctx, key)
	if err != nil || !cur.blocker() {
		t.Fatalf("lease subject after the get = %+v, %v; want a blocker", cur, err)
	}
	_, err = other.Acquire(ctx, key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Second})
	var le *store.LockedError
	if !errors.As(err, &le) || !le.Delayed || le.Lease.Token != g.Token {
		t.Fatalf("Acquire in the lock-delay = %v, want Delayed for token %d", err, g.Token)
	}
	if _, err := s.Refresh(ctx, key, id, time.Second); !errors.Is(err, store.ErrNotHeld) {
		t.Fatalf("Refresh by the old holder in its lock-delay = %v, want ErrNotHeld", err)
	}
}

// TestLockDelayOverLongestLease: a lease plus its lock-delay must fit in
// the bucket's marker TTL (every marker outlives the leases before it).
func TestLockDelayOverLongestLease(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := context.Background()
	s, err := New(ctx, testsrv.Connect(t, srv), Config{Bucket: "delaylong", MarkerTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	_, err = s.Acquire(ctx, "k", storetest.NewLockID(), store.AcquireOptions{TTL: 50 * time.Second, Delay: 20 * time.Second})
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("Acquire with TTL+delay over the marker TTL = %v, want ErrInvalid", err)
	}
}

// TestLockedErrorTellsTheLeaseEnd: a refusal says when the lease message
// ends by the server's clock (the service sets its timer by it, so an
// expiry is acted on at the end, not when the server's expiry scan gets to
// the message).
func TestLockedErrorTellsTheLeaseEnd(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := context.Background()
	s, err := New(ctx, testsrv.Connect(t, srv), Config{Bucket: "ends"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Acquire(ctx, "k", storetest.NewLockID(), store.AcquireOptions{TTL: 3 * time.Second, Delay: time.Second}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Acquire(ctx, "k", storetest.NewLockID(), store.AcquireOptions{TTL: time.Second})
	var le *store.LockedError
	if !errors.As(err, &le) || le.Delayed {
		t.Fatalf("Acquire of a held key = %v, want a *LockedError", err)
	}
	if le.ExpiresIn <= 2*time.Second || le.ExpiresIn > 4*time.Second {
		t.Errorf("ExpiresIn = %v, want the lease (3s) and its lock-delay (1s) left, less the time taken", le.ExpiresIn)
	}
}
