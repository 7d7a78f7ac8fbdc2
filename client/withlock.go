package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// WithLock acquires key (waiting as Acquire does), calls fn with the current
// state (nil when there is none) and writes fn's result as the new state
// while releasing, atomically. A callback that returns nil keeps the state
// as it was (nothing is written); one that returns an empty non-nil slice
// writes an empty state. The result is the state the key has after the
// release: fn's result, or the state fn was given when fn returned nil.
//
// The lock is kept alive while fn runs (WithKeepAlive; WithoutKeepAlive
// turns that off), and the ctx passed to fn is cancelled as soon as the
// lock ends (see Lock): its lease lost, or the cap of WithMaxHold reached.
// context.Cause of fn's ctx then says why. Without keep-alive, fn's ctx
// ends at the lease's deadline at the latest.
//
// If the lock ended before fn returned, nothing is written, the lock is
// released and the error matches ErrNotHeld: also ErrLeaseExpired when
// the deadline passed without a renewal, ErrMaxHold at the cap, or the
// service's 409 answer when it said the lease was lost; it wraps fn's
// error too when fn failed. Otherwise, if fn returns an error or panics,
// the lock is released without writing and the error is returned (the
// panic continues). A release answered "not held" returns an error
// matching ErrNotHeld (nothing was written). A state the service or NATS
// refuses (larger than the service's max value bytes or NATS's max
// payload) is not written either: the lock is released without it and the
// error matches ErrBadRequest.
func (c *Client) WithLock(ctx context.Context, key string, fn func(ctx context.Context, state []byte) ([]byte, error), opts ...AcquireOption) ([]byte, error) {
	l, err := c.Acquire(ctx, key, append([]AcquireOption{WithKeepAlive()}, opts...)...)
	if err != nil {
		return nil, err
	}
	released := false
	defer func() {
		if !released {
			// fn panicked: release without writing, then let it go on.
			rctx, cancel := context.WithTimeout(context.Background(), c.timeout)
			_ = l.Release(rctx)
			cancel()
		}
	}()
	fctx, cancel := l.Context(ctx)
	if l.renewing == nil {
		var cancelDeadline context.CancelFunc
		fctx, cancelDeadline = context.WithDeadline(fctx, l.Deadline())
		defer cancelDeadline()
	}
	out, ferr := fn(fctx, l.Value())
	cancel()
	ended := l.Err()
	if ended == nil && !time.Now().Before(l.Deadline()) {
		ended = fmt.Errorf("client: lease of %q: %w", key, ErrLeaseExpired) // the expiry timer is due
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer rcancel()
	if ended != nil || ferr != nil {
		released = true
		_ = l.Release(rctx)
		switch {
		case ended == nil:
			return nil, ferr
		case ferr != nil:
			return nil, fmt.Errorf("client: with lock %q: %w (the callback returned: %w)", key, ended, ferr)
		default:
			return nil, fmt.Errorf("client: with lock %q: %w", key, ended)
		}
	}
	err = l.ReleaseWith(rctx, out) // nil: released keeping the state
	released = true
	if errors.Is(err, ErrBadRequest) {
		// The state was refused (too large): nothing was written or
		// released. Release without writing, as for a failed callback.
		_ = l.Release(rctx)
	}
	if err != nil {
		return nil, fmt.Errorf("client: with lock %q: %w", key, err)
	}
	if out == nil {
		return l.Value(), nil
	}
	return out, nil
}

// WithLockJSON is WithLock for a JSON-encoded state of type T: fn gets the
// current state (nil when there is none) and returns the new one.
func WithLockJSON[T any](ctx context.Context, c *Client, key string, fn func(ctx context.Context, state *T) (T, error), opts ...AcquireOption) (T, error) {
	var zero T
	raw, err := c.WithLock(ctx, key, func(ctx context.Context, state []byte) ([]byte, error) {
		var cur *T
		if state != nil && string(state) != "null" {
			cur = new(T)
			if err := json.Unmarshal(state, cur); err != nil {
				return nil, fmt.Errorf("client: state of %q is not a JSON %T: %w", key, zero, err)
			}
		}
		next, err := fn(ctx, cur)
		if err != nil {
			return nil, err
		}
		return json.Marshal(next)
	}, opts...)
	if err != nil {
		return zero, err
	}
	var out T
	if err := json.Unmarshal(raw, &out); err != nil {
		return zero, err
	}
	return out, nil
}
