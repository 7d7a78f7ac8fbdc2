package tests

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
)

// The workload: clients take locks on a few keys through the real service,
// read the counter kept in the lock's state, and release writing counter+1
// (a fenced read-modify-write register). Every operation is recorded with
// its invocation and response time; an operation whose outcome the client
// could not learn (timeouts, 503s during faults) is recorded as unknown.
//
// The model, per key: (holder, counter, last token). It is checked for
// linearizability with porcupine, so one check covers mutual exclusion
// (an acquire succeeds only when nobody holds the key), no lost or
// phantom updates (an acquire reads exactly the counter of the last
// applied release) and token monotonicity (each grant's token is greater
// than every token granted before it in the linearization).
//
// Unknown outcomes are nondeterministic steps: an acquire that may have
// been granted leaves an orphan lease (holder -2) that nobody releases and
// that may expire at any time; a release that may have been applied either
// freed the key with the new counter or left the lease as an orphan.

const (
	free   = -1
	orphan = -2 // granted to a request whose client gave up; expires some time
)

type opKind int

const (
	opAcquire opKind = iota
	opRelease
)

type lockInput struct {
	kind   opKind
	key    string
	client int
	value  int // release: the counter written
}

type lockOutput struct {
	unknown bool
	ok      bool   // acquire: granted; release: released
	token   uint64 // acquire
	value   int    // acquire: the counter read
}

type lockState struct {
	holder  int
	counter int
	token   uint64
}

var lockModel = porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := op.Input.(lockInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []any { return []any{lockState{holder: free}} },
	Step: func(st, in, out any) []any {
		s, i, o := st.(lockState), in.(lockInput), out.(lockOutput)
		switch i.kind {
		case opAcquire:
			if o.unknown {
				if s.holder == free || s.holder == orphan {
					n := s
					n.holder = orphan
					return []any{s, n}
				}
				return []any{s}
			}
			if !o.ok || (s.holder != free && s.holder != orphan) || o.value != s.counter || o.token <= s.token {
				return nil
			}
			return []any{lockState{holder: i.client, counter: s.counter, token: o.token}}
		default: // release
			if o.unknown {
				if s.holder != i.client {
					return []any{s}
				}
				applied := lockState{holder: free, counter: i.value, token: s.token}
				lost := s
				lost.holder = orphan
				return []any{applied, lost}
			}
			if o.ok {
				if s.holder != i.client {
					return nil
				}
				return []any{lockState{holder: free, counter: i.value, token: s.token}}
			}
			if s.holder == i.client {
				return nil // told "not held" while holding a live lease
			}
			return []any{s}
		}
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(lockInput), out.(lockOutput)
		res := fmt.Sprintf("ok=%v token=%d value=%d", o.ok, o.token, o.value)
		if o.unknown {
			res = "unknown"
		}
		if i.kind == opAcquire {
			return fmt.Sprintf("acquire(%s, c%d) -> %s", i.key, i.client, res)
		}
		return fmt.Sprintf("release(%s, c%d, %d) -> %s", i.key, i.client, i.value, res)
	},
}

// history records operations from concurrent clients.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation

	acquires, releases, unknown, staleRejected atomic.Int64
}

func newHistory() *history { return &history{start: time.Now()} }

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(client int, in lockInput, call int64, out lockOutput) {
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: h.now()})
	h.mu.Unlock()
	if out.unknown {
		h.unknown.Add(1)
	}
}

// workload is the client side of a fault scenario.
type workload struct {
	natsURL  string
	clients  int
	keys     int
	ttl      time.Duration
	opBudget time.Duration // how long a client keeps retrying one operation
	resource *fencedResource
}

// run drives the workload until ctx ends and returns the history.
func (w workload) run(t *testing.T, ctx context.Context) *history {
	h := newHistory()
	var wg sync.WaitGroup
	prefix := "h" + strconv.FormatInt(time.Now().UnixNano()%1e9, 36)
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
			w.client(ctx, h, cl, c, prefix)
		}()
	}
	wg.Wait()
	return h
}

func (w workload) client(ctx context.Context, h *history, cl *client.Client, id int, prefix string) {
	rnd := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	for ctx.Err() == nil {
		key := fmt.Sprintf("%s.k%d", prefix, rnd.IntN(w.keys))
		in := lockInput{kind: opAcquire, key: key, client: id}
		call := h.now()
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), w.opBudget)
		l, err := cl.Acquire(actx, key, client.WithTTL(w.ttl))
		cancel()
		if err != nil {
			// Timed out, 503, lost connection: granted or not, we do not
			// know (the client withdrew the request; a grant may remain
			// until its lease ends).
			h.add(id, in, call, lockOutput{unknown: true})
			sleepCtx(ctx, 50*time.Millisecond) // back off while the fault lasts
			continue
		}
		n := 0
		if v := l.Value(); v != nil {
			n, _ = strconv.Atoi(string(v))
		}
		h.add(id, in, call, lockOutput{ok: true, token: l.Token(), value: n})
		h.acquires.Add(1)
		if w.resource != nil {
			w.resource.write(key, l.Token(), h)
		}
		// Release, writing counter+1, retrying until the answer is known
		// or the budget (less than the lease) runs out.
		in = lockInput{kind: opRelease, key: key, client: id, value: n + 1}
		call = h.now()
		out := lockOutput{unknown: true}
		deadline := time.Now().Add(w.opBudget)
		ambiguous := false
		for time.Now().Before(deadline) {
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := l.ReleaseWith(rctx, []byte(strconv.Itoa(n+1)))
			cancel()
			if err == nil {
				out = lockOutput{ok: true}
				break
			}
			if errors.Is(err, client.ErrNotHeld) {
				if !ambiguous {
					out = lockOutput{ok: false}
				} // else: an earlier attempt may have released it
				break
			}
			ambiguous = true
			time.Sleep(20 * time.Millisecond)
		}
		h.add(id, in, call, out)
		if out.ok {
			h.releases.Add(1)
		}
	}
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

// check verifies the history, failing t on a violation, and returns a
// one-line summary.
func (h *history) check(t *testing.T, name string) string {
	t.Helper()
	summary, violation := h.verify(t, name)
	if violation != "" {
		t.Errorf("%s: %s", name, violation)
	}
	return summary
}

// verify checks the history and describes a violation ("" when none).
func (h *history) verify(t *testing.T, name string) (summary, violation string) {
	t.Helper()
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	// Tokens: unique per key across every grant.
	seen := map[string]map[uint64]bool{}
	for _, op := range ops {
		in, out := op.Input.(lockInput), op.Output.(lockOutput)
		if in.kind != opAcquire || !out.ok {
			continue
		}
		if seen[in.key] == nil {
			seen[in.key] = map[uint64]bool{}
		}
		if seen[in.key][out.token] {
			violation = fmt.Sprintf("token %d granted twice for %s; ", out.token, in.key)
		}
		seen[in.key][out.token] = true
	}
	model := lockModel.ToModel()
	res, info := porcupine.CheckOperationsVerbose(model, ops, 2*time.Minute)
	switch res {
	case porcupine.Illegal:
		path := t.TempDir() + "/" + name + ".html"
		if err := porcupine.VisualizePath(model, info, path); err == nil {
			t.Logf("visualization of the violation: %s", path)
		}
		violation += fmt.Sprintf("history of %d operations is NOT linearizable (mutual exclusion, lost update or token order violated)", len(ops))
	case porcupine.Unknown:
		violation += fmt.Sprintf("linearizability check timed out on %d operations", len(ops))
	}
	if h.acquires.Load() == 0 {
		violation += "no lock was acquired: the workload made no progress"
	}
	return fmt.Sprintf("%d ops (%d grants, %d acknowledged releases, %d unknown outcomes), linearizable: %v, stale writes rejected: %d",
		len(ops), h.acquires.Load(), h.releases.Load(), h.unknown.Load(), res == porcupine.Ok, h.staleRejected.Load()), violation
}
