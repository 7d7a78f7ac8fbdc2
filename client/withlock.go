package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// ErrLeaseExpired is returned by WithLock when the lease ran out while the
// callback ran; nothing was written. It matches ErrNotHeld too.
var ErrLeaseExpired = fmt.Errorf("%w: lease expired during the callback", ErrNotHeld)

// WithLock acquires key (waiting as Acquire does), calls fn with the current
// state (nil when there is none) and writes fn's result as the new state
// while releasing, atomically. The result is the state written.
//
// If fn returns an error or panics, the lock is released without writing
// and the error is returned (the panic continues). If the lease ran out
// before fn returned, nothing is written and the error matches
// ErrLeaseExpired (and ErrNotHeld). ctx passed to fn ends at the lease's
// deadline.
func (c *Client) WithLock(ctx context.Context, key string, fn func(ctx context.Context, state []byte) ([]byte, error), opts ...AcquireOption) ([]byte, error) {
	l, err := c.Acquire(ctx, key, opts...)
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
	fctx, cancel := context.WithDeadline(ctx, l.Deadline())
	out, ferr := fn(fctx, l.Value())
	cancel()
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer rcancel()
	if ferr != nil {
		released = true
		_ = l.Release(rctx)
		return nil, ferr
	}
	if time.Now().After(l.Deadline()) {
		released = true
		_ = l.Release(rctx)
		return nil, fmt.Errorf("client: with lock %q: %w", key, ErrLeaseExpired)
	}
	if out == nil {
		out = []byte{}
	}
	err = l.ReleaseWith(rctx, out)
	released = true
	if errors.Is(err, ErrNotHeld) {
		return nil, fmt.Errorf("client: with lock %q: %w", key, ErrLeaseExpired)
	}
	if err != nil {
		return nil, err
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
