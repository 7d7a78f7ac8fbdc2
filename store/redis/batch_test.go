package redis

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

// TestBatchedCallsAfterTheServerLostItsScripts: calls that share a pipeline
// are each answered with their own outcome, also when the server forgot the
// scripts (SCRIPT FLUSH, as after a restart): every EVALSHA of the batch is
// refused with NOSCRIPT, not run, and sent again with EVAL.
func TestBatchedCallsAfterTheServerLostItsScripts(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	rdb := srv.Client(t)
	s, err := New(t.Context(), rdb, Config{})
	if err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		if err := rdb.ScriptFlush(t.Context()).Err(); err != nil {
			t.Fatal(err)
		}
		const n = 64
		var wg sync.WaitGroup
		errs := make([]error, n)
		tokens := make([]uint64, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Two ids per key: exactly one of each pair gets it.
				key := fmt.Sprintf("batch.%d.%d", round, i/2)
				g, err := s.Acquire(t.Context(), key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Minute})
				errs[i], tokens[i] = err, g.Token
			}()
		}
		wg.Wait()
		granted := 0
		for i, err := range errs {
			switch {
			case err == nil:
				granted++
				if tokens[i] != 1 {
					t.Errorf("round %d call %d: token %d, want 1 (first grant of its key)", round, i, tokens[i])
				}
			case !errors.Is(err, store.ErrLocked):
				t.Errorf("round %d call %d: %v, want granted or locked", round, i, err)
			}
		}
		if granted != n/2 {
			t.Errorf("round %d: %d grants for %d keys, want one per key", round, granted, n/2)
		}
	}
	if s.batch.pipelines.Load() == 0 {
		t.Errorf("no pipeline of more than one call was sent for 192 concurrent calls")
	}
}
