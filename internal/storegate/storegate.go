// Package storegate wraps a store.Store for deterministic tests of the
// service: a test holds chosen calls at a gate, learns when they reach it,
// lets them through when it wants, and can make them fail before or after
// they reach the store. Every other call goes straight through.
//
//	st, g := storegate.New(t, memstore.New(srv))
//	h := g.Hold(storegate.Acquire, lockID)
//	... start the service on st, make it acquire for lockID ...
//	<-h.Entered() // the acquire is in flight
//	... race something against it ...
//	h.Open()
package storegate

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/lockservice/lockservice/store"
)

// Op names a store call that can be held.
type Op int

// The calls that can be held. Close and Notify are never held.
const (
	Acquire Op = iota + 1
	Refresh
	Release
	Write
	Get
	Transfer
)

func (op Op) String() string {
	switch op {
	case Acquire:
		return "Acquire"
	case Refresh:
		return "Refresh"
	case Release:
		return "Release"
	case Write:
		return "Write"
	case Get:
		return "Get"
	case Transfer:
		return "Transfer"
	}
	return fmt.Sprintf("Op(%d)", int(op))
}

// Gate holds the calls of one wrapped store. Create it with New.
type Gate struct {
	t  testing.TB
	st store.Store

	mu   sync.Mutex
	held []*Held // waiting for their call, in the order of Hold
}

// New wraps st. The returned store forwards every call to st, except the
// ones that g holds; it implements store.Notifier and store.Transferrer
// exactly when st does (Notify is forwarded as is). Close is forwarded too.
func New(t testing.TB, st store.Store) (store.Store, *Gate) {
	g := &Gate{t: t, st: st}
	b := base{g}
	_, notifies := st.(store.Notifier)
	_, transfers := st.(store.Transferrer)
	switch {
	case notifies && transfers:
		return notifyTransfer{b, notify{g}, transfer{g}}, g
	case notifies:
		return notifyOnly{b, notify{g}}, g
	case transfers:
		return transferOnly{b, transfer{g}}, g
	}
	return b, g
}

// Hold makes the next call of op that matches id wait at the gate until
// the returned Held is opened, or the call's context ends (the call then
// returns the context's error without reaching the store). A call matches
// when id is its key or its lock id (either of Transfer's); an empty id
// matches every call of op. Several holds that match one call are used one
// per call, in the order of Hold. The gate opens by itself when the test
// ends (in t.Cleanup, registered now), so no call stays blocked.
func (g *Gate) Hold(op Op, id string) *Held {
	h := &Held{op: op, id: id, entered: make(chan struct{}), open: make(chan struct{}), done: make(chan struct{})}
	g.mu.Lock()
	g.held = append(g.held, h)
	g.mu.Unlock()
	g.t.Cleanup(h.Open)
	return h
}

// take removes and returns the first hold matching a call of op, or nil.
func (g *Gate) take(op Op, key string, ids ...string) *Held {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, h := range g.held {
		if h.op == op && (h.id == "" || h.id == key || slices.Contains(ids, h.id)) {
			g.held = slices.Delete(g.held, i, i+1)
			return h
		}
	}
	return nil
}

// pass runs call through the hold matching it, if any.
func (g *Gate) pass(ctx context.Context, op Op, key string, ids []string, call func() error) error {
	h := g.take(op, key, ids...)
	if h == nil {
		return call()
	}
	defer close(h.done)
	close(h.entered)
	select {
	case <-h.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	h.mu.Lock()
	fail, after := h.fail, h.after
	h.mu.Unlock()
	if fail != nil && !after {
		return fail
	}
	err := call()
	if fail != nil {
		return fail
	}
	return err
}

// Held is one call held at the gate, or waited for.
type Held struct {
	op      Op
	id      string
	entered chan struct{}
	open    chan struct{}
	once    sync.Once
	done    chan struct{}

	mu    sync.Mutex
	fail  error
	after bool // fail after the call reached the store
}

// Entered is closed when the matching call has reached the gate.
func (h *Held) Entered() <-chan struct{} { return h.entered }

// Done is closed when the matching call has returned from the gate.
func (h *Held) Done() <-chan struct{} { return h.done }

// Open lets the matching call through, now if it waits at the gate, or
// straight away when it comes. Calling it again does nothing.
func (h *Held) Open() { h.once.Do(func() { close(h.open) }) }

// Fail makes the matching call return err without reaching the store: the
// operation is not applied. It must be called before Open.
func (h *Held) Fail(err error) { h.setFail(err, false) }

// FailAfter makes the matching call reach the store and then return err
// in place of the store's answer: the operation is applied (if the store
// applied it) but the caller cannot tell, as when a reply is lost. It must
// be called before Open.
func (h *Held) FailAfter(err error) { h.setFail(err, true) }

func (h *Held) setFail(err error, after bool) {
	h.mu.Lock()
	h.fail, h.after = err, after
	h.mu.Unlock()
}

// WaitEntered waits until the matching call has reached the gate, failing
// the test after timeout. It must be called from the test's goroutine.
func (h *Held) WaitEntered(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-h.entered:
	case <-time.After(timeout):
		t.Fatalf("no %s call for %q reached the gate within %v", h.op, h.id, timeout)
	}
}

// base forwards the calls of store.Store through the gate. A call that
// returns an error returns the zero result with it.
type base struct{ g *Gate }

func (b base) Acquire(ctx context.Context, key, lockID string, opts store.AcquireOptions) (gr store.Grant, err error) {
	err = b.g.pass(ctx, Acquire, key, []string{lockID}, func() error {
		gr, err = b.g.st.Acquire(ctx, key, lockID, opts)
		return err
	})
	if err != nil {
		return store.Grant{}, err
	}
	return gr, nil
}

func (b base) Refresh(ctx context.Context, key, lockID string, ttl time.Duration) (l store.Lease, err error) {
	err = b.g.pass(ctx, Refresh, key, []string{lockID}, func() error {
		l, err = b.g.st.Refresh(ctx, key, lockID, ttl)
		return err
	})
	if err != nil {
		return store.Lease{}, err
	}
	return l, nil
}

func (b base) Release(ctx context.Context, key, lockID string, u store.Update) error {
	return b.g.pass(ctx, Release, key, []string{lockID}, func() error {
		return b.g.st.Release(ctx, key, lockID, u)
	})
}

func (b base) Write(ctx context.Context, key, lockID string, u store.Update) error {
	return b.g.pass(ctx, Write, key, []string{lockID}, func() error {
		return b.g.st.Write(ctx, key, lockID, u)
	})
}

func (b base) Get(ctx context.Context, key string) (info store.Info, err error) {
	err = b.g.pass(ctx, Get, key, nil, func() error {
		info, err = b.g.st.Get(ctx, key)
		return err
	})
	if err != nil {
		return store.Info{}, err
	}
	return info, nil
}

func (b base) Close() error { return b.g.st.Close() }

type notify struct{ g *Gate }

func (n notify) Notify(fn func(store.Event)) { n.g.st.(store.Notifier).Notify(fn) }

type transfer struct{ g *Gate }

func (x transfer) Transfer(ctx context.Context, key, fromID string, u store.Update, toID string, opts store.AcquireOptions) (gr store.Grant, err error) {
	err = x.g.pass(ctx, Transfer, key, []string{fromID, toID}, func() error {
		gr, err = x.g.st.(store.Transferrer).Transfer(ctx, key, fromID, u, toID, opts)
		return err
	})
	if err != nil {
		return store.Grant{}, err
	}
	return gr, nil
}

// The four shapes of the wrapped store.
type (
	notifyOnly struct {
		base
		notify
	}
	transferOnly struct {
		base
		transfer
	}
	notifyTransfer struct {
		base
		notify
		transfer
	}
)
