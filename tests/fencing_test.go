package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
)

// TestFencingSlowClients: holders that stall past their lease (GC pause,
// swapped out, slow network) must not corrupt anything. A downstream
// resource accepts writes only with a token at least as high as the
// highest it saw; a stalled holder's write to it is rejected once a newer
// holder wrote, its write through the lock service is never applied, and
// no update acknowledged by the lock service is lost.
func TestFencingSlowClients(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes for several seconds")
	}
	for _, store := range []string{"jetstream", "redis"} {
		t.Run(store, func(t *testing.T) {
			d := newDeploy(t, store, 1, 2)
			ctx, cancel := context.WithTimeout(t.Context(), *faultDuration)
			defer cancel()
			res := newFencedResource()
			h := newHistory()
			key := "fence.k" + strconv.FormatInt(time.Now().UnixNano()%1e6, 10)
			const lease = time.Second // JetStream's minimum; 1s on the server too
			var (
				wg                      sync.WaitGroup
				stalled, staleApplied   atomic.Int64
				acked                   atomic.Int64
				staleWritesAcceptedDown atomic.Int64
			)
			for c := 0; c < 4; c++ {
				nc, err := nats.Connect("nats://"+d.clientProxy.Addr(), nats.MaxReconnects(-1))
				if err != nil {
					t.Fatal(err)
				}
				defer nc.Close()
				cl, _ := client.New(nc)
				wg.Add(1)
				go func() {
					defer wg.Done()
					rnd := rand.New(rand.NewPCG(uint64(c), 7))
					for ctx.Err() == nil {
						actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
						l, err := cl.Acquire(actx, key, client.WithTTL(lease))
						acancel()
						if err != nil {
							t.Errorf("Acquire = %v", err)
							return
						}
						n := 0
						if v := l.Value(); v != nil {
							n, _ = strconv.Atoi(string(v))
						}
						stall := rnd.IntN(4) == 0
						if stall {
							stalled.Add(1)
							time.Sleep(lease + 500*time.Millisecond) // past the lease
						}
						accepted := res.write(key, l.Token(), h)
						if stall && accepted && !time.Now().Before(l.Deadline()) {
							// Accepted only if no newer holder wrote yet: the
							// resource's rule, not a violation.
							staleWritesAcceptedDown.Add(1)
						}
						err = l.ReleaseWith(context.Background(), []byte(strconv.Itoa(n+1)))
						switch {
						case err == nil && stall:
							staleApplied.Add(1)
						case err == nil:
							acked.Add(1)
						case !errors.Is(err, client.ErrNotHeld):
							t.Errorf("ReleaseWith = %v", err)
						}
					}
				}()
			}
			wg.Wait()
			if staleApplied.Load() != 0 {
				t.Errorf("%d writes from holders whose lease had ended were applied", staleApplied.Load())
			}
			// Every acknowledged increment is in the final state.
			nc, _ := nats.Connect("nats://" + d.clientProxy.Addr())
			defer nc.Close()
			cl, _ := client.New(nc)
			info, err := cl.Get(context.Background(), key)
			if err != nil {
				t.Fatal(err)
			}
			if got := string(info.Value); got != strconv.FormatInt(acked.Load(), 10) {
				t.Errorf("counter = %s, want %d acknowledged increments", got, acked.Load())
			}
			// The resource saw every token at most once, in increasing order.
			for k, toks := range res.accepted {
				for i := 1; i < len(toks); i++ {
					if toks[i] <= toks[i-1] {
						t.Errorf("%s: resource accepted token %d after %d", k, toks[i], toks[i-1])
					}
				}
			}
			if h.staleRejected.Load() == 0 {
				t.Errorf("no stale write reached the resource: the scenario did not exercise fencing")
			}
			summary := fmt.Sprintf("%d grants acknowledged, %d holders stalled past their lease: %d of their writes through the service applied (want 0), %d stale writes rejected by the resource, %d accepted before any newer holder wrote",
				acked.Load(), stalled.Load(), staleApplied.Load(), h.staleRejected.Load(), staleWritesAcceptedDown.Load())
			t.Log(summary)
			report(t, store+"/slow-clients (fencing)", summary, []string{fmt.Sprintf("%d× holder stalled %v past a %v lease", stalled.Load(), 500*time.Millisecond, lease)})
		})
	}
}

// TestRedisFailover promotes a replica while the workload runs, with and
// without --redis-replicas 1, and reports what the checker observes. We
// do not claim safety across Redis failovers (replication is
// asynchronous); this test records what happens and fails only when the
// workload cannot run at all.
func TestRedisFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("runs real processes for several seconds")
	}
	for _, replicas := range []int{0, 1} {
		t.Run(fmt.Sprintf("wait-replicas-%d", replicas), func(t *testing.T) {
			needBinaries(t)
			d := newDeploy(t, "redis", 1, 3, "--redis-replicas", itoa(replicas))
			_, replicaAddr := startRedis(t, "--replicaof", strings.Replace(d.redisAddr, ":", " ", 1))
			waitReplicaSynced(t, d.redisAddr)
			ctx, cancel := context.WithTimeout(t.Context(), *faultDuration)
			defer cancel()
			var fault string
			faultDone := make(chan struct{})
			go func() {
				defer close(faultDone)
				sleepCtx(ctx, *faultDuration/3)
				if ctx.Err() != nil {
					return
				}
				d.redis.Kill()
				c := goredis.NewClient(&goredis.Options{Addr: replicaAddr})
				defer c.Close()
				if err := c.ReplicaOf(context.Background(), "NO", "ONE").Err(); err != nil {
					fault = "promotion failed: " + err.Error()
					return
				}
				d.svcProxy.SetTarget(replicaAddr)
				fault = "kill -9 primary, REPLICAOF NO ONE on the replica, services switched to it"
			}()
			w := &workload{natsURL: "nats://" + d.clientProxy.Addr(), clients: 6, keys: 3, ttl: 20 * time.Second, opBudget: 6 * time.Second}
			h := w.run(t, ctx)
			<-faultDone
			summary, violation := h.verify(t, fmt.Sprintf("redis-failover-%d", replicas))
			if violation != "" {
				summary += "; OBSERVED: " + violation
			}
			t.Logf("failover with --redis-replicas %d: %s (%s)", replicas, summary, fault)
			report(t, fmt.Sprintf("redis/failover, --redis-replicas %d (no safety claimed)", replicas), summary, []string{fault})
		})
	}
}

func waitReplicaSynced(t *testing.T, primary string) {
	c := goredis.NewClient(&goredis.Options{Addr: primary})
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c.Set(context.Background(), "sync-probe", "1", 0)
		n, err := c.Wait(context.Background(), 1, 500*time.Millisecond).Result()
		if err == nil && n >= 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica of %s never acknowledged a write: %v", primary, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
