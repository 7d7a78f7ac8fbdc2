package service

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/lockservice/lockservice/store"
)

// watchedStore is the store as the instance calls it: every call is timed
// and its outcome goes to done (Service.storeDone: the log, the store's
// health, the Observer). watchStore gives it the optional interfaces of
// the store it wraps, and only those, so the instance's type assertions
// see the store's own capabilities.
type watchedStore struct {
	st   store.Store
	done func(op, key string, start time.Time, err error)
}

// watchStore wraps st; the result implements store.Notifier,
// store.Transferrer and store.Admin exactly when st does.
func watchStore(st store.Store, done func(op, key string, start time.Time, err error)) store.Store {
	w := watchedStore{st: st, done: done}
	n, isN := st.(store.Notifier)
	t, isT := st.(store.Transferrer)
	a, isA := st.(store.Admin)
	nw, tw, aw := watchedNotifier{n}, watchedTransferrer{w, t}, watchedAdmin{w, a}
	switch {
	case isN && isT && isA:
		return struct {
			watchedStore
			watchedNotifier
			watchedTransferrer
			watchedAdmin
		}{w, nw, tw, aw}
	case isN && isT:
		return struct {
			watchedStore
			watchedNotifier
			watchedTransferrer
		}{w, nw, tw}
	case isN && isA:
		return struct {
			watchedStore
			watchedNotifier
			watchedAdmin
		}{w, nw, aw}
	case isT && isA:
		return struct {
			watchedStore
			watchedTransferrer
			watchedAdmin
		}{w, tw, aw}
	case isN:
		return struct {
			watchedStore
			watchedNotifier
		}{w, nw}
	case isT:
		return struct {
			watchedStore
			watchedTransferrer
		}{w, tw}
	case isA:
		return struct {
			watchedStore
			watchedAdmin
		}{w, aw}
	}
	return w
}

func (w watchedStore) Acquire(ctx context.Context, key, lockID string, opts store.AcquireOptions) (store.Grant, error) {
	start := time.Now()
	g, err := w.st.Acquire(ctx, key, lockID, opts)
	w.done("acquire", key, start, err)
	return g, err
}

func (w watchedStore) Refresh(ctx context.Context, key, lockID string, ttl time.Duration) (store.Lease, error) {
	start := time.Now()
	l, err := w.st.Refresh(ctx, key, lockID, ttl)
	w.done("refresh", key, start, err)
	return l, err
}

func (w watchedStore) Release(ctx context.Context, key, lockID string, u store.Update) error {
	start := time.Now()
	err := w.st.Release(ctx, key, lockID, u)
	w.done("release", key, start, err)
	return err
}

func (w watchedStore) Write(ctx context.Context, key, lockID string, u store.Update) error {
	start := time.Now()
	err := w.st.Write(ctx, key, lockID, u)
	w.done("write", key, start, err)
	return err
}

func (w watchedStore) Get(ctx context.Context, key string) (store.Info, error) {
	start := time.Now()
	info, err := w.st.Get(ctx, key)
	w.done("get", key, start, err)
	return info, err
}

func (w watchedStore) Close() error { return w.st.Close() }

type watchedNotifier struct{ n store.Notifier }

func (n watchedNotifier) Notify(fn func(store.Event)) { n.n.Notify(fn) }

type watchedTransferrer struct {
	w watchedStore
	t store.Transferrer
}

func (t watchedTransferrer) Transfer(ctx context.Context, key, fromID string, u store.Update, toID string, opts store.AcquireOptions) (store.Grant, error) {
	start := time.Now()
	g, err := t.t.Transfer(ctx, key, fromID, u, toID, opts)
	t.w.done("transfer", key, start, err)
	return g, err
}

type watchedAdmin struct {
	w watchedStore
	a store.Admin
}

func (a watchedAdmin) List(ctx context.Context, prefix, cursor string, limit int) ([]store.Held, string, error) {
	start := time.Now()
	held, next, err := a.a.List(ctx, prefix, cursor, limit)
	a.w.done("list", prefix, start, err)
	return held, next, err
}

func (a watchedAdmin) Force(ctx context.Context, key string) (store.Lease, error) {
	start := time.Now()
	l, err := a.a.Force(ctx, key)
	a.w.done("force", key, start, err)
	return l, err
}

// storeDone takes the outcome of a store call that started at start: it
// tells the Observer, logs a failure (once per cause per interval) and
// follows the store's health, logging its recovery.
func (s *Service) storeDone(op, key string, start time.Time, err error) {
	end := time.Now()
	outcome := errorKind(err)
	if s.cfg.Observer != nil {
		s.cfg.Observer.StoreCalled(StoreCall{Op: op, Outcome: outcome, Duration: end.Sub(start), Err: err})
	}
	if outcome == OutcomeCanceled {
		return
	}
	if failed(outcome) {
		cause := rootCause(err).Error()
		s.logLimited(slog.LevelError, storeFailureCause+outcome+": "+cause, "store call failed",
			slog.String("outcome", outcome), slog.String("cause", cause),
			slog.String("op", op), slog.String("key", key), slog.Any("err", err))
	}
	if rec, ok := s.health.record(start, end, outcome, err); ok {
		// The recovery line counts the failed calls: the failure lines
		// held back are not carried to the next outage's first line.
		s.limiter.clearCounts(func(cause string) bool { return strings.HasPrefix(cause, storeFailureCause) })
		s.logRecovered(rec)
	}
}

// storeFailureCause starts the log limiter's causes of "store call failed"
// lines.
const storeFailureCause = "store call failed: "
