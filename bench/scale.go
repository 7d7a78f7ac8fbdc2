package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/service/api"
)

// memSample is the memory of this process (and of redis-server when
// lockbench started it) after a forced GC.
type memSample struct {
	rss, heap, redisRSS int64 // bytes
	goroutines          int
}

func (b *bench) measure() memSample {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m := memSample{
		rss:        procStatusKB("/proc/self/status", "VmRSS") << 10,
		heap:       int64(ms.HeapInuse),
		goroutines: runtime.NumGoroutine(),
	}
	if b.env.redis != nil {
		m.redisRSS = procStatusKB(fmt.Sprintf("/proc/%d/status", b.env.redis.Pid()), "VmRSS") << 10
	}
	return m
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// scenario5: one lockservice instance holding -scale-locks locks and
// -scale-waiters parked waiters. Requests go out as raw NATS requests
// with one reply subscription, so the client side adds no goroutine or
// buffer per request to the numbers.
func (b *bench) scenario5(ctx context.Context) error {
	for _, t := range []string{tJetStream, tRedis} {
		if !b.cfg.targets[t] {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, b.cfg.scaleTimeout)
		err := b.scale(sctx, t)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", t, err)
		}
	}
	b.res.note("scenario 5: RSS is this whole process: the embedded nats-server with JetStream, both lockservice instances and the benchmark clients (raw requests, no per-request client state), measured after runtime.GC and debug.FreeOSMemory. redis-server is a separate process, reported on its own row. The Redis instance runs after the JetStream one, so its baseline includes the JetStream locks still held.")
	return nil
}

type rawReplies struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErr   string
}

func (r *rawReplies) handle(m *nats.Msg) {
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		r.fail("error " + code + ": " + m.Header.Get(micro.ErrorHeader))
		return
	}
	var resp api.AcquireResponse
	if err := msgpack.Unmarshal(m.Data, &resp); err != nil {
		r.fail("decode: " + err.Error())
		return
	}
	if !resp.Acquired {
		r.fail("not acquired: " + resp.Key)
		return
	}
	r.ok.Add(1)
}

func (r *rawReplies) fail(msg string) {
	r.mu.Lock()
	if r.firstErr == "" {
		r.firstErr = msg
	}
	r.mu.Unlock()
	r.failed.Add(1)
}

func (r *rawReplies) total() int64 { return r.ok.Load() + r.failed.Load() }

func (b *bench) scale(ctx context.Context, t string) error {
	prefix, svc := b.env.jsPrefix, b.env.jsSvc
	if t == tRedis {
		prefix, svc = redisPrefix, b.env.redisSvc
	}
	nc, err := b.env.natsConn("lockbench-scale")
	if err != nil {
		return err
	}
	defer nc.Close()
	nLocks, nWaiters := b.cfg.scaleLocks, b.cfg.scaleWaiters
	hdr := nats.Header{api.ContentTypeHeader: {api.MsgpackContentType}}
	keyOf := func(i int) string { return b.key("s5", t, i) }
	send := func(op, key, reply string, req any) error {
		data, err := msgpack.Marshal(req)
		if err != nil {
			return err
		}
		return nc.PublishMsg(&nats.Msg{Subject: api.Subject(prefix, op, key), Reply: reply, Data: data, Header: hdr})
	}

	stop := b.profile("s5", t)
	defer stop()
	m0 := b.measure()

	// Locks: pipelined try-acquires, at most window outstanding (well
	// under the service's MaxInflight).
	const window = 512
	grants := &rawReplies{}
	sem := make(chan struct{}, window)
	inbox := nats.NewInbox()
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		grants.handle(m)
		<-sem
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return err
	}
	lease := 10 * time.Minute // the service's default MaxTTL
	start := time.Now()
	for i := range nLocks {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return fmt.Errorf("taking locks: %w after %d", ctx.Err(), grants.total())
		}
		req := api.AcquireRequest{TTLms: lease.Milliseconds(), LockID: client.NewLockID()}
		if err := send(api.OpAcquire, keyOf(i), inbox+"."+strconv.Itoa(i), req); err != nil {
			return err
		}
		if i%20000 == 19999 {
			b.logf("s5 %s: %d locks sent", t, i+1)
		}
	}
	if err := waitUntil(ctx, func() bool { return grants.total() == int64(nLocks) }); err != nil {
		return fmt.Errorf("taking locks: %w (%d answered)", err, grants.total())
	}
	if f := grants.failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d acquires failed, first: %s", f, nLocks, grants.firstErr)
	}
	lockTime := time.Since(start)
	b.logf("s5 %s: %d locks held after %v", t, nLocks, lockTime.Round(time.Millisecond))
	m1 := b.measure()

	// Waiters: blocking acquires on distinct held keys, sent in batches
	// (each makes one store attempt before it parks).
	parked0 := svc.Stats().ParkedWaiters
	waits := &rawReplies{}
	winbox := nats.NewInbox()
	wsub, err := nc.Subscribe(winbox+".*", waits.handle)
	if err != nil {
		return err
	}
	defer wsub.Unsubscribe()
	if err := wsub.SetPendingLimits(-1, -1); err != nil {
		return err
	}
	ids := make([]string, nWaiters)
	waitMs := b.cfg.scaleTimeout.Milliseconds()
	const batch = 1000
	for i := 0; i < nWaiters; i += batch {
		for j := i; j < min(i+batch, nWaiters); j++ {
			ids[j] = client.NewLockID()
			req := api.AcquireRequest{TTLms: lease.Milliseconds(), WaitMs: waitMs, LockID: ids[j]}
			if err := send(api.OpAcquire, keyOf(j), winbox+"."+strconv.Itoa(j), req); err != nil {
				return err
			}
		}
		want := min(i+batch, nWaiters)
		err := waitUntil(ctx, func() bool {
			return svc.Stats().ParkedWaiters-parked0 >= want || waits.total() > 0
		})
		if n := waits.total(); n > 0 {
			return fmt.Errorf("a waiter was answered before it should (%d answers; first failure: %s)", n, waits.firstErr)
		}
		if err != nil {
			return fmt.Errorf("parking waiters: %w (%d parked)", err, svc.Stats().ParkedWaiters-parked0)
		}
	}
	m2 := b.measure()
	b.logf("s5 %s: %d waiters parked", t, nWaiters)

	// Withdraw the waiters so the next target starts clean, in batches:
	// requests beyond the service's MaxInflight would be refused.
	for i := 0; i < nWaiters; i += batch {
		for j := i; j < min(i+batch, nWaiters); j++ {
			if err := send(api.OpCancel, keyOf(j), "", api.CancelRequest{LockID: ids[j]}); err != nil {
				return err
			}
		}
		left := nWaiters - min(i+batch, nWaiters)
		if err := waitUntil(ctx, func() bool { return svc.Stats().ParkedWaiters-parked0 <= left }); err != nil {
			return fmt.Errorf("cancelling waiters: %w (%d still parked)", err, svc.Stats().ParkedWaiters-parked0)
		}
	}

	scen := "5 " + fmt.Sprintf("%dk locks + %dk waiters", nLocks/1000, nWaiters/1000)
	if nLocks < 1000 {
		scen = fmt.Sprintf("5 %d locks + %d waiters", nLocks, nWaiters)
	}
	b.res.set(scen, "process RSS, before", "MiB", t, mib(m0.rss), false)
	b.res.set(scen, "process RSS, with locks", "MiB", t, mib(m1.rss), false)
	b.res.set(scen, "process RSS, with locks + waiters (peak)", "MiB", t, mib(m2.rss), false)
	b.res.set(scen, "bytes per held lock (RSS)", "B", t, float64(m1.rss-m0.rss)/float64(nLocks), false)
	b.res.set(scen, "bytes per held lock (Go heap)", "B", t, float64(m1.heap-m0.heap)/float64(nLocks), false)
	if nWaiters > 0 {
		b.res.set(scen, "bytes per parked waiter (RSS)", "B", t, float64(m2.rss-m1.rss)/float64(nWaiters), false)
		b.res.set(scen, "bytes per parked waiter (Go heap)", "B", t, float64(m2.heap-m1.heap)/float64(nWaiters), false)
	}
	b.res.set(scen, "goroutines before", "", t, float64(m0.goroutines), false)
	b.res.set(scen, "goroutines with locks + waiters", "", t, float64(m2.goroutines), false)
	if t == tRedis && b.env.redis != nil {
		b.res.set(scen, "redis-server RSS with locks (separate process)", "MiB", t, mib(m2.redisRSS), false)
		b.res.set(scen, "redis-server bytes per held lock", "B", t, float64(m1.redisRSS-m0.redisRSS)/float64(nLocks), false)
	}
	b.res.set(scen, "locks taken per second (pipelined, 512 outstanding)", "/s", t, float64(nLocks)/lockTime.Seconds(), false)
	total := m2.rss
	if t == tRedis {
		total += m2.redisRSS
	}
	what := "process RSS"
	if t == tRedis && b.env.redis != nil {
		what = "process + redis-server RSS"
	}
	b.res.check("5", t, "T7: < 256 MiB RSS in total", fmt.Sprintf("%.0f MiB (%s)", mib(total), what), total < 256<<20)
	return nil
}

// waitUntil polls cond every 5 ms until it holds or ctx ends.
func waitUntil(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}
