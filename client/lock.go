package client

import (
	"context"
	"fmt"
	"time"

	"github.com/lockservice/lockservice/service/api"
)

// Lock is a held lock. Its methods are safe for concurrent use only with
// themselves not racing Release.
type Lock struct {
	c        *Client
	key, id  string
	owner    string
	token    uint64
	ttl      time.Duration
	deadline time.Time
	value    []byte
}

func (c *Client) newLock(key string, sent time.Time, r api.AcquireResponse) *Lock {
	ttl := time.Duration(r.TTLms) * time.Millisecond
	return &Lock{c: c, key: key, id: r.LockID, owner: r.Owner, token: r.Token, ttl: ttl,
		deadline: sent.Add(ttl), value: r.Value}
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
func (l *Lock) TTL() time.Duration { return l.ttl }

// Deadline returns when the lease ends at the earliest, by this machine's
// clock: counted from when the request was sent, so it is never later than
// the service's own expiry.
func (l *Lock) Deadline() time.Time { return l.deadline }

// Release releases the lock leaving the state unchanged. It returns an
// error matching ErrNotHeld when the lease was already lost.
func (l *Lock) Release(ctx context.Context) error { return l.release(ctx, nil) }

// ReleaseWith writes value as the new state and releases the lock, in one
// atomic step: if the lease was lost it returns ErrNotHeld and nothing is
// written.
func (l *Lock) ReleaseWith(ctx context.Context, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	return l.release(ctx, value)
}

func (l *Lock) release(ctx context.Context, value []byte) error {
	var resp api.ReleaseResponse
	if err := l.c.call(ctx, api.OpRelease, l.key, api.ReleaseRequest{LockID: l.id, Value: value}, &resp); err != nil {
		return err
	}
	if !resp.Released {
		return fmt.Errorf("client: release %q: %w", l.key, ErrNotHeld)
	}
	return nil
}

// Refresh extends the lease to ttl from now (0: the service default). The
// token stays the same. ErrNotHeld when the lease was lost.
func (l *Lock) Refresh(ctx context.Context, ttl time.Duration) error {
	sent := time.Now()
	var resp api.RefreshResponse
	req := api.RefreshRequest{LockID: l.id}
	if ttl > 0 {
		req.TTLms = max(ttl.Milliseconds(), 1)
	}
	if err := l.c.call(ctx, api.OpRefresh, l.key, req, &resp); err != nil {
		return err
	}
	l.ttl = time.Duration(resp.TTLms) * time.Millisecond
	l.deadline = sent.Add(l.ttl)
	return nil
}

// Write replaces the state while keeping the lock. ErrNotHeld when the
// lease was lost (nothing written).
func (l *Lock) Write(ctx context.Context, value []byte) error {
	if value == nil {
		value = []byte{}
	}
	var resp api.WriteResponse
	return l.c.call(ctx, api.OpWrite, l.key, api.WriteRequest{LockID: l.id, Value: value}, &resp)
}

// Delete removes the state object and releases the lock atomically.
// ErrNotHeld when the lease was lost (nothing deleted).
func (l *Lock) Delete(ctx context.Context) error {
	var resp api.DeleteResponse
	return l.c.call(ctx, api.OpDelete, l.key, api.DeleteRequest{LockID: l.id}, &resp)
}
