package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/memstore"
)

func TestLogLimiterOneLinePerCausePerInterval(t *testing.T) {
	l := newLogLimiter(10 * time.Second)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	steps := []struct {
		cause          string
		at             time.Duration
		ok             bool
		wantSuppressed int
	}{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"b", time.Second, true, 0}, // another cause is not held back by a
		{"a", 9 * time.Second, false, 0},
		{"a", 10 * time.Second, true, 2}, // the interval ended: the two held back are reported
		{"a", 11 * time.Second, false, 0},
		{"b", 30 * time.Second, true, 0},
		{"a", 30 * time.Second, true, 1},
	}
	for i, st := range steps {
		ok, n := l.allow(st.cause, t0.Add(st.at))
		if ok != st.ok || n != st.wantSuppressed {
			t.Errorf("step %d: allow(%q, +%v) = %v, %d, want %v, %d", i, st.cause, st.at, ok, n, st.ok, st.wantSuppressed)
		}
	}
}

func TestLogLimiterForgetsOldCauses(t *testing.T) {
	l := newLogLimiter(time.Second)
	t0 := time.Now()
	for i := range maxCauses {
		l.allow(fmt.Sprint("cause ", i), t0)
	}
	l.allow("one more", t0.Add(2*time.Second))
	if len(l.causes) != 1 {
		t.Errorf("%d causes remembered after the bound was reached, want 1 (the old ones forgotten)", len(l.causes))
	}
}

func TestRootCause(t *testing.T) {
	leaf := errors.New("connection refused")
	notReplicated := fmt.Errorf("redis: write not acknowledged (%w)", store.ErrUnavailable)
	cases := []struct {
		err  error
		want error
	}{
		{leaf, leaf},
		{fmt.Errorf("%w: %w", store.ErrUnavailable, fmt.Errorf("dial tcp 127.0.0.1:1: %w", leaf)), leaf},
		{fmt.Errorf("%w: 0 of 1 replicas of 127.0.0.1:1", notReplicated), notReplicated},
		{store.ErrUnavailable, store.ErrUnavailable},
		{fmt.Errorf("acquire: %w", context.DeadlineExceeded), context.DeadlineExceeded},
	}
	for _, c := range cases {
		if got := rootCause(c.err); got != c.want {
			t.Errorf("rootCause(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// Capabilities of a store, one interface each: the shapes watchStore must
// keep.
type (
	notifierOnly    struct{ store.Notifier }
	transferrerOnly struct{ store.Transferrer }
	adminOnly       struct{ store.Admin }
)

// shapedStore is st with only the optional interfaces named.
func shapedStore(st *memstore.Store, notify, transfer, admin bool) store.Store {
	base := struct{ store.Store }{st}
	switch {
	case notify && transfer && admin:
		return struct {
			store.Store
			notifierOnly
			transferrerOnly
			adminOnly
		}{st, notifierOnly{st}, transferrerOnly{st}, adminOnly{st}}
	case notify && transfer:
		return struct {
			store.Store
			notifierOnly
			transferrerOnly
		}{st, notifierOnly{st}, transferrerOnly{st}}
	case notify && admin:
		return struct {
			store.Store
			notifierOnly
			adminOnly
		}{st, notifierOnly{st}, adminOnly{st}}
	case transfer && admin:
		return struct {
			store.Store
			transferrerOnly
			adminOnly
		}{st, transferrerOnly{st}, adminOnly{st}}
	case notify:
		return struct {
			store.Store
			notifierOnly
		}{st, notifierOnly{st}}
	case transfer:
		return struct {
			store.Store
			transferrerOnly
		}{st, transferrerOnly{st}}
	case admin:
		return struct {
			store.Store
			adminOnly
		}{st, adminOnly{st}}
	}
	return base
}

// TestWatchStoreKeepsTheOptionalInterfaces: the service decides by type
// assertion whether the store notifies, transfers and administers; the
// wrapper that times its calls must not add or hide any of them.
func TestWatchStoreKeepsTheOptionalInterfaces(t *testing.T) {
	srv, err := memstore.NewServer(memstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var calls []string
	done := func(op, key string, _ time.Time, err error) { calls = append(calls, op+" "+key+" "+errorKind(err)) }
	for _, n := range []bool{false, true} {
		for _, tr := range []bool{false, true} {
			for _, a := range []bool{false, true} {
				w := watchStore(shapedStore(memstore.New(srv), n, tr, a), done)
				_, isN := w.(store.Notifier)
				_, isT := w.(store.Transferrer)
				_, isA := w.(store.Admin)
				if isN != n || isT != tr || isA != a {
					t.Errorf("store with Notifier %v, Transferrer %v, Admin %v wrapped: %v, %v, %v", n, tr, a, isN, isT, isA)
				}
			}
		}
	}
	w := watchStore(memstore.New(srv), done)
	ctx := t.Context()
	if _, err := w.Acquire(ctx, "k", "id1", store.AcquireOptions{TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	_, _ = w.Acquire(ctx, "k", "id2", store.AcquireOptions{TTL: time.Minute})
	_, _ = w.(store.Transferrer).Transfer(ctx, "k", "id1", store.Update{}, "id2", store.AcquireOptions{TTL: time.Minute})
	_ = w.Release(ctx, "k", "id1", store.Update{})
	_, _, _ = w.(store.Admin).List(ctx, "", "", 10)
	_, _ = w.(store.Admin).Force(ctx, "k")
	want := []string{"acquire k ok", "acquire k locked", "transfer k ok", "release k not_held", "list  ok", "force k ok"}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Errorf("calls reported = %q, want %q", calls, want)
	}
}

// logBuffer collects JSON log lines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the lines logged with message msg.
func (l *logBuffer) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader(l.b.Bytes()))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("log line: %v", err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestOverloadLoggedOncePerLimitPerInterval: requests refused for a full
// waiting room are logged once per limit per HealthInterval, with the
// number held back, not once per request.
func TestOverloadLoggedOncePerLimitPerInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logBuffer
		h := newHarness(t, false, Config{MaxWaiters: 1, HealthInterval: 10 * time.Second,
			Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
		h.holder("busy", time.Hour)
		h.send("acquire", "busy", acquireBody(newLockID(), 60_000, 1000, ""))
		if n := h.parked(); n != 1 {
			t.Fatalf("%d parked, want 1", n)
		}
		for range 3 {
			_, e := h.answer(h.send("acquire", "busy", acquireBody(newLockID(), 60_000, 1000, "")))
			if e == "" {
				t.Fatal("acquire beyond MaxWaiters answered without error")
			}
		}
		if got := logs.lines(t, "request refused: instance overloaded"); len(got) != 1 || got[0]["limit"] != "max_waiters" {
			t.Fatalf("log after 3 refusals = %v, want one line for max_waiters", got)
		}
		time.Sleep(10 * time.Second)
		h.answer(h.send("acquire", "busy", acquireBody(newLockID(), 60_000, 1000, "")))
		got := logs.lines(t, "request refused: instance overloaded")
		if len(got) != 2 || got[1]["suppressed"] != 2.0 {
			t.Fatalf("log after the interval = %v, want a second line with suppressed 2", got)
		}
	})
}

// observed records what an Observer is told.
type observed struct {
	mu      sync.Mutex
	answers []string
	calls   []string
}

func (o *observed) Answered(op string, code int, d time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.answers = append(o.answers, fmt.Sprint(op, " ", code))
}

func (o *observed) StoreCalled(c StoreCall) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, c.Op+" "+c.Outcome)
}

// TestObserverToldOfAnswersAndStoreCalls: the Observer hears every answer
// with its code and every store call with its outcome.
func TestObserverToldOfAnswersAndStoreCalls(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		obs := &observed{}
		h := newHarness(t, false, Config{Observer: obs})
		h.acquired("acquire", h.send("acquire", "k", acquireBody(newLockID(), 0, 1000, "")))
		h.answer(h.send("release", "k", `{"lock_id":"`+newLockID()+`"}`))
		h.answer(h.send("refresh", "k", `{"lock_id":"`+newLockID()+`"}`))
		h.answer(h.send("get", "k", ``))
		synctest.Wait()
		obs.mu.Lock()
		defer obs.mu.Unlock()
		wantAnswers := []string{"acquire 0", "release 0", "refresh 409", "get 0"} // released:false is an answer
		wantCalls := []string{"acquire ok", "release not_held", "refresh not_held", "get ok"}
		if fmt.Sprint(obs.answers) != fmt.Sprint(wantAnswers) || fmt.Sprint(obs.calls) != fmt.Sprint(wantCalls) {
			t.Errorf("observed answers %q, store calls %q; want %q, %q", obs.answers, obs.calls, wantAnswers, wantCalls)
		}
	})
}

// TestRecoveryLoggedOncePerIntervalAndNeverLost: a store that fails and
// answers by turns logs its first recovery at once; a later one within the
// interval is held back and logged when the interval ends, unless the
// store fails again by then. Failures of one cause are logged once per
// interval.
func TestRecoveryLoggedOncePerIntervalAndNeverLost(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logBuffer
		h := newHarness(t, false, Config{HealthInterval: 10 * time.Second, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
		down := fmt.Errorf("%w: connection refused", store.ErrUnavailable)
		get := func(fail bool) {
			t.Helper()
			if fail {
				held := h.gate.Hold(storegate.Get, "k")
				held.Fail(down)
				held.Open()
			}
			h.answer(h.send("get", "k", ""))
		}
		get(true)
		get(false) // recovered: logged at once
		get(true)
		get(false) // recovered again within the interval: held back
		if n := len(logs.lines(t, "store recovered")); n != 1 {
			t.Fatalf("%d recovery lines before the interval ended, want 1", n)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		rec := logs.lines(t, "store recovered")
		if len(rec) != 2 || rec[1]["failed_calls"] != 1.0 {
			t.Fatalf("recovery lines after the interval = %v, want a second one", rec)
		}
		if fails := logs.lines(t, "store call failed"); len(fails) != 1 {
			t.Errorf("failure lines = %v, want one (one cause, one interval)", fails)
		}

		get(true)
		get(false) // held back: the interval since the last recovery line has not ended
		get(true)  // fails again before it ends: the held-back recovery is not logged
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if rec := logs.lines(t, "store recovered"); len(rec) != 2 {
			t.Errorf("recovery lines = %v, want still 2: the store failed again before the held-back one was due", rec)
		}
		if err, _ := h.s.health.state(time.Now(), time.Hour); !errors.Is(err, ErrNotReady) {
			t.Errorf("health after the last failure = %v, want ErrNotReady", err)
		}
	})
}
