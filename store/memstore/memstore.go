// Package memstore is an in-memory backend of the lock service, held to the
// same contract as the real ones by store/storetest. It adds fast,
// deterministic tests of the service's logic (with testing/synctest, or an
// injected clock) and replaces none of the tests against real servers.
//
// A Server holds the data: the leases, the fencing counters and the state
// objects of every key. Stores made with New on one Server act like service
// instances of one deployment: they see each other's locks, and each one's
// Notify reports every release and expiry. Nothing is persisted.
//
// # Time
//
// The Server's clock (Config.Now) decides everything: a lease has ended once
// the clock reaches its end, whether or not anything noticed yet, and
// LockedError.ExpiresIn is the time left by that clock. A timer per lease
// removes it when it ends and reports an Expired event; an operation that
// finds an ended lease first (the clock moved without the timer, as with a
// hand-driven fake clock) removes and reports it itself. Under
// testing/synctest the default clock (time.Now) and the timers are the
// bubble's.
//
// # Events
//
// Every lease ends with exactly one event: Released when its holder
// releases it or Force ends it, Expired when it runs out, each with the
// lease's token. A
// Transfer reports nothing: the key never becomes free, as with the
// JetStream store, whose watcher sees one lease replaced by the next.
package memstore

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lockservice/lockservice/store"
)

// Config configures a Server. The zero value is usable.
type Config struct {
	// ObjectTTL is how long a state object lives after its last write;
	// 0 keeps objects forever.
	ObjectTTL time.Duration
	// MaxValueBytes is the largest state object accepted; default 1 MiB.
	MaxValueBytes int
	// Now is the server's clock; default time.Now.
	Now func() time.Time
}

const defaultMaxValueBytes = 1 << 20

// ErrClosed is returned by the operations of a Store that was closed, or
// whose Server was. It matches store.ErrUnavailable.
var ErrClosed = fmt.Errorf("memstore: closed (%w)", store.ErrUnavailable)

// Server is the in-memory database that Stores share. Create it with
// NewServer and stop it with Close.
type Server struct {
	cfg Config

	mu     sync.Mutex
	closed bool
	keys   map[string]*entry
	subs   map[*Store]struct{} // stores with a Notify function
}

// entry is everything the server keeps for one key.
type entry struct {
	lease *lease      // the live lease, nil when the key is free
	last  store.Lease // the last grant, without ExpiresAt (for Get of a free key)
	fence uint64      // the token of the last grant; never reset
	value []byte      // the state object, nil when there is none
	// valueEnds is when the state object expires (zero: never).
	valueEnds time.Time
	timer     *time.Timer // ends the lease, or the lock-delay after it
	timerGen  uint64      // tells the current timer from stopped ones
	// delayed is the lease that expired or was forced while its lock-delay
	// runs (until delayEnds); nil otherwise.
	delayed   *lease
	delayEnds time.Time
}

// lease is a live grant.
type lease struct {
	holder string // lock id
	token  uint64
	ttl    time.Duration
	owner  string
	ends   time.Time     // by the server's clock
	delay  time.Duration // lock-delay after an expiry or Force
}

func (l *lease) public() store.Lease {
	return store.Lease{Token: l.token, TTL: l.ttl, ExpiresAt: l.ends, Owner: l.owner, Delay: l.delay}
}

// NewServer returns an empty server. It returns an error for a negative
// ObjectTTL or MaxValueBytes.
func NewServer(cfg Config) (*Server, error) {
	if cfg.ObjectTTL < 0 || cfg.MaxValueBytes < 0 {
		return nil, errors.New("memstore: object TTL and max value bytes must be >= 0")
	}
	if cfg.MaxValueBytes == 0 {
		cfg.MaxValueBytes = defaultMaxValueBytes
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg, keys: make(map[string]*entry), subs: make(map[*Store]struct{})}, nil
}

// Close stops the server's timers and the event delivery of its stores,
// waiting for a notify function that is running to return. The operations
// of its stores then return ErrClosed. Close always returns nil.
func (srv *Server) Close() error {
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		return nil
	}
	srv.closed = true
	for _, e := range srv.keys {
		srv.stopTimerLocked(e)
	}
	var stopped []chan struct{}
	for s := range srv.subs {
		stopped = append(stopped, s.stopLocked())
	}
	srv.mu.Unlock()
	for _, c := range stopped {
		<-c
	}
	return nil
}

// find returns key's entry as of now (an ended lease or expired object
// removed), or nil when the key was never used.
func (srv *Server) find(key string, now time.Time) *entry {
	e := srv.keys[key]
	if e == nil {
		return nil
	}
	if e.lease != nil && !now.Before(e.lease.ends) {
		srv.expireLocked(key, e, now)
	}
	if e.delayed != nil && !now.Before(e.delayEnds) {
		srv.undelayLocked(key, e)
	}
	if e.value != nil && !e.valueEnds.IsZero() && !now.Before(e.valueEnds) {
		e.value, e.valueEnds = nil, time.Time{}
	}
	return e
}

// ensure returns key's entry as of now, creating it.
func (srv *Server) ensure(key string, now time.Time) *entry {
	if e := srv.find(key, now); e != nil {
		return e
	}
	e := &entry{}
	srv.keys[key] = e
	return e
}

// grantLocked gives key to lockID with a new token.
func (srv *Server) grantLocked(key string, e *entry, lockID string, opts store.AcquireOptions, now time.Time) store.Lease {
	e.fence++
	e.lease = &lease{holder: lockID, token: e.fence, ttl: opts.TTL, owner: opts.Owner, ends: now.Add(opts.TTL), delay: max(opts.Delay, 0)}
	e.last = store.Lease{Token: e.fence, TTL: opts.TTL, Owner: opts.Owner}
	srv.armLocked(key, e, opts.TTL)
	return e.lease.public()
}

// endLocked removes the live lease of key and reports it as kind.
func (srv *Server) endLocked(key string, e *entry, kind store.EventKind) {
	srv.emitLocked(store.Event{Kind: kind, Key: key, Token: e.lease.token})
	e.lease = nil
	srv.stopTimerLocked(e)
}

// expireLocked ends key's lease, which has run out: at once, with an
// Expired event, or with a lock-delay by starting it (the event comes at
// its end).
func (srv *Server) expireLocked(key string, e *entry, now time.Time) {
	if e.lease.delay <= 0 {
		srv.endLocked(key, e, store.Expired)
		return
	}
	srv.delayLocked(key, e, e.lease.ends.Add(e.lease.delay), now)
}

// delayLocked ends key's lease without an event and keeps the key from
// everyone until ends.
func (srv *Server) delayLocked(key string, e *entry, ends, now time.Time) {
	e.delayed, e.delayEnds = e.lease, ends
	e.lease = nil
	if !now.Before(ends) {
		srv.undelayLocked(key, e)
		return
	}
	srv.armLocked(key, e, ends.Sub(now))
}

// undelayLocked ends the lock-delay of key: it can be taken again, which
// is reported as the expiry of the delayed lease.
func (srv *Server) undelayLocked(key string, e *entry) {
	srv.emitLocked(store.Event{Kind: store.Expired, Key: key, Token: e.delayed.token})
	e.delayed, e.delayEnds = nil, time.Time{}
	srv.stopTimerLocked(e)
}

// apply applies u, already validated, to the state object.
func (srv *Server) applyLocked(e *entry, u store.Update, now time.Time) {
	switch u.Op {
	case store.Set:
		e.value = clone(u.Value)
		e.valueEnds = time.Time{}
		if srv.cfg.ObjectTTL > 0 {
			e.valueEnds = now.Add(srv.cfg.ObjectTTL)
		}
	case store.Delete:
		e.value, e.valueEnds = nil, time.Time{}
	}
}

// armLocked (re)starts the timer that ends key's lease after d.
func (srv *Server) armLocked(key string, e *entry, d time.Duration) {
	srv.stopTimerLocked(e)
	gen := e.timerGen
	e.timer = time.AfterFunc(d, func() { srv.expire(key, gen) })
}

func (srv *Server) stopTimerLocked(e *entry) {
	e.timerGen++
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
}

// expire is the callback of key's lease timer of generation gen. The clock
// decides: a lease that has not ended by it gets a new timer.
func (srv *Server) expire(key string, gen uint64) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	e := srv.keys[key]
	if srv.closed || e == nil || e.timerGen != gen {
		return
	}
	now := srv.cfg.Now()
	switch {
	case e.lease != nil && now.Before(e.lease.ends):
		srv.armLocked(key, e, e.lease.ends.Sub(now))
	case e.lease != nil:
		srv.expireLocked(key, e, now)
	case e.delayed != nil && now.Before(e.delayEnds):
		srv.armLocked(key, e, e.delayEnds.Sub(now))
	case e.delayed != nil:
		srv.undelayLocked(key, e)
	}
}

// clone copies v, keeping nil and empty apart.
func clone(v []byte) []byte {
	if v == nil {
		return nil
	}
	return append(make([]byte, 0, len(v)), v...)
}
