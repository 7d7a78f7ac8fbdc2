package client_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/embedded"
	"github.com/lockservice/lockservice/service"
)

// TestWithLockReleasesWhenTheStateIsRefused: a WithLock callback that
// returns a state the service refuses (larger than --max-value-bytes, or
// than NATS's max payload) failed the release, and WithLock returned that
// error with the lock still held: nobody got the key until the lease ran
// out, although WithLock promises to release the lock whatever the
// callback does. The lock must be released without writing, and the
// error say what was refused (ErrBadRequest).
func TestWithLockReleasesWhenTheStateIsRefused(t *testing.T) {
	srv, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithoutListener(),
		embedded.WithServiceConfig(service.Config{MaxValueBytes: 1024}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	nc, err := srv.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, c2 := range []struct {
		key  string
		size int
	}{{"refused.over-max-value-bytes", 2048}, {"refused.over-max-payload", int(nc.MaxPayload()) + 1}} {
		key, size := c2.key, c2.size
		t.Run(key, func(t *testing.T) {
			big := bytes.Repeat([]byte("x"), size)
			_, err := c.WithLock(ctx, key, func(context.Context, []byte) ([]byte, error) { return big, nil }, client.WithTTL(time.Minute))
			if !errors.Is(err, client.ErrBadRequest) {
				t.Errorf("WithLock returning %d bytes = %v, want an error matching ErrBadRequest", size, err)
			}
			l, err := c.TryAcquire(ctx, key)
			if err != nil {
				t.Fatalf("TryAcquire after WithLock failed = %v: the lock was left held (for its minute-long lease)", err)
			}
			if l.Value() != nil {
				t.Errorf("state after the refused write = %d bytes, want none", len(l.Value()))
			}
			_ = l.Release(ctx)
		})
	}
}
