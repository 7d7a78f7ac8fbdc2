package jetstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

// Review of the lock-delay feature: tests that show bugs.

// TestLockDelayRefusalTellsTheBlockersEnd: the first acquire that finds a
// lease in its lock-delay replaces it with a blocker, whose Nats-TTL is the
// rest of the delay plus 250 ms, rounded up to whole seconds: the key is
// kept up to 1.25 s longer than the lease's message would have kept it. The
// refusal's ExpiresIn (the wire's delay_ms: "how long until the key can be
// taken") is still the rest of the lease message's delay, so a caller that
// comes back after it is refused again: a Get right after the refusal says
// the delay has longer to run than the refusal said.
func TestLockDelayRefusalTellsTheBlockersEnd(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := context.Background()
	s, err := New(ctx, testsrv.Connect(t, srv), Config{Bucket: "delayleft"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	key := "k"
	if _, err := s.Acquire(ctx, key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Second, Delay: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var le *store.LockedError
	for {
		_, err := s.Acquire(ctx, key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Second})
		if !errors.As(err, &le) {
			t.Fatalf("Acquire = %v, want refused", err)
		}
		if le.Delayed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease of 1s not in its lock-delay after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	refused := time.Now()
	info, err := s.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(refused)
	if info.Locked || info.Delay <= 0 {
		t.Fatalf("Get in the lock-delay = %+v", info)
	}
	// Allow 100 ms for the clock estimate; the blocker adds 250 ms or more.
	if promised := le.ExpiresIn - elapsed; info.Delay > promised+100*time.Millisecond {
		t.Errorf("refusal said the key can be taken in %v; %v later Get says the lock-delay runs %v more", le.ExpiresIn, elapsed, info.Delay)
	}
}
