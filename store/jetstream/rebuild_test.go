package jetstream

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
)

// TestRebuildTwiceReportsOldReleases: two breaks in quick
// succession (a connection that flaps: the rebuild after the first break
// is itself broken before its consumer has delivered the replay). The
// second rebuild takes the interrupted consumer's position (0, or wherever
// its replay had got to) as oldPos, and f597c89's "only a consumer that
// ran has a position" does not cover it: a consumer that was created and
// ran but had not replayed everything also lowers oldPos. Every key freed
// long before, above that position, is then reported again as released (or
// expired, and the service republishes lock.expired for it), although
// nothing happened on the bucket.
func TestRebuildTwiceReportsOldReleases(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := t.Context()
	w, err := New(ctx, testsrv.Connect(t, srv), Config{Bucket: "flap"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	const keys = 500
	for i := 0; i < keys; i++ {
		id, _ := acquire(t, w, fmt.Sprintf("k%03d", i))
		if err := w.Release(ctx, fmt.Sprintf("k%03d", i), id, store.Update{}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(ctx, testsrv.Connect(t, srv), Config{Bucket: "flap"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	waitPos(t, s, lastSeq(t, s))
	var mu sync.Mutex
	var events []store.Event
	s.Notify(func(e store.Event) {
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	})
	// What the rebuilder does on two breaks in a row.
	if err := s.startWatch(ctx); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	pos2 := s.w.pos
	s.mu.Unlock()
	if err := s.startWatch(ctx); err != nil {
		t.Fatal(err)
	}
	waitPos(t, s, lastSeq(t, s))
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(events) > 0 {
		t.Errorf("nothing changed on the bucket, yet after two rebuilds (the first stopped at position %d) the store reported %d events, first %+v", pos2, len(events), events[0])
	}
}
