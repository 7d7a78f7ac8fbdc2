package tests

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/service/api"
)

// workload is the client side of a fault scenario: clients on a few keys
// through the real service. Each client loops over:
//   - hold (8 in 10): acquire (blocking, or one try in five), then zero to
//     two writes or refreshes, then release writing a new value (or
//     keeping the state, one in four; one in eight with a write racing the
//     release); with abandon, one hold in eight is left to expire. After a
//     release, one in eight tries a write or refresh under the ended lease,
//     which must be refused;
//   - get (1 in 10): the lock and the state, without taking it;
//   - wait (1 in 10): wait up to 1.5 s for the key to be unlocked;
//   - force (client 0 only, 1 in 10 of its operations): an operator ends
//     whatever lease is live on the key (admin force).
//
// Values are unique ("c<client>.<n>"), so a grant or a read that returns
// an old state names the write it saw. Every operation goes into the
// history (history_test.go) for the checker.
type workload struct {
	natsURL  string
	clients  int
	keys     int
	ttl      time.Duration
	opBudget time.Duration // how long a client keeps retrying one operation
	resource *fencedResource
	abandon  bool   // leave some leases to expire instead of releasing them
	prefix   string // key prefix; "" picks a fresh one per run
}

// leaseIDs numbers grants across every workload of the test binary.
var leaseIDs atomic.Int64

func (w *workload) key(i int) string {
	if w.prefix == "" {
		w.prefix = "h" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
	}
	return fmt.Sprintf("%s.k%d", w.prefix, i)
}

// run drives the workload until ctx ends and returns the history.
func (w *workload) run(t *testing.T, ctx context.Context) *history {
	h := newHistory()
	w.runInto(t, ctx, h)
	return h
}

// runInto drives the workload until ctx ends, recording into h.
func (w *workload) runInto(t *testing.T, ctx context.Context, h *history) {
	w.key(0)
	var wg sync.WaitGroup
	for c := 0; c < w.clients; c++ {
		nc, err := nats.Connect(w.natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
			nats.RetryOnFailedConnect(true), nats.Timeout(time.Second), nats.ReconnectBufSize(-1))
		if err != nil {
			t.Fatalf("client connect: %v", err)
		}
		defer nc.Close()
		cl, err := client.New(nc, client.WithRequestTimeout(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			wc := &workClient{w: w, h: h, cl: cl, nc: nc, id: c, rnd: rand.New(rand.NewPCG(uint64(c), uint64(time.Now().UnixNano())))}
			for ctx.Err() == nil {
				key := w.key(wc.rnd.IntN(w.keys))
				switch r := wc.rnd.IntN(40); {
				case wc.id == 0 && r >= 36:
					wc.force(ctx, key)
				case r < 4:
					wc.get(ctx, key)
				case r < 8:
					wc.wait(ctx, key)
				default:
					wc.hold(ctx, key)
				}
			}
		}()
	}
	wg.Wait()
}

type workClient struct {
	w   *workload
	h   *history
	cl  *client.Client
	nc  *nats.Conn
	id  int
	rnd *rand.Rand
	n   int // values written
}

func (c *workClient) newValue() string {
	c.n++
	return fmt.Sprintf("c%d.%d", c.id, c.n)
}

func (c *workClient) get(ctx context.Context, key string) {
	call := c.h.now()
	gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	info, err := c.cl.Get(gctx, key)
	cancel()
	if err != nil {
		return // a read that failed changed nothing
	}
	c.h.addRead(c.id, lockInput{kind: opGet, key: key, client: c.id}, call,
		lockOutput{locked: info.Locked, token: info.Token, value: string(info.Value)})
}

func (c *workClient) wait(ctx context.Context, key string) {
	call := c.h.now()
	wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	v, err := c.cl.Wait(wctx, key)
	cancel()
	if err != nil {
		return // still locked, or failed: no state to check
	}
	c.h.addRead(c.id, lockInput{kind: opWait, key: key, client: c.id}, call, lockOutput{value: string(v)})
}

// force ends whatever lease is live on key, as an operator would
// (<prefix>.admin.force.<key>), and records the outcome.
func (c *workClient) force(ctx context.Context, key string) {
	in := lockInput{kind: opForce, key: key, client: c.id}
	call := c.h.now()
	fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	m, err := c.nc.RequestWithContext(fctx, api.Subject(api.DefaultPrefix, api.OpAdminForce, key), []byte(`{"reason":"workload"}`))
	cancel()
	var resp api.ForceResponse
	if err != nil || m.Header.Get(micro.ErrorCodeHeader) != "" || json.Unmarshal(m.Data, &resp) != nil {
		c.h.add(c.id, in, call, lockOutput{unknown: true})
		return
	}
	c.h.add(c.id, in, call, lockOutput{ok: resp.Forced, token: resp.Token})
}

// lockedToken reads the holder's token from a refused try-acquire (0 when
// the answer did not say).
var lockedToken = regexp.MustCompile(`\(token (\d+)\)$`)

// acquire takes key and records the outcome; nil when not granted.
func (c *workClient) acquire(ctx context.Context, key string, try bool) (*client.Lock, int) {
	lease := int(leaseIDs.Add(1))
	in := lockInput{kind: opAcquire, key: key, client: c.id, lease: lease, try: try}
	call := c.h.now()
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.w.opBudget)
	var l *client.Lock
	var err error
	if try {
		l, err = c.cl.TryAcquire(actx, key, client.WithTTL(c.w.ttl))
	} else {
		l, err = c.cl.Acquire(actx, key, client.WithTTL(c.w.ttl))
	}
	cancel()
	switch {
	case err == nil:
		c.h.add(c.id, in, call, lockOutput{ok: true, token: l.Token(), value: string(l.Value()), deadline: c.h.at(l.Deadline())})
		return l, lease
	case try && errors.Is(err, client.ErrLocked):
		var tok uint64
		if m := lockedToken.FindStringSubmatch(err.Error()); m != nil {
			tok, _ = strconv.ParseUint(m[1], 10, 64)
		}
		c.h.add(c.id, in, call, lockOutput{token: tok})
		sleepCtx(ctx, 20*time.Millisecond)
	default:
		// Timed out, 503, lost connection: granted or not, we do not
		// know (the client withdrew the request; a grant may remain
		// until its lease ends).
		c.h.add(c.id, in, call, lockOutput{unknown: true})
		sleepCtx(ctx, 50*time.Millisecond) // back off while the fault lasts
	}
	return nil, lease
}

// hold takes key, works under the lease and ends it.
func (c *workClient) hold(ctx context.Context, key string) {
	l, lease := c.acquire(ctx, key, c.rnd.IntN(5) == 0)
	if l == nil {
		return
	}
	if c.w.resource != nil {
		c.w.resource.write(key, l.Token(), c.h)
	}
	for range c.rnd.IntN(3) {
		if c.rnd.IntN(2) == 0 {
			c.write(l, lease, c.newValue())
		} else {
			c.refresh(l, lease)
		}
	}
	switch r := c.rnd.IntN(8); {
	case r == 0 && c.w.abandon:
		return // the lease expires
	case r == 1:
		// A write racing the holder's own release (without a value): if
		// both are acknowledged, the write came first, and the next holder
		// must read it.
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); c.write(l, lease, c.newValue()) }()
		c.release(l, lease, "")
		wg.Wait()
	case r == 2:
		c.release(l, lease, "")
	default:
		c.release(l, lease, c.newValue())
	}
	if c.rnd.IntN(8) == 0 {
		// Under the ended lease: must be refused.
		if c.rnd.IntN(2) == 0 {
			c.write(l, lease, c.newValue())
		} else {
			c.refresh(l, lease)
		}
	}
}

// outcome classifies the answer to a release, write or refresh.
func outcome(err error) lockOutput {
	switch {
	case err == nil:
		return lockOutput{ok: true}
	case errors.Is(err, client.ErrNotHeld):
		return lockOutput{}
	}
	return lockOutput{unknown: true}
}

func (c *workClient) write(l *client.Lock, lease int, value string) {
	in := lockInput{kind: opWrite, key: l.Key(), client: c.id, lease: lease, value: value}
	call := c.h.now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := l.Write(ctx, []byte(value))
	cancel()
	c.h.add(c.id, in, call, outcome(err))
}

func (c *workClient) refresh(l *client.Lock, lease int) {
	in := lockInput{kind: opRefresh, key: l.Key(), client: c.id, lease: lease}
	call := c.h.now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	err := l.Refresh(ctx, c.w.ttl)
	cancel()
	out := outcome(err)
	if out.ok {
		out.deadline = c.h.at(l.Deadline())
	}
	c.h.add(c.id, in, call, out)
}

// release ends the lease, writing value ("" keeps the state), retrying
// until the answer is known or the budget (less than the lease) runs out.
func (c *workClient) release(l *client.Lock, lease int, value string) {
	in := lockInput{kind: opRelease, key: l.Key(), client: c.id, lease: lease, value: value}
	call := c.h.now()
	out := lockOutput{unknown: true}
	deadline := time.Now().Add(c.w.opBudget)
	ambiguous := false
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var err error
		if value == "" {
			err = l.Release(ctx)
		} else {
			err = l.ReleaseWith(ctx, []byte(value))
		}
		cancel()
		if err == nil {
			out = lockOutput{ok: true}
			break
		}
		if errors.Is(err, client.ErrNotHeld) {
			if !ambiguous {
				out = lockOutput{}
			} // else: an earlier attempt may have released it
			break
		}
		ambiguous = true
		time.Sleep(20 * time.Millisecond)
	}
	c.h.add(c.id, in, call, out)
}

// fencedResource is the downstream system the tokens protect: it accepts
// a write only with a token at least as high as the highest it has seen.
type fencedResource struct {
	mu       sync.Mutex
	highest  map[string]uint64
	accepted map[string][]uint64
}

func newFencedResource() *fencedResource {
	return &fencedResource{highest: map[string]uint64{}, accepted: map[string][]uint64{}}
}

func (r *fencedResource) write(key string, token uint64, h *history) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if token < r.highest[key] {
		h.staleRejected.Add(1)
		return false
	}
	r.highest[key] = token
	r.accepted[key] = append(r.accepted[key], token)
	return true
}
