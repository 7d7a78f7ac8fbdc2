package client

import (
	"context"
	"fmt"
	"time"
)

// WithKeepAlive keeps the lock's lease alive until the lock ends (see
// Lock): the client refreshes it with its TTL (Lock.TTL) every TTL/3,
// counted from when the last successful refresh (at first, the acquire)
// was sent. That is 3 refresh requests per lock per TTL: 6 a minute at the
// service's default TTL of 30s, 180 a minute at 1s.
//
// A refresh answered "not held" (409) ends the lock at once: Done is
// closed and Err matches ErrNotHeld. A refresh failing otherwise (503,
// 500, no answer) is sent again after a short pause (50ms doubling, at
// most 1s and TTL/6) until one succeeds or the lease's deadline passes;
// then the lock ends with an error matching ErrLeaseExpired (and
// ErrNotHeld) that wraps the last refresh's error.
//
// A lease is counted from when its acquire was sent, so a blocking acquire
// that waited may return a lease that is already mostly spent by that
// count. When less than a third of it is left, Acquire and TryAcquire
// refresh it before they return; if that fails, they release the lock and
// return the refresh's error (matching ErrNotHeld when the lease was lost).
//
// Release, ReleaseWith and Delete stop the renewals before they release.
// Acquire and TryAcquire do not keep locks alive unless given this option;
// WithLock does unless given WithoutKeepAlive.
func WithKeepAlive() AcquireOption { return func(o *acquireConfig) { o.keepAlive = true } }

// WithoutKeepAlive turns keep-alive off, which is the default of Acquire
// and TryAcquire: the lease then ends at its deadline unless the caller
// renews it with Lock.Refresh. For WithLock, the callback's context then
// ends at the lease's deadline.
func WithoutKeepAlive() AcquireOption { return func(o *acquireConfig) { o.keepAlive = false } }

// WithMaxHold caps how long the lock is held: d after Acquire, TryAcquire
// or WithLock acquired it (counted from just before Acquire returns), the
// lock ends with an error matching ErrMaxHold (and
// ErrNotHeld), its renewals stop and the client releases it, leaving the
// state unchanged (WithLock then writes nothing and returns that error).
// 0, the default, means no cap.
func WithMaxHold(d time.Duration) AcquireOption { return func(o *acquireConfig) { o.maxHold = d } }

// hold makes l, just acquired, a held lock: it ends at its deadline unless
// renewed, at o's max hold, and it is kept alive when o asks for it. A
// lease kept alive that is more than two thirds spent is refreshed first;
// if that fails, l is released and the error returned.
func (c *Client) hold(ctx context.Context, l *Lock, o acquireConfig) (*Lock, error) {
	if o.keepAlive && time.Until(l.Deadline()) < l.TTL()/3 {
		if err := l.Refresh(ctx, l.TTL()); err != nil {
			l.finish(err)
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
			_ = l.release(rctx, nil)
			cancel()
			return nil, fmt.Errorf("client: acquire %q: renewing the lease before returning it: %w", l.key, err)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if o.keepAlive {
		l.renewing = make(chan struct{})
		go l.keepAlive()
	}
	l.expiry = time.AfterFunc(time.Until(l.deadline), l.expire)
	if o.maxHold > 0 {
		l.capped = time.AfterFunc(o.maxHold, func() { l.capReached(o.maxHold) })
	}
	return l, nil
}

// expire ends the lock when its deadline has passed (a refresh may have
// moved it since the timer was set).
func (l *Lock) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if left := time.Until(l.deadline); left > 0 {
		if l.ctx.Err() == nil {
			l.expiry.Reset(left)
		}
		return
	}
	reason := fmt.Errorf("client: lease of %q: %w", l.key, ErrLeaseExpired)
	if l.renewErr != nil {
		reason = fmt.Errorf("client: lease of %q: %w: no renewal succeeded in time; the last one failed: %w", l.key, ErrLeaseExpired, l.renewErr)
	}
	l.finishLocked(reason)
}

// capReached ends the lock at its max hold d, stops its renewals and
// releases it.
func (l *Lock) capReached(d time.Duration) {
	if !l.finish(fmt.Errorf("client: lock %q held for %v: %w", l.key, d, ErrMaxHold)) {
		return
	}
	l.stopRenewing()
	ctx, cancel := context.WithTimeout(context.Background(), l.c.timeout)
	defer cancel()
	_ = l.release(ctx, nil)
}

// keepAlive renews the lease until the lock ends: a refresh every TTL/3
// from the last successful refresh's send, and after a failed one, another
// after a pause. A 409 ends the lock (in Refresh), and so does the
// deadline passing (expire).
func (l *Lock) keepAlive() {
	defer close(l.renewing)
	var pause backoff
	failed := false
	for {
		l.mu.Lock()
		ttl, deadline := l.ttl, l.deadline
		l.mu.Unlock()
		next := time.Until(deadline.Add(-2 * ttl / 3))
		if failed {
			next = min(pause.next(), ttl/6)
		}
		if !sleep(l.ctx, next) {
			return
		}
		left := time.Until(deadline)
		if left <= 0 {
			<-l.ctx.Done() // expire ends the lock at once
			return
		}
		ctx, cancel := context.WithTimeout(l.ctx, min(l.c.timeout, left))
		err := l.Refresh(ctx, ttl)
		cancel()
		switch {
		case l.ctx.Err() != nil:
			return
		case err == nil:
			failed = false
			pause.reset()
		default:
			failed = true
			l.mu.Lock()
			if l.renewErr == nil || !isTimeout(err) || time.Now().Before(deadline) {
				l.renewErr = err // not a refresh cut short by the deadline after a real error
			}
			l.mu.Unlock()
		}
	}
}

// sleep waits for d, or returns false when ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
