package jetstream_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/jetstream"
	"github.com/lockservice/lockservice/store/storetest"
)

// TestBucketFull: at the bucket's message limit (Config.MaxMsgs) a new key
// and a new state object are refused with an error matching ErrBucketFull
// and store.ErrUnavailable (the service's 503) that names the limit and how
// to raise it; the leases already there can still be refreshed, released
// and taken again.
func TestBucketFull(t *testing.T) {
	srv := testsrv.NATS(t, "")
	s, err := jetstream.New(t.Context(), testsrv.Connect(t, srv), jetstream.Config{Bucket: "full", MaxMsgs: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := t.Context()
	opts := store.AcquireOptions{TTL: time.Minute}
	ids := map[string]string{}
	for _, key := range []string{"full.a", "full.b", "full.c"} {
		ids[key] = storetest.NewLockID()
		if _, err := s.Acquire(ctx, key, ids[key], opts); err != nil {
			t.Fatalf("Acquire(%q) = %v, want a grant below the limit", key, err)
		}
	}
	isFull := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, jetstream.ErrBucketFull) || !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s = %v, want ErrBucketFull and ErrUnavailable", what, err)
			return
		}
		for _, want := range []string{"bucket full is full", "max_msgs 3", "nats stream edit KV_full --max-msgs"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s = %q, want it to say %q", what, err, want)
			}
		}
	}
	_, err = s.Acquire(ctx, "full.d", storetest.NewLockID(), opts)
	isFull("Acquire of a new key", err)
	isFull("Write of a new state object", s.Write(ctx, "full.a", ids["full.a"], store.Update{Op: store.Set, Value: []byte("v")}))

	if _, err := s.Refresh(ctx, "full.a", ids["full.a"], time.Minute); err != nil {
		t.Errorf("Refresh when full = %v, want nil", err)
	}
	if err := s.Release(ctx, "full.b", ids["full.b"], store.Update{}); err != nil {
		t.Errorf("Release when full = %v, want nil", err)
	}
	if _, err := s.Acquire(ctx, "full.b", storetest.NewLockID(), opts); err != nil {
		t.Errorf("Acquire of a released key when full = %v, want a grant", err)
	}
	if _, err := s.Transfer(ctx, "full.c", ids["full.c"], store.Update{}, storetest.NewLockID(), opts); err != nil {
		t.Errorf("Transfer when full = %v, want a grant", err)
	}
}
