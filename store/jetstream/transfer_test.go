package jetstream

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

// TestTransferKeepHandsOverTheHoldersLastWrite: the holder writes the state while
// its release hands the lock over (Transfer with Keep). Write succeeding
// means it was applied while the holder still held the key, i.e. before the
// hand-over; the new holder's grant must therefore carry the written value.
// Transfer reads the object in parallel with its compare-and-set, assuming
// "the state cannot change while fromID holds the key" - but the holder
// itself can change it.
func TestTransferKeepHandsOverTheHoldersLastWrite(t *testing.T) {
	srv := testsrv.NATS(t, "")
	s := newStore(t, srv.ClientURL())
	ctx := context.Background()
	stale := 0
	both := 0
	for i := 0; i < 400; i++ {
		key := fmt.Sprintf("race.%d", i)
		from, to := storetest.NewLockID(), storetest.NewLockID()
		if _, err := s.Acquire(ctx, key, from, store.AcquireOptions{TTL: time.Minute}); err != nil {
			t.Fatal(err)
		}
		if err := s.Write(ctx, key, from, store.Update{Op: store.Set, Value: []byte("old")}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var werr, terr error
		var g store.Grant
		wg.Add(2)
		go func() {
			defer wg.Done()
			werr = s.Write(ctx, key, from, store.Update{Op: store.Set, Value: []byte("new")})
		}()
		go func() {
			defer wg.Done()
			g, terr = s.Transfer(ctx, key, from, store.Update{}, to, store.AcquireOptions{TTL: time.Minute})
		}()
		wg.Wait()
		if werr != nil || terr != nil {
			continue
		}
		both++
		info, _ := s.Get(ctx, key)
		if string(g.Value) != "new" {
			stale++
			if stale <= 3 {
				t.Errorf("round %d: Write(\"new\") by the holder succeeded and Transfer succeeded, but the new holder (token %d) was handed value %q; the store now holds %q (locked=%v token %d)",
					i, g.Token, g.Value, info.Value, info.Locked, info.Lease.Token)
			}
		}
	}
	t.Logf("%d rounds where both the write and the transfer succeeded; %d handed a stale value", both, stale)
}
