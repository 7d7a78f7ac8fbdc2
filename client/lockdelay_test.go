package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lockservice/lockservice/client"
)

// TestLockDelayOption: WithLockDelay reaches the service: after the lease
// expires, Get reports the delay left and TryAcquire is refused until it
// ends, after which the key can be taken.
func TestLockDelayOption(t *testing.T) {
	d := deploy(t, "redis")
	ctx := t.Context()
	const key = "ld.opt"
	start := time.Now()
	l, err := d.c.Acquire(ctx, key, client.WithTTL(time.Second), client.WithLockDelay(2*time.Second), client.WithoutKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	<-l.Done() // the lease's deadline
	var info *client.Info
	for {
		if info, err = d.c.Get(ctx, key); err != nil {
			t.Fatal(err)
		}
		if !info.Locked {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if time.Since(start) < 2*time.Second {
		if info.Delay <= 0 || info.Token != l.Token() {
			t.Errorf("Get in the lock-delay = %+v, want Delay > 0 and the ended lease's token %d", info, l.Token())
		}
		if _, err := d.c.TryAcquire(ctx, key); !errors.Is(err, client.ErrLocked) {
			t.Errorf("TryAcquire in the lock-delay = %v, want ErrLocked", err)
		}
	}
	l2, err := d.c.Acquire(ctx, key, client.WithTTL(time.Second), client.WithLockDelay(0))
	if err != nil {
		t.Fatal(err)
	}
	if got := time.Since(start); got < 3*time.Second {
		t.Errorf("key taken %v after a lease of 1s with a lock-delay of 2s", got)
	}
	if l2.Token() <= l.Token() {
		t.Errorf("token %d after the delay, want > %d", l2.Token(), l.Token())
	}
}
