package redis

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Batching. go-redis sends each command on a connection of its own, so 64
// concurrent acquires cost 64 round trips and 128 system calls on each
// side. The store batches instead, without a timer: a call that finds a
// flusher slot free sends at once, alone or with whatever queued while the
// other flushers' pipelines were on the wire; calls that arrive while every
// slot is busy queue and go out together as one pipeline (EVALSHA each; a
// script the server lost is sent again with EVAL). Each script stays one
// atomic call on its key's node: a pipeline only shares the trip. Cluster
// and Ring clients split a pipeline by node.
//
// Calls that wait for replicas (Config.Replicas) are not batched: WAIT
// counts the writes of its own connection.

// maxFlushers is how many pipelines may be on the wire at once.
const maxFlushers = 2

// maxBatch bounds the calls of one pipeline.
const maxBatch = 256

type call struct {
	ctx  context.Context
	sc   *goredis.Script
	keys []string
	args []any
	res  any
	err  error
	done chan struct{}
}

type batcher struct {
	pipelines atomic.Int64 // pipelines of more than one call sent

	mu       sync.Mutex
	rdb      goredis.UniversalClient
	queue    []*call
	flushers int
}

// run runs sc as part of a batch and returns its reply, or ctx's error
// when ctx ends first (the call may still be applied: an unknown outcome).
func (b *batcher) run(ctx context.Context, rdb goredis.UniversalClient, sc *goredis.Script, keys []string, args ...any) (any, error) {
	c := &call{ctx: ctx, sc: sc, keys: keys, args: args, done: make(chan struct{})}
	b.mu.Lock()
	b.rdb = rdb // always the store's one client
	b.queue = append(b.queue, c)
	flush := b.flushers < maxFlushers
	if flush {
		b.flushers++
	}
	b.mu.Unlock()
	if flush {
		b.flush(c)
	}
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// flush sends the queue until it is empty, then gives back its slot. Once
// own (the caller's call; nil on a flusher goroutine) is done, a goroutine
// takes over the slot, so the caller does not carry others' calls.
func (b *batcher) flush(own *call) {
	for {
		b.mu.Lock()
		n := min(len(b.queue), maxBatch)
		if n == 0 {
			b.flushers--
			b.mu.Unlock()
			return
		}
		if own != nil && isDone(own) {
			b.mu.Unlock()
			go b.flush(nil)
			return
		}
		calls := b.queue[:n:n]
		b.queue = b.queue[n:]
		if len(b.queue) == 0 {
			b.queue = nil
		}
		rdb := b.rdb
		b.mu.Unlock()
		b.send(rdb, calls)
	}
}

// send runs calls in one round trip (one per node) and completes them.
func (b *batcher) send(rdb goredis.UniversalClient, calls []*call) {
	live := calls[:0:0]
	for _, c := range calls {
		if err := c.ctx.Err(); err != nil {
			c.err = err // given up before it was sent: not applied
			close(c.done)
			continue
		}
		live = append(live, c)
	}
	switch len(live) {
	case 0:
		return
	case 1:
		c := live[0]
		c.res, c.err = c.sc.Run(c.ctx, rdb, c.keys, c.args...).Result()
		close(c.done)
		return
	}
	b.pipelines.Add(1)
	ctx, cancel := batchContext(live)
	defer cancel()
	pipe := rdb.Pipeline()
	cmds := make([]*goredis.Cmd, len(live))
	for i, c := range live {
		cmds[i] = pipe.EvalSha(ctx, c.sc.Hash(), c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	for i, c := range live {
		c.res, c.err = cmds[i].Result()
		if c.err != nil && goredis.HasErrorPrefix(c.err, "NOSCRIPT") {
			// Not run: the server lost its scripts (a restart or a
			// failover). Run does EVAL, which loads it again.
			c.res, c.err = c.sc.Run(c.ctx, rdb, c.keys, c.args...).Result()
		}
		close(c.done)
	}
}

// batchContext lasts as long as the latest deadline among calls (5s when
// one has none): a pipeline is not cut short by one caller giving up.
func batchContext(calls []*call) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, c := range calls {
		d, ok := c.ctx.Deadline()
		if !ok {
			d = time.Now().Add(5 * time.Second)
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.Background(), latest)
}

func isDone(c *call) bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}
