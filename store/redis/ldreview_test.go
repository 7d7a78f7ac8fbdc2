package redis_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/redis"
	"github.com/lockservice/lockservice/store/storetest"
)

// Review of the lock-delay feature: tests that show bugs.

// TestLockDelayRefusalDoesNotWaitForReplicas: with Config.Replicas,
// "operations that change nothing succeed without waiting" (TestReplicas):
// an acquire refused because another holds the key answers ErrLocked
// whatever the replicas do. An acquire refused by a lock-delay (the
// acquire script's status 3) changes nothing either, but the store waits
// for replicas after it (statusNonZero counts it as a write): with a
// replica down the refusal becomes ErrNotReplicated (503, "outcome
// unknown"; a parked request is answered with it), and with replicas up
// every refusal costs a WAIT.
func TestLockDelayRefusalDoesNotWaitForReplicas(t *testing.T) {
	t.Parallel()
	r := testsrv.StartRedis(t)
	plain := newStore(t, r.Client(t), redis.Config{})
	// Replicas 1 and none attached: any WAIT falls short.
	repl := newStore(t, r.Client(t), redis.Config{Replicas: 1, ReplicaTimeout: 100 * time.Millisecond})
	ctx := t.Context()

	held := storetest.NewKey(t)
	mustAcquire(t, plain, held, storetest.NewLockID())
	if _, err := repl.Acquire(ctx, held, storetest.NewLockID(), store.AcquireOptions{TTL: ttl}); !errors.Is(err, store.ErrLocked) {
		t.Fatalf("Acquire of a held key with the replica missing = %v, want ErrLocked", err)
	}

	delayed := storetest.NewKey(t)
	if _, err := plain.Acquire(ctx, delayed, storetest.NewLockID(), store.AcquireOptions{TTL: ttl, Delay: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Force(ctx, delayed); err != nil {
		t.Fatal(err)
	}
	_, err := repl.Acquire(ctx, delayed, storetest.NewLockID(), store.AcquireOptions{TTL: ttl})
	var le *store.LockedError
	if !errors.As(err, &le) || !le.Delayed {
		t.Errorf("Acquire in a lock-delay with the replica missing = %v, want a *LockedError with Delayed (a refusal changes nothing)", err)
	}
}
