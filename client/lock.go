package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lockservice/lockservice/service/api"
)

// Lock is a held lock. Its methods are safe for concurrent use, also with
// the keep-alive's renewals running (WithKeepAlive): Refresh, Write,
// Deadline, TTL, Done, Err and the releasing methods may be called from any
// goroutine. When refreshes overlap, Deadline follows the one sent last
// that succeeded.
//
// State values: a nil value means "no new state" and a non-nil empty value
// means "an empty state". ReleaseWith(ctx, nil) releases keeping the state,
// as Release does; ReleaseWith(ctx, []byte{}) and Write(ctx, []byte{})
// write an empty state; Write(ctx, nil) has nothing to write and returns
// an error matching ErrBadRequest.
//
// A Lock ends when the caller releases it (Release, ReleaseWith, Delete),
// when its lease is lost, or when the cap of WithMaxHold is reached: Done
// is then closed and Err says why. A lease is lost when the service
// answers that the lock id does not hold it (a refresh or write answered
// 409), or when its deadline (Deadline, by this client's count) passes
// without a renewal: with WithKeepAlive the client renews it, without it
// only Refresh does. Once ended, a Lock stays ended, even if a later
// Refresh succeeds.
type Lock struct {
	c       *Client
	key, id string
	owner   string
	token   uint64
	value   []byte

	// ctx ends with the lock; its cause is the reason (Err).
	ctx context.Context
	end context.CancelCauseFunc

	mu       sync.Mutex
	ttl      time.Duration
	sent     time.Time // when the request that set deadline was sent
	deadline time.Time
	renewErr error       // the keep-alive's last failed renewal, since its last success
	expiry   *time.Timer // ends the lock at the deadline; nil until held
	capped   *time.Timer // ends the lock at the max hold; nil without one
	// renewing is closed when the keep-alive goroutine has returned; nil
	// without keep-alive. Set before the Lock is returned, never changed.
	renewing chan struct{}
}

func (c *Client) newLock(key string, sent time.Time, r api.AcquireResponse) *Lock {
	ttl := time.Duration(r.TTLms) * time.Millisecond
	ctx, end := context.WithCancelCause(context.Background())
	return &Lock{c: c, key: key, id: r.LockID, owner: r.Owner, token: r.Token, value: r.Value,
		ctx: ctx, end: end, ttl: ttl, sent: sent, deadline: sent.Add(ttl)}
}

// Key returns the locked key.
func (l *Lock) Key() string { return l.key }

// ID returns the lock id: the secret that authorizes release, refresh,
// write and delete.
func (l *Lock) ID() string { return l.id }

// Token returns the fencing token of this grant.
func (l *Lock) Token() uint64 { return l.token }

// Value returns the state object read at acquire time (nil when none).
func (l *Lock) Value() []byte { return l.value }

// TTL returns the lease length granted by the last acquire or refresh.
func (l *Lock) TTL() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ttl
}

// Deadline returns when the lease ends at the earliest, by this machine's
// clock: counted from when the acquire or the last successful refresh was
// sent, so it is never later than the service's own expiry.
func (l *Lock) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// Done returns a channel that is closed when the lock ends: released by
// Release, ReleaseWith or Delete (closed when the call starts), its lease
// lost (at once when the service says so, at the latest at Deadline), or
// the cap of WithMaxHold reached. Stop working under the lock, including
// writes fenced by its token, when it is closed.
func (l *Lock) Done() <-chan struct{} { return l.ctx.Done() }

// Err returns nil while the lock is held, and why it ended once Done is
// closed:
//   - an error matching ErrReleased when Release, ReleaseWith or Delete
//     was called first (whatever it returned);
//   - an error matching ErrNotHeld when the lease was lost: wrapping the
//     service's 409 answer when it said the lock id does not hold the
//     lock; matching ErrLeaseExpired when the deadline passed without a
//     renewal (wrapping the last failed renewal's error, if any); matching
//     ErrMaxHold when the cap of WithMaxHold was reached.
func (l *Lock) Err() error { return context.Cause(l.ctx) }

// Context returns a context derived from parent that is also cancelled
// when the lock ends, with Err as its cause (context.Cause). Call cancel
// when done with it.
func (l *Lock) Context(parent context.Context) (ctx context.Context, cancel context.CancelFunc) {
	ctx, cancelCause := context.WithCancelCause(parent)
	if l.ctx.Err() != nil {
		cancelCause(context.Cause(l.ctx))
		return ctx, func() {}
	}
	stop := context.AfterFunc(l.ctx, func() { cancelCause(context.Cause(l.ctx)) })
	return ctx, func() { stop(); cancelCause(nil) }
}

// finishLocked ends the lock for reason unless it has ended; it reports
// whether it did. l.mu is held.
func (l *Lock) finishLocked(reason error) bool {
	if l.ctx.Err() != nil {
		return false
	}
	l.end(reason)
	if l.expiry != nil {
		l.expiry.Stop()
	}
	if l.capped != nil {
		l.capped.Stop()
	}
	return true
}

// finish ends the lock for reason unless it has ended; it reports whether
// it did.
func (l *Lock) finish(reason error) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.finishLocked(reason)
}

// lost ends the lock after the service answered err (matching ErrNotHeld)
// to a request that needs the lease.
func (l *Lock) lost(err error) {
	l.finish(fmt.Errorf("client: lease of %q lost: %w", l.key, err))
}

// stopRenewing waits until the keep-alive goroutine, if any, has returned.
// The lock has ended.
func (l *Lock) stopRenewing() {
	if l.renewing != nil {
		<-l.renewing
	}
}

// Release releases the lock leaving the state unchanged. It ends the lock
// (Done, Err matching ErrReleased) and stops its keep-alive first. It
// returns an error matching ErrNotHeld when the lease was already lost.
func (l *Lock) Release(ctx context.Context) error { return l.release(ctx, nil) }

// ReleaseWith writes value as the new state and releases the lock, in one
// atomic step: if the lease was lost it returns ErrNotHeld and nothing is
// written. A nil value writes nothing (ReleaseWith is then Release); an
// empty one writes an empty state. It ends the lock and stops its
// keep-alive first, as Release.
func (l *Lock) ReleaseWith(ctx context.Context, value []byte) error {
	return l.release(ctx, value)
}

// release releases the lock, writing value as the new state unless it is
// nil (an absent value: the state is kept).
func (l *Lock) release(ctx context.Context, value []byte) error {
	l.finish(fmt.Errorf("%w: %q", ErrReleased, l.key))
	l.stopRenewing()
	var resp api.ReleaseResponse
	if err := l.c.call(ctx, api.OpRelease, l.key, api.ReleaseRequest{LockID: l.id, Value: value}, &resp); err != nil {
		return err
	}
	if !resp.Released {
		return fmt.Errorf("client: release %q: %w", l.key, ErrNotHeld)
	}
	return nil
}

// Refresh extends the lease to ttl from now (0: the service default),
// moving Deadline to ttl after Refresh was called. The token stays the
// same. It returns an error matching ErrNotHeld when the lease was lost,
// and then ends the lock (Done).
func (l *Lock) Refresh(ctx context.Context, ttl time.Duration) error {
	sent := time.Now()
	var resp api.RefreshResponse
	req := api.RefreshRequest{LockID: l.id}
	if ttl > 0 {
		req.TTLms = max(ttl.Milliseconds(), 1)
	}
	if err := l.c.call(ctx, api.OpRefresh, l.key, req, &resp); err != nil {
		if errors.Is(err, ErrNotHeld) {
			l.lost(err)
		}
		return err
	}
	granted := time.Duration(resp.TTLms) * time.Millisecond
	l.mu.Lock()
	defer l.mu.Unlock()
	if sent.Before(l.sent) {
		return nil // a refresh sent later has already moved the deadline
	}
	l.ttl, l.sent, l.deadline, l.renewErr = granted, sent, sent.Add(granted), nil
	if l.expiry != nil && l.ctx.Err() == nil {
		l.expiry.Reset(time.Until(l.deadline))
	}
	return nil
}

// Write replaces the state with value while keeping the lock; an empty
// value writes an empty state. ErrNotHeld when the lease was lost (nothing
// written); the lock then ends (Done). A nil value is an error matching
// ErrBadRequest, and nothing is sent: nil means "no new state" (see Lock).
func (l *Lock) Write(ctx context.Context, value []byte) error {
	if value == nil {
		return fmt.Errorf("client: write %q: %w: the value is nil, which means no new state; write []byte{} for an empty state", l.key, ErrBadRequest)
	}
	var resp api.WriteResponse
	err := l.c.call(ctx, api.OpWrite, l.key, api.WriteRequest{LockID: l.id, Value: value}, &resp)
	if errors.Is(err, ErrNotHeld) {
		l.lost(err)
	}
	return err
}

// Delete removes the state object and releases the lock atomically.
// ErrNotHeld when the lease was lost (nothing deleted). It ends the lock
// and stops its keep-alive first, as Release.
func (l *Lock) Delete(ctx context.Context) error {
	l.finish(fmt.Errorf("%w: %q", ErrReleased, l.key))
	l.stopRenewing()
	var resp api.DeleteResponse
	return l.c.call(ctx, api.OpDelete, l.key, api.DeleteRequest{LockID: l.id}, &resp)
}
