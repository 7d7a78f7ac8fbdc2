package redis

import (
	"fmt"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

// TestListCarriesWhatDoesNotFit: a SCAN batch (one hash bucket) can hold
// more matching keys than a page has room for; the rest travel in the
// cursor, and every key is listed.
func TestListCarriesWhatDoesNotFit(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	s, err := New(t.Context(), srv.Client(t), Config{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("carry.k%03d", i)
		if _, err := s.Acquire(t.Context(), key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	found := make(map[string]int)
	carried := 0
	for cursor, pages := "", 0; ; pages++ {
		if pages > 2*n {
			t.Fatalf("more than %d pages", 2*n)
		}
		held, next, err := s.List(t.Context(), "carry.", cursor, 1)
		if err != nil {
			t.Fatalf("List(cursor %q) = %v", cursor, err)
		}
		if len(held) > 1 {
			t.Fatalf("page of %d leases, want at most 1", len(held))
		}
		for _, h := range held {
			found[h.Key]++
		}
		if next == "" {
			break
		}
		c, err := decodeCursor(next)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Pending) > 0 {
			carried++
		}
		cursor = next
	}
	if len(found) != n {
		t.Errorf("listed %d keys, want %d", len(found), n)
	}
	if carried == 0 {
		t.Errorf("no page carried keys to the next: the test did not exercise that path")
	}
	t.Logf("%d of %d cursors carried keys", carried, len(found))
}
