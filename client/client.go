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
//
// # Keeping a lock alive
//
// A lease ends at its TTL unless refreshed. With WithKeepAlive the client
// refreshes it every TTL/3 until the lock is released or the lease is lost;
// WithLock does so by default. Lock.Done is closed when the lock ends
// (released, lost, or the cap of WithMaxHold reached), Lock.Err says why,
// and Lock.Context gives a context cancelled then, with Err as its cause:
//
//	l, err := c.Acquire(ctx, "orders.42", client.WithKeepAlive())
//	if err != nil { ... }
//	defer l.Release(context.Background())
//	ctx, cancel := l.Context(ctx)
//	defer cancel()
//	work(ctx, l.Token()) // ctx ends when the lease is lost
//
// # Blocking requests and their liveness window
//
// Acquire and Wait block in requests of at most a minute each. By default
// each such request carries a liveness window (WithAliveWindow, 5s): the
// client renews it every window/3 on <prefix>.alive.<key>, and the service
// keeps the request parked only while it is renewed. A client that dies
// stops renewing, so the service drops its request within the window
// instead of granting the lock to nobody; a renewal that no instance
// confirms tells the client that its request is gone (its instance died,
// or its answer was lost), and the client withdraws it and asks again.
// While renewals are confirmed a request has no timeout of its own.
//
// # Unknown outcomes
//
// An acquire answered 503 or 500, or one not under a liveness window whose
// answer was lost, may have been granted. The client asks once more with
// the same lock id and wait_ms 0, which returns the grant if one was made.
// If that fails too, or the renewal of a parked acquire went unconfirmed,
// or ctx ends, the client withdraws the lock id (a cancel to every
// instance, then a release) and never uses it again: it is not left
// holding a lock nobody knows about. A blocking request is never retried
// under a lock id whose renewal went unconfirmed, since the instance that
// had it may still give back a grant for it. Likewise a blocking acquire
// answered "not acquired" before its wait ran out (the service refused its
// lock id), or so late that its window may have run out on the service
// (this process stalled), is not sent again under its lock id. Acquire
// then goes on under a new lock id (after a short backoff when the service
// answered an error or refused the id); with a lock id of the caller's
// (WithLockID) it returns an error matching ErrUnavailable instead.
package client

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
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

	// ErrReleased: the lock ended because the caller released it
	// (Lock.Err after Release, ReleaseWith or Delete).
	ErrReleased = errors.New("client: lock released")
	// ErrLeaseExpired: the lease's deadline passed, by this client's
	// count, without a renewal (Lock.Err, WithLock); nothing was written.
	// It matches ErrNotHeld too.
	ErrLeaseExpired = fmt.Errorf("%w: the lease ran out", ErrNotHeld)
	// ErrMaxHold: the cap of WithMaxHold was reached and the client gave
	// the lock up (Lock.Err, WithLock); nothing was written. It matches
	// ErrNotHeld too.
	ErrMaxHold = fmt.Errorf("%w: the maximum hold time was reached", ErrNotHeld)
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
	alive   time.Duration // liveness window of blocking requests; 0: none
}

// Option configures a Client.
type Option func(*Client)

// WithPrefix sets the subject prefix of the service (default "lock").
func WithPrefix(p string) Option { return func(c *Client) { c.prefix = p } }

// WithRequestTimeout bounds non-blocking requests and liveness renewals,
// and is the grace added to blocking requests without a liveness window
// (default 5s).
func WithRequestTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithDefaultTTL sets the lease asked for when an acquire gives none
// (default 0: the service's default).
func WithDefaultTTL(d time.Duration) Option { return func(c *Client) { c.ttl = d } }

// WithOwner sets the owner label sent with every acquire (default none).
func WithOwner(label string) Option { return func(c *Client) { c.owner = label } }

// WithAliveWindow sets the liveness window of blocking requests (default
// 5s; 1s to 1m). While a request is parked, the client renews it every
// d/3, each renewal waiting at most min(d/3, the request timeout) for its
// confirmation; the service drops a request not renewed within d. A
// renewal nobody confirms means the request is gone: the client withdraws
// it and asks again under a new lock id. 0 turns the window off: a parked
// request then stays parked until its wait runs out, even if this client
// is gone, and a blocking request times out after its wait plus the
// request timeout. The service must serve <prefix>.alive.<key>: against
// one that does not, every parked request is withdrawn and sent again
// each d/3 (use 0 there).
func WithAliveWindow(d time.Duration) Option { return func(c *Client) { c.alive = d } }

// New returns a client using nc, which stays yours to close. It returns an
// error when an option is out of range.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errors.New("client: nil connection")
	}
	c := &Client{nc: nc, prefix: api.DefaultPrefix, timeout: 5 * time.Second, chunk: time.Minute, alive: 5 * time.Second}
	for _, o := range opts {
		o(c)
	}
	if err := api.ValidateKey(c.prefix); err != nil {
		return nil, fmt.Errorf("client: prefix: %w", err)
	}
	if c.timeout <= 0 || c.ttl < 0 {
		return nil, errors.New("client: timeouts must be positive")
	}
	if c.alive != 0 && (c.alive < api.MinAlive || c.alive > api.MaxAlive) {
		return nil, fmt.Errorf("client: alive window %v is out of range: %v to %v, or 0 for none", c.alive, api.MinAlive, api.MaxAlive)
	}
	return c, nil
}

// NewLockID returns a fresh unguessable lock id (128 random bits).
func NewLockID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// message encodes a request for op on key.
func (c *Client) message(op, key string, req any) (*nats.Msg, error) {
	if err := api.ValidateKey(key); err != nil {
		return nil, fmt.Errorf("client: %s: %w: %w", op, ErrBadRequest, err)
	}
	data, err := msgpack.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("client: %s %q: encode: %w", op, key, err)
	}
	return &nats.Msg{
		Subject: api.Subject(c.prefix, op, key),
		Data:    data,
		Header:  nats.Header{api.ContentTypeHeader: {api.MsgpackContentType}},
	}, nil
}

// call sends one request and decodes the answer into resp. Without a
// deadline in ctx it waits at most the request timeout.
func (c *Client) call(ctx context.Context, op, key string, req, resp any) error {
	msg, err := c.message(op, key, req)
	if err != nil {
		return err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	m, err := c.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return c.noResponders(op, key)
		}
		if errors.Is(err, nats.ErrMaxPayload) {
			// Refused before sending: retrying fails the same way.
			return fmt.Errorf("client: %s %q: %w: the request is %d bytes, more than the NATS server's max payload (%d); keep large data elsewhere and a reference in the state: %w",
				op, key, ErrBadRequest, len(msg.Data), c.nc.MaxPayload(), err)
		}
		return fmt.Errorf("client: %s %q: %w", op, key, err)
	}
	return decodeAnswer(op, key, m, resp)
}

func (c *Client) noResponders(op, key string) error {
	return fmt.Errorf("client: %s %q: %w: no lock service instance is listening on %s", op, key, ErrUnavailable, api.Subject(c.prefix, op, key))
}

// decodeAnswer returns the error an answer carries, or decodes it into resp.
func decodeAnswer(op, key string, m *nats.Msg, resp any) error {
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

// unknownOutcome reports an error answer after which the request may or
// may not have taken effect (503, 500).
func unknownOutcome(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Code >= api.CodeInternal
}

// ended is the error for a blocking call whose ctx ended: ctx's error when
// it was cancelled, else one matching ErrTimeout.
func ended(ctx context.Context, op, key string) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return ctx.Err()
	}
	return fmt.Errorf("client: %s %q: %w", op, key, ErrTimeout)
}

// AcquireOption configures one acquire (TryAcquire, Acquire, WithLock).
type AcquireOption func(*acquireConfig)

// acquireConfig is what the options of one acquire set: the request, and
// what the client does with the lock once it holds it.
type acquireConfig struct {
	req       api.AcquireRequest
	keepAlive bool
	maxHold   time.Duration // 0: no cap
}

// WithTTL sets the lease length (bounded by the service's maximum).
func WithTTL(d time.Duration) AcquireOption {
	return func(o *acquireConfig) { o.req.TTLms = max(d.Milliseconds(), 1) }
}

// WithLockDelay sets the lease's lock-delay: if the lease expires or is
// forced, nobody gets the key for d after its end (as Consul's
// lock-delay), so a holder that was paused past its lease and resumes has
// time to notice before anyone else acts on the key. A release hands the
// key over at once. 0 turns off the service's default (--lock-delay);
// without this option that default applies.
func WithLockDelay(d time.Duration) AcquireOption {
	return func(o *acquireConfig) {
		ms := int64((max(d, 0) + time.Millisecond - 1) / time.Millisecond)
		o.req.LockDelayMs = &ms
	}
}

// WithOwnerLabel labels this lock for anyone who inspects it.
func WithOwnerLabel(label string) AcquireOption {
	return func(o *acquireConfig) { o.req.Owner = label }
}

// WithLockID uses id (16-128 chars of [-_a-zA-Z0-9], unguessable) instead
// of a fresh random one. Acquire keeps a chosen id across its requests
// while each ends with a confirmed answer; when it has to withdraw the id
// (see the package comment), the service refuses the id from then on, and
// Acquire returns an error matching ErrUnavailable: acquire again with a
// new id.
func WithLockID(id string) AcquireOption { return func(o *acquireConfig) { o.req.LockID = id } }

// newAcquireConfig applies opts; chosen reports a caller-chosen lock id.
func (c *Client) newAcquireConfig(opts []AcquireOption) (o acquireConfig, chosen bool) {
	o.req = api.AcquireRequest{Owner: c.owner}
	if c.ttl > 0 {
		o.req.TTLms = c.ttl.Milliseconds()
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.req.LockID != "" {
		return o, true
	}
	o.req.LockID = NewLockID()
	return o, false
}

// TryAcquire takes the lock if it is free, once. It returns an error
// matching ErrLocked when another holder has it. After an unknown outcome
// (503, 500, a lost answer) it asks once more with the same lock id; if
// that fails too it withdraws the lock id and returns the error (matching
// ErrUnavailable or ErrInternal, or ErrTimeout). With WithKeepAlive, see
// there for the renewal that may precede the return.
func (c *Client) TryAcquire(ctx context.Context, key string, opts ...AcquireOption) (*Lock, error) {
	o, _ := c.newAcquireConfig(opts)
	l, err := c.tryAcquire(ctx, key, o.req)
	if err != nil {
		return nil, err
	}
	return c.hold(ctx, l, o)
}

func (c *Client) tryAcquire(ctx context.Context, key string, req api.AcquireRequest) (*Lock, error) {
	firstSent := time.Now()
	l, err := c.acquireOnce(ctx, key, req, firstSent)
	if err == nil || errors.Is(err, ErrLocked) {
		return l, err
	}
	if ctx.Err() == nil && (unknownOutcome(err) || isTimeout(err)) {
		var rerr error
		if l, rerr = c.acquireOnce(ctx, key, req, firstSent); rerr == nil {
			return l, nil
		}
		if errors.Is(rerr, ErrLocked) {
			// Not granted yet, but the first request may still be in
			// flight (a 503 does not end its store attempt): withdraw it.
			c.withdraw(key, req.LockID)
			return nil, rerr
		}
		err = fmt.Errorf("%w (asked again with the same lock id: %v)", err, rerr)
	}
	if unknownOutcome(err) || isTimeout(err) || errors.Is(err, context.Canceled) {
		c.withdraw(key, req.LockID)
	}
	return nil, err
}

// errEndedEarly: a blocking acquire was answered "not acquired" before its
// wait ran out, or when its liveness window may have run out on the
// service: the service refused its lock id or dropped the request, so the
// lock id may be retired (the service gives back grants for it).
var errEndedEarly = errors.New("the service ended the blocking acquire before its wait ran out (its lock id may be retired)")

// acquireOnce sends one acquire. firstSent is when the first request with
// this lock id was sent: a grant returned to a retry started then. A
// blocking request waits under its liveness window (park), or without one
// for its wait plus the request timeout.
func (c *Client) acquireOnce(ctx context.Context, key string, req api.AcquireRequest, firstSent time.Time) (*Lock, error) {
	var resp api.AcquireResponse
	var err error
	wait := time.Duration(req.WaitMs) * time.Millisecond
	sent, inWindow := time.Now(), true
	if wait > 0 && c.alive > 0 {
		req.AliveMs = c.alive.Milliseconds()
		inWindow, err = c.park(ctx, api.OpAcquire, key, req.LockID, req, &resp)
	} else {
		rctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
		err = c.call(rctx, api.OpAcquire, key, req, &resp)
		cancel()
	}
	switch {
	case err != nil:
		return nil, err
	case resp.Acquired:
		return c.newLock(key, firstSent, resp), nil
	case wait > 0 && (!inWindow || time.Since(sent) < wait-wait/10):
		return nil, fmt.Errorf("client: acquire %q: %w", key, errEndedEarly)
	default:
		return nil, fmt.Errorf("%w: %q by %q (token %d)", ErrLocked, key, resp.Owner, resp.Token)
	}
}

// Acquire takes the lock, waiting until it is free or ctx ends (then it
// returns an error matching ErrTimeout, or ctx's error when ctx was
// cancelled, and withdraws its request so no lock is left orphaned). It
// waits in requests of at most a minute, each under the liveness window
// (WithAliveWindow); each request after a "not acquired" answer takes a
// new lock id, unless the id is the caller's (WithLockID).
//
// After an unknown outcome it asks once more with the same lock id and
// wait_ms 0, which returns the grant if one was made; otherwise, and when
// a renewal went unconfirmed, it withdraws the lock id and goes on under a
// new one. With a caller-chosen lock id it returns an error
// matching ErrUnavailable instead. Other errors (400, no service
// listening) are returned at once. With WithKeepAlive, see there for the
// renewal that may precede the return.
func (c *Client) Acquire(ctx context.Context, key string, opts ...AcquireOption) (*Lock, error) {
	o, chosen := c.newAcquireConfig(opts)
	l, err := c.acquire(ctx, key, o.req, chosen)
	if err != nil {
		return nil, err
	}
	return c.hold(ctx, l, o)
}

func (c *Client) acquire(ctx context.Context, key string, req api.AcquireRequest, chosen bool) (*Lock, error) {
	firstSent := time.Now()
	newID := func() {
		req.LockID = NewLockID()
		firstSent = time.Now()
	}
	var pause backoff
	for {
		wait := c.chunk
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl)-20*time.Millisecond)
		}
		req.WaitMs = max(wait, 0).Milliseconds()
		l, err := c.acquireOnce(ctx, key, req, firstSent)
		switch {
		case err == nil:
			return l, nil
		case errors.Is(err, ErrLocked):
			if ctx.Err() != nil || req.WaitMs == 0 {
				return nil, ended(ctx, "acquire", key)
			}
			pause.reset()
			if !chosen {
				newID()
			}
		case errors.Is(err, errEndedEarly):
			if ctx.Err() != nil {
				return nil, ended(ctx, "acquire", key)
			}
			if chosen {
				c.withdraw(key, req.LockID)
				return nil, withdrawn(key, errEndedEarly)
			}
			newID()
			if err := pause.wait(ctx); err != nil {
				return nil, ended(ctx, "acquire", key)
			}
		case ctx.Err() != nil:
			c.withdraw(key, req.LockID)
			return nil, ended(ctx, "acquire", key)
		case errors.Is(err, errUnconfirmed):
			// The request is gone; the instance that had it may still
			// give back a late grant for its lock id, so the id is
			// withdrawn and never asked with again.
			c.withdraw(key, req.LockID)
			if chosen {
				return nil, withdrawn(key, errUnconfirmed)
			}
			newID()
		case unknownOutcome(err) || isTimeout(err):
			l, err = c.resolve(ctx, key, req, firstSent, err)
			switch {
			case err == nil:
				return l, nil
			case ctx.Err() != nil:
				return nil, ended(ctx, "acquire", key)
			case chosen:
				return nil, withdrawn(key, err)
			default:
				newID()
			}
			if err := pause.wait(ctx); err != nil {
				return nil, ended(ctx, "acquire", key)
			}
		default:
			return nil, err
		}
	}
}

// resolve settles an acquire whose outcome is unknown (cause): it asks once
// more with the same lock id and wait_ms 0, which returns the grant if one
// was made. Otherwise it withdraws the lock id, whose first request may
// still be in progress (a lost answer, or a 503 sent while its store
// attempt was in flight), and returns an error: the lock id is spent.
func (c *Client) resolve(ctx context.Context, key string, req api.AcquireRequest, firstSent time.Time, cause error) (*Lock, error) {
	req.WaitMs = 0
	l, err := c.acquireOnce(ctx, key, req, firstSent)
	switch {
	case err == nil:
		return l, nil
	case errors.Is(err, ErrLocked):
		// Not granted yet, but the first request may still be in flight
		// (a 503 does not end its store attempt): withdraw it.
		c.withdraw(key, req.LockID)
		return nil, fmt.Errorf("%w (the request was withdrawn)", cause)
	default:
		c.withdraw(key, req.LockID)
		return nil, fmt.Errorf("%w (asked again with the same lock id: %v)", cause, err)
	}
}

// withdrawn is Acquire's error after it withdrew a caller-chosen lock id.
func withdrawn(key string, cause error) error {
	return fmt.Errorf("client: acquire %q: %w: the chosen lock id was withdrawn (%v); acquire with a new lock id", key, ErrUnavailable, cause)
}

// withdraw abandons an acquire that may still be parked or granted: a
// cancel to every instance, then a release. The service refuses the lock
// id afterwards. With the liveness window on, a second release follows a
// window later: an instance the cancel did not reach (cut off from NATS,
// not from its store) may still grant the id until the window runs out
// there, and gives back only what it grants after that.
func (c *Client) withdraw(key, lockID string) {
	data, _ := msgpack.Marshal(api.CancelRequest{LockID: lockID})
	_ = c.nc.PublishMsg(&nats.Msg{
		Subject: api.Subject(c.prefix, api.OpCancel, key), Data: data,
		Header: nats.Header{api.ContentTypeHeader: {api.MsgpackContentType}},
	})
	release := func() {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		defer cancel()
		var resp api.ReleaseResponse
		_ = c.call(ctx, api.OpRelease, key, api.ReleaseRequest{LockID: lockID}, &resp)
	}
	release()
	if c.alive > 0 {
		time.AfterFunc(c.alive+time.Second, func() {
			if !c.nc.IsClosed() {
				release()
			}
		})
	}
}

// backoff paces Acquire after error answers: 50ms doubling to 1s, jittered.
type backoff struct{ d time.Duration }

func (b *backoff) reset() { b.d = 0 }

// next returns the next pause.
func (b *backoff) next() time.Duration {
	b.d = min(max(2*b.d, 50*time.Millisecond), time.Second)
	return b.d/2 + mrand.N(b.d/2)
}

// wait sleeps for the next pause, or returns ctx's error when ctx ends first.
func (b *backoff) wait(ctx context.Context) error {
	t := time.NewTimer(b.next())
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
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
	// Delay, when not Locked, is how long the lock-delay of the lease that
	// expired or was forced (Token) still keeps everyone from taking the
	// key; 0 when it can be taken now.
	Delay time.Duration
}

// Get inspects key without taking it.
func (c *Client) Get(ctx context.Context, key string) (*Info, error) {
	var resp api.GetResponse
	if err := c.call(ctx, api.OpGet, key, struct{}{}, &resp); err != nil {
		return nil, err
	}
	info := &Info{Key: resp.Key, Locked: resp.Locked, Token: resp.Token,
		TTL: time.Duration(resp.TTLms) * time.Millisecond, Owner: resp.Owner,
		Delay: time.Duration(resp.DelayMs) * time.Millisecond}
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

// Wait blocks until key is unlocked (or ctx ends: ErrTimeout, or ctx's
// error when ctx was cancelled) and returns its state without taking the
// lock; nil when there is none. It waits in requests of at most a minute,
// each under the liveness window (WithAliveWindow) with a fresh wait id;
// a request whose renewal went unconfirmed is sent again.
func (c *Client) Wait(ctx context.Context, key string) ([]byte, error) {
	for {
		wait := c.chunk
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl)-20*time.Millisecond)
		}
		wait = max(wait, 0)
		req := api.WaitRequest{WaitMs: wait.Milliseconds()}
		var resp api.WaitResponse
		var err error
		if req.WaitMs > 0 && c.alive > 0 {
			req.WaitID, req.AliveMs = NewLockID(), c.alive.Milliseconds()
			_, err = c.park(ctx, api.OpWait, key, req.WaitID, req, &resp)
		} else {
			rctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
			err = c.call(rctx, api.OpWait, key, req, &resp)
			cancel()
		}
		switch {
		case err == nil:
			return resp.Value, nil
		case ctx.Err() != nil:
			return nil, ended(ctx, "wait", key)
		case errors.Is(err, errUnconfirmed):
			// The request is gone: send it again under a new wait id.
		case errors.Is(err, ErrTimeout) || isTimeout(err):
			if req.WaitMs == 0 {
				return nil, ended(ctx, "wait", key)
			}
		default:
			return nil, err
		}
	}
}
