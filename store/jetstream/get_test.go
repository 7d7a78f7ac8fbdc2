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

// TestGetIsASnapshot: Get racing a release-with-value must never report the
// key unlocked (after that release) together with the value from before the
// release, a state that never existed. The service's wait answers with
// exactly this Get ("the state at that moment"). Reading the lease and the
// object with two independent requests did (8 of 400 rounds).
func TestGetIsASnapshot(t *testing.T) {
	srv := testsrv.NATS(t, "")
	s := newStore(t, srv.ClientURL())
	ctx := context.Background()
	bad := 0
	for i := 0; i < 150; i++ {
		key := fmt.Sprintf("snap.%d", i)
		id := storetest.NewLockID()
		g, err := s.Acquire(ctx, key, id, store.AcquireOptions{TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Write(ctx, key, id, store.Update{Op: store.Set, Value: []byte("old")}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		var rerr error
		released := make(chan struct{})
		var reading sync.WaitGroup // every reader has completed one Get
		reading.Add(4)
		for r := 0; r < 4; r++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					info, err := s.Get(ctx, key)
					if n == 0 {
						reading.Done()
					}
					if err != nil {
						return
					}
					mu.Lock()
					if !info.Locked && string(info.Value) == "old" {
						bad++
						if bad <= 3 {
							t.Errorf("round %d: Get = unlocked (last token %d, the holder's %d) with value %q; the release that unlocked it wrote \"new\"",
								i, info.Lease.Token, g.Token, info.Value)
						}
					}
					mu.Unlock()
					if !info.Locked {
						return
					}
					select {
					case <-released:
						return
					default:
					}
				}
			}()
		}
		reading.Wait()
		rerr = s.Release(ctx, key, id, store.Update{Op: store.Set, Value: []byte("new")})
		close(released)
		wg.Wait()
		if rerr != nil {
			t.Fatal(rerr)
		}
	}
	t.Logf("%d of 150 rounds: saw an unlocked key with the pre-release value", bad)
}
