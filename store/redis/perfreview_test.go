package redis_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/redis"
	"github.com/lockservice/lockservice/store/storetest"
)

// Adversarial review (branch perfreview) of 39298c7: batched calls.

// TestBatchedCallsFollowAMovedSlot: concurrent calls on a Cluster client
// whose slot map is stale (a slot reassigned since it loaded it) go out
// in shared pipelines, each redirected by MOVED to the slot's new owner:
// every call gets its own outcome (one grant per key).
func TestBatchedCallsFollowAMovedSlot(t *testing.T) {
	t.Parallel()
	addrs := testsrv.StartRedisCluster(t, 2)
	rdb := testsrv.ClusterClient(t, addrs)
	s := newStore(t, rdb, redis.Config{Namespace: "moved"})
	ctx := t.Context()
	nodes := make([]*goredis.Client, len(addrs))
	ids := make([]string, len(addrs))
	for i, a := range addrs {
		nodes[i] = goredis.NewClient(&goredis.Options{Addr: a})
		t.Cleanup(func() { nodes[i].Close() })
		id, err := nodes[i].Do(ctx, "cluster", "myid").Text()
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	// A fresh key whose slot node 0 owns (empty: it can be reassigned).
	var key string
	var slot int64
	for i := 0; ; i++ {
		key = fmt.Sprintf("mv%d", i)
		var err error
		if slot, err = rdb.ClusterKeySlot(ctx, "moved:{"+key+"}:lock").Result(); err != nil {
			t.Fatal(err)
		}
		if slot < 16384/2 {
			break
		}
	}
	if err := rdb.ForEachShard(ctx, func(ctx context.Context, c *goredis.Client) error { return c.Ping(ctx).Err() }); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*goredis.Client{nodes[1], nodes[0]} {
		if err := c.Do(ctx, "cluster", "setslot", slot, "node", ids[1]).Err(); err != nil {
			t.Fatalf("CLUSTER SETSLOT %d NODE %s: %v", slot, ids[1], err)
		}
	}
	const n = 32
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := key
			if i%2 == 1 {
				k = fmt.Sprintf("other%d", i) // elsewhere, in the same pipelines
			}
			_, errs[i] = s.Acquire(ctx, k, storetest.NewLockID(), store.AcquireOptions{TTL: ttl})
		}()
	}
	wg.Wait()
	granted := 0
	for i, err := range errs {
		switch {
		case i%2 == 1 && err != nil:
			t.Errorf("acquire of a free key in a batch: %v", err)
		case i%2 == 0 && err == nil:
			granted++
		case i%2 == 0 && !errors.Is(err, store.ErrLocked):
			t.Errorf("acquire of the moved key: %v, want granted or locked", err)
		}
	}
	if granted != 1 {
		t.Errorf("%d grants of the key whose slot moved, want 1", granted)
	}
	owner, err := nodes[1].Exists(ctx, "moved:{"+key+"}:lock").Result()
	if err != nil || owner != 1 {
		t.Errorf("the lease is not on the slot's new owner: EXISTS = %d, %v", owner, err)
	}
}
