package memstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lockservice/lockservice/store"
)

// enter checks ctx and the store, takes the server's mutex and returns the
// server's time. The caller unlocks srv.mu when it returns no error.
func (s *Store) enter(ctx context.Context) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		if errors.Is(err, context.Canceled) {
			return time.Time{}, err
		}
		return time.Time{}, fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	s.srv.mu.Lock()
	if s.closed || s.srv.closed {
		s.srv.mu.Unlock()
		return time.Time{}, ErrClosed
	}
	return s.srv.cfg.Now(), nil
}

func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", store.ErrInvalid)
	}
	return nil
}

func checkTTL(ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("%w: TTL must be positive, got %v", store.ErrInvalid, ttl)
	}
	return nil
}

func (s *Store) checkUpdate(u store.Update) error {
	switch u.Op {
	case store.Keep, store.Delete:
		return nil
	case store.Set:
		if u.Value == nil {
			return fmt.Errorf("%w: Set needs a non-nil value", store.ErrInvalid)
		}
		if limit := s.srv.cfg.MaxValueBytes; len(u.Value) > limit {
			return fmt.Errorf("%w: value is %d bytes, the limit is %d", store.ErrInvalid, len(u.Value), limit)
		}
		return nil
	}
	return fmt.Errorf("%w: unknown update op %d", store.ErrInvalid, u.Op)
}

// heldLocked returns key's entry when lockID holds its live lease, or
// store.ErrNotHeld.
func (s *Store) heldLocked(key, lockID string, now time.Time) (*entry, error) {
	e := s.srv.find(key, now)
	if e == nil || e.lease == nil || e.lease.holder != lockID {
		return nil, store.ErrNotHeld
	}
	return e, nil
}

// Acquire takes key for lockID, or returns lockID's live grant unchanged
// when it already holds key. It returns a *store.LockedError (ErrLocked)
// with the holder's lease and the time it has left by the server's clock
// when another lock id holds key, store.ErrInvalid for an empty key or a
// TTL <= 0, ErrClosed after Close, and ctx's error (wrapping
// store.ErrUnavailable for a deadline) when ctx is done.
func (s *Store) Acquire(ctx context.Context, key, lockID string, opts store.AcquireOptions) (store.Grant, error) {
	if err := checkKey(key); err != nil {
		return store.Grant{}, err
	}
	if err := checkTTL(opts.TTL); err != nil {
		return store.Grant{}, err
	}
	now, err := s.enter(ctx)
	if err != nil {
		return store.Grant{}, err
	}
	defer s.srv.mu.Unlock()
	e := s.srv.ensure(key, now)
	if l := e.lease; l != nil {
		if l.holder != lockID {
			return store.Grant{}, &store.LockedError{Key: key, Lease: l.public(), ExpiresIn: l.ends.Add(l.delay).Sub(now)}
		}
		return store.Grant{Lease: l.public(), Value: clone(e.value)}, nil
	}
	if l := e.delayed; l != nil {
		return store.Grant{}, &store.LockedError{Key: key, Lease: l.public(), ExpiresIn: e.delayEnds.Sub(now), Delayed: true}
	}
	l := s.srv.grantLocked(key, e, lockID, opts, now)
	return store.Grant{Lease: l, Value: clone(e.value)}, nil
}

// Refresh sets the lease lockID holds on key to ttl from now, keeping its
// token. It returns store.ErrNotHeld when lockID does not hold key, and
// otherwise the errors of Acquire.
func (s *Store) Refresh(ctx context.Context, key, lockID string, ttl time.Duration) (store.Lease, error) {
	if err := checkKey(key); err != nil {
		return store.Lease{}, err
	}
	if err := checkTTL(ttl); err != nil {
		return store.Lease{}, err
	}
	now, err := s.enter(ctx)
	if err != nil {
		return store.Lease{}, err
	}
	defer s.srv.mu.Unlock()
	e, err := s.heldLocked(key, lockID, now)
	if err != nil {
		return store.Lease{}, err
	}
	e.lease.ttl, e.lease.ends = ttl, now.Add(ttl)
	e.last.TTL = ttl
	s.srv.armLocked(key, e, ttl)
	return e.lease.public(), nil
}

// Release applies u to key's state object and ends lockID's lease, in one
// step, and reports a Released event. It returns store.ErrNotHeld,
// changing nothing, when lockID does not hold key; store.ErrInvalid for an
// empty key or a bad update; otherwise the errors of Acquire.
func (s *Store) Release(ctx context.Context, key, lockID string, u store.Update) error {
	return s.update(ctx, key, lockID, u, true)
}

// Write applies u to key's state object while lockID keeps its lease. It
// returns the errors of Release.
func (s *Store) Write(ctx context.Context, key, lockID string, u store.Update) error {
	return s.update(ctx, key, lockID, u, false)
}

func (s *Store) update(ctx context.Context, key, lockID string, u store.Update, release bool) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if err := s.checkUpdate(u); err != nil {
		return err
	}
	now, err := s.enter(ctx)
	if err != nil {
		return err
	}
	defer s.srv.mu.Unlock()
	e, err := s.heldLocked(key, lockID, now)
	if err != nil {
		return err
	}
	s.srv.applyLocked(e, u, now)
	if release {
		s.srv.endLocked(key, e, store.Released)
	}
	return nil
}

// Get reads key's lease and state object. A free key's Lease is its last
// grant (token, TTL and owner; no ExpiresAt), the zero Lease for a key
// never granted. It returns store.ErrInvalid for an empty key, ErrClosed
// after Close, and ctx's error when ctx is done.
func (s *Store) Get(ctx context.Context, key string) (store.Info, error) {
	if err := checkKey(key); err != nil {
		return store.Info{}, err
	}
	now, err := s.enter(ctx)
	if err != nil {
		return store.Info{}, err
	}
	defer s.srv.mu.Unlock()
	e := s.srv.find(key, now)
	if e == nil {
		return store.Info{}, nil
	}
	if e.lease != nil {
		return store.Info{Locked: true, Lease: e.lease.public(), Value: clone(e.value)}, nil
	}
	if e.delayed != nil {
		return store.Info{Lease: e.last, Value: clone(e.value), Delay: e.delayEnds.Sub(now)}, nil
	}
	return store.Info{Lease: e.last, Value: clone(e.value)}, nil
}

// Transfer ends fromID's lease, applies u and grants key to toID with a new
// token, in one step. It reports no event: the key is never free. It
// returns store.ErrNotHeld, changing nothing, when fromID does not hold
// key, and otherwise the errors of Acquire and Release.
func (s *Store) Transfer(ctx context.Context, key, fromID string, u store.Update, toID string, opts store.AcquireOptions) (store.Grant, error) {
	if err := checkKey(key); err != nil {
		return store.Grant{}, err
	}
	if err := checkTTL(opts.TTL); err != nil {
		return store.Grant{}, err
	}
	if err := s.checkUpdate(u); err != nil {
		return store.Grant{}, err
	}
	now, err := s.enter(ctx)
	if err != nil {
		return store.Grant{}, err
	}
	defer s.srv.mu.Unlock()
	e, err := s.heldLocked(key, fromID, now)
	if err != nil {
		return store.Grant{}, err
	}
	s.srv.applyLocked(e, u, now)
	l := s.srv.grantLocked(key, e, toID, opts, now)
	return store.Grant{Lease: l, Value: clone(e.value)}, nil
}
