// Package client is a thin Go client for the lock service. It speaks the
// wire protocol of package api (msgpack encoding) over a *nats.Conn you
// own.
//
//	c, _ := client.New(nc)
//	l, err := c.Acquire(ctx, "orders.42")            // blocks until acquired or ctx ends
//	if err != nil { ... }
//	defer l.Release(context.Background())
//	writeDownstream(l.Token(), ...)                    // fence your writes with the token
//
// Every lock carries a fencing token that is strictly greater than the
// token of every earlier grant of the same key: pass it to the resources
// you write, and have them reject tokens lower than the highest they saw.
package client

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/service/api"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrLocked: TryAcquire found the key held by someone else.
	ErrLocked = errors.New("client: lock is held")
	// ErrNotHeld: the lock id does not hold the lock (the lease expired,
	// was released, or was taken over); nothing was written.
	ErrNotHeld = errors.New("client: lock not held")
	// ErrTimeout: the wait ran out before the lock was acquired or the key
	// was unlocked.
	ErrTimeout = errors.New("client: wait timed out")
	// ErrBadRequest: the service rejected the request (400); the message
	// says what to fix.
	ErrBadRequest = errors.New("client: bad request")
	// ErrUnavailable: the service or its store is unavailable, overloaded
	// or shutting down (503), or no service instance answered.
	ErrUnavailable = errors.New("client: service unavailable")
	// ErrInternal: the service failed (500).
	ErrInternal = errors.New("client: internal service error")
)

// Error is an error answer from the service. It unwraps to the sentinel of
// its code.
type Error struct {
	Op, Key string
	Code    int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("client: %s %q: %d %s", e.Op, e.Key, e.Code, e.Message)
}

// Unwrap returns the sentinel for e.Code.
func (e *Error) Unwrap() error { return sentinelFor(e.Code) }

func sentinelFor(code int) error {
	switch code {
	case api.CodeBadRequest:
		return ErrBadRequest
	case api.CodeTimeout:
		return ErrTimeout
	case api.CodeConflict:
		return ErrNotHeld
	case api.CodeUnavailable:
		return ErrUnavailable
	default:
		return ErrInternal
	}
}

// Client talks to the lock service. It is safe for concurrent use.
type Client struct {
	nc      *nats.Conn
	prefix  string
	timeout time.Duration
	ttl     time.Duration
	owner   string
	chunk   time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithPrefix sets the subject prefix of the service (default "lock").
func WithPrefix(p string) Option { return func(c *Client) { c.prefix = p } }

// WithRequestTimeout bounds non-blocking requests and is the grace added to
// blocking ones (default 5s).
func WithRequestTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithDefaultTTL sets the lease asked for when an acquire gives none
// (default 0: the service's default).
func WithDefaultTTL(d time.Duration) Option { return func(c *Client) { c.ttl = d } }

// WithOwner sets the owner label sent with every acquire (default none).
func WithOwner(label string) Option { return func(c *Client) { c.owner = label } }

// New returns a client using nc, which stays yours to close.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errors.New("client: nil connection")
	}
	c := &Client{nc: nc, prefix: api.DefaultPrefix, timeout: 5 * time.Second, chunk: time.Minute}
	for _, o := range opts {
		o(c)
	}
	if err := api.ValidateKey(c.prefix); err != nil {
		return nil, fmt.Errorf("client: prefix: %w", err)
	}
	if c.timeout <= 0 || c.ttl < 0 {
		return nil, errors.New("client: timeouts must be positive")
	}
	return c, nil
}

// NewLockID returns a fresh unguessable lock id (128 random bits).
func NewLockID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// call sends one request and decodes the answer into resp.
func (c *Client) call(ctx context.Context, op, key string, req, resp any) error {
	if err := api.ValidateKey(key); err != nil {
		return fmt.Errorf("client: %s: %w: %w", op, ErrBadRequest, err)
	}
	data, err := msgpack.Marshal(req)
	if err != nil {
		return fmt.Errorf("client: %s %q: encode: %w", op, key, err)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	m, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{
		Subject: api.Subject(c.prefix, op, key),
		Data:    data,
		Header:  nats.Header{api.ContentTypeHeader: {api.MsgpackContentType}},
	})
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return fmt.Errorf("client: %s %q: %w: no lock service instance is listening on %s", op, key, ErrUnavailable, api.Subject(c.prefix, op, key))
		}
		return fmt.Errorf("client: %s %q: %w", op, key, err)
	}
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		n, _ := strconv.Atoi(code)
		return &Error{Op: op, Key: key, Code: n, Message: m.Header.Get(micro.ErrorHeader)}
	}
	if err := msgpack.Unmarshal(m.Data, resp); err != nil {
		return fmt.Errorf("client: %s %q: decode answer: %w", op, key, err)
	}
	return nil
}

func isTimeout(err error) bool {
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
}

// AcquireOption configures one acquire.
type AcquireOption func(*api.AcquireRequest)

// WithTTL sets the lease length (bounded by the service's maximum).
func WithTTL(d time.Duration) AcquireOption {
	return func(r *api.AcquireRequest) { r.TTLms = max(d.Milliseconds(), 1) }
}

// WithOwnerLabel labels this lock for anyone who inspects it.
func WithOwnerLabel(label string) AcquireOption {
	return func(r *api.AcquireRequest) { r.Owner = label }
}

// WithLockID uses id (16-128 chars of [-_a-zA-Z0-9], unguessable) instead
// of a fresh random one. Reuse an id only to retry a request whose answer
// was lost: once a request was answered "not acquired", the service
// releases any grant for its id that completes late, so Acquire with a
// chosen id should not wait longer than one request (10 minutes at most).
func WithLockID(id string) AcquireOption { return func(r *api.AcquireRequest) { r.LockID = id } }

// acquireRequest builds the request; chosen reports a caller-chosen lock id.
func (c *Client) acquireRequest(opts []AcquireOption) (req api.AcquireRequest, chosen bool) {
	req = api.AcquireRequest{Owner: c.owner}
	if c.ttl > 0 {
		req.TTLms = c.ttl.Milliseconds()
	}
	for _, o := range opts {
		o(&req)
	}
	if req.LockID != "" {
		return req, true
	}
	req.LockID = NewLockID()
	return req, false
}

// TryAcquire takes the lock if it is free, once. It returns an error
// matching ErrLocked when another holder has it.
func (c *Client) TryAcquire(ctx context.Context, key string, opts ...AcquireOption) (*Lock, error) {
	req, _ := c.acquireRequest(opts)
	l, err := c.acquireOnce(ctx, key, req, time.Now())
	if err != nil && !errors.Is(err, ErrLocked) && isTimeout(err) {
		c.giveUp(key, req.LockID)
	}
	return l, err
}

// acquireOnce sends one acquire. firstSent is when the first request with
// this lock id was sent: a grant returned to a retry started then.
func (c *Client) acquireOnce(ctx context.Context, key string, req api.AcquireRequest, firstSent time.Time) (*Lock, error) {
	var resp api.AcquireResponse
	if err := c.call(ctx, api.OpAcquire, key, req, &resp); err != nil {
		return nil, err
	}
	if !resp.Acquired {
		return nil, fmt.Errorf("%w: %q by %q (token %d)", ErrLocked, key, resp.Owner, resp.Token)
	}
	return c.newLock(key, firstSent, resp), nil
}

// Acquire takes the lock, waiting until it is free or ctx ends (then it
// returns an error matching ErrTimeout, or ctx's error when ctx was
// cancelled). A request whose reply is lost is retried with the same lock
// id, which returns the same grant; on giving up, the client withdraws the
// request so no lock is left orphaned.
func (c *Client) Acquire(ctx context.Context, key string, opts ...AcquireOption) (*Lock, error) {
	req, chosen := c.acquireRequest(opts)
	firstSent := time.Now()
	lost := false // the last request's answer was lost
	for {
		wait := c.chunk
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl)-20*time.Millisecond)
		}
		if wait < time.Millisecond || lost {
			// After a lost answer, ask once without waiting: a blocking
			// retry would queue behind other waiters for a lock this id may
			// already hold.
			wait = 0
		}
		req.WaitMs = wait.Milliseconds()
		rctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
		l, err := c.acquireOnce(rctx, key, req, firstSent)
		cancel()
		if lost && errors.Is(err, ErrLocked) && ctx.Err() == nil {
			// Not granted (yet): withdraw the lost request wherever it is
			// parked, and go on waiting under a new lock id.
			lost = false
			c.giveUp(key, req.LockID)
			if !chosen {
				req.LockID = NewLockID()
				firstSent = time.Now()
			}
			continue
		}
		lost = false
		switch {
		case err == nil:
			return l, nil
		case errors.Is(err, ErrLocked):
			if ctx.Err() != nil || req.WaitMs == 0 {
				if ctx.Err() == context.Canceled {
					return nil, ctx.Err()
				}
				return nil, fmt.Errorf("client: acquire %q: %w", key, ErrTimeout)
			}
			// The answered request's lock id is retired: the service gives
			// back a grant for it that completes after its deadline, so a
			// new request must not reuse it (it could be handed that grant
			// just before it is given back).
			if !chosen {
				req.LockID = NewLockID()
				firstSent = time.Now()
			}
		case isTimeout(err) || errors.Is(err, context.Canceled):
			if ctx.Err() != nil {
				c.giveUp(key, req.LockID)
				if ctx.Err() == context.Canceled {
					return nil, ctx.Err()
				}
				return nil, fmt.Errorf("client: acquire %q: %w: %w", key, ErrTimeout, err)
			}
			// The reply was lost: ask again with the same lock id, which
			// returns the grant if one was made.
			lost = true
		default:
			return nil, err
		}
	}
}

// giveUp withdraws an acquire that may still be parked or granted.
func (c *Client) giveUp(key, lockID string) {
	data, _ := msgpack.Marshal(api.CancelRequest{LockID: lockID})
	_ = c.nc.PublishMsg(&nats.Msg{
		Subject: api.Subject(c.prefix, api.OpCancel, key), Data: data,
		Header: nats.Header{api.ContentTypeHeader: {api.MsgpackContentType}},
	})
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var resp api.ReleaseResponse
	_ = c.call(ctx, api.OpRelease, key, api.ReleaseRequest{LockID: lockID}, &resp)
}

// Info is the state of a key as Get reports it.
type Info struct {
	Key    string
	Locked bool
	// Token is the live lease's fencing token, or the last grant's when
	// the store still knows it (0 otherwise).
	Token     uint64
	TTL       time.Duration
	ExpiresAt time.Time // by the service's clock; informational
	Owner     string
	// Value is the state object, nil when there is none.
	Value []byte
}

// Get inspects key without taking it.
func (c *Client) Get(ctx context.Context, key string) (*Info, error) {
	var resp api.GetResponse
	if err := c.call(ctx, api.OpGet, key, struct{}{}, &resp); err != nil {
		return nil, err
	}
	info := &Info{Key: resp.Key, Locked: resp.Locked, Token: resp.Token,
		TTL: time.Duration(resp.TTLms) * time.Millisecond, Owner: resp.Owner}
	if resp.HasValue {
		info.Value = []byte(resp.Value)
		if info.Value == nil {
			info.Value = []byte{}
		}
	}
	if resp.ExpiresAt != "" {
		info.ExpiresAt, _ = time.Parse(time.RFC3339Nano, resp.ExpiresAt)
	}
	return info, nil
}

// Wait blocks until key is unlocked (or ctx ends: ErrTimeout) and returns
// its state without taking the lock; nil when there is none.
func (c *Client) Wait(ctx context.Context, key string) ([]byte, error) {
	for {
		wait := c.chunk
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl)-20*time.Millisecond)
		}
		wait = max(wait, 0)
		rctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
		var resp api.WaitResponse
		err := c.call(rctx, api.OpWait, key, api.WaitRequest{WaitMs: wait.Milliseconds()}, &resp)
		cancel()
		switch {
		case err == nil:
			return resp.Value, nil
		case errors.Is(err, ErrTimeout) || isTimeout(err):
			if ctx.Err() != nil || wait == 0 {
				if ctx.Err() == context.Canceled {
					return nil, ctx.Err()
				}
				return nil, fmt.Errorf("client: wait %q: %w", key, ErrTimeout)
			}
		default:
			return nil, err
		}
	}
}

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
