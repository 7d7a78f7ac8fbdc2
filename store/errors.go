package store

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrLocked means another lock id holds the key.
	ErrLocked = errors.New("store: lock is held")
	// ErrNotHeld means the lock id does not hold the key: it never did, or
	// its lease expired, was released, or was taken over.
	ErrNotHeld = errors.New("store: lock not held")
	// ErrUnavailable means the backend could not be reached or refused to
	// serve; the operation may be retried.
	ErrUnavailable = errors.New("store: backend unavailable")
	// ErrInvalid means the request cannot be stored as given (bad key, value
	// too large, TTL out of range).
	ErrInvalid = errors.New("store: invalid request")
	// ErrFull means the backend refused the write for lack of room (a
	// bucket's or the server's limits, Redis's maxmemory): nothing was
	// written. Errors matching it also match ErrUnavailable: room comes
	// back as leases end and states expire, or when an operator raises the
	// limit the error names.
	ErrFull = errors.New("store: full")
)

// LockedError is returned by Acquire when another lock id holds the key, or
// when the lock-delay of a lease that expired or was forced still keeps the
// key from everyone (Delayed). It unwraps to ErrLocked.
type LockedError struct {
	Key string
	// Lease is the live lease, or with Delayed the lease that ended.
	Lease Lease
	// ExpiresIn is how long, by the backend's own clock, until the key can
	// be taken unless it is released first: until the lease ends, plus its
	// lock-delay. 0 when the backend does not know it in advance (it then
	// reports the end through Notifier).
	ExpiresIn time.Duration
	// Delayed: the lease has ended and its lock-delay is running.
	Delayed bool
}

func (e *LockedError) Error() string {
	if e.Delayed {
		return fmt.Sprintf("store: lock %q is in its lock-delay after the lease with token %d ended", e.Key, e.Lease.Token)
	}
	return fmt.Sprintf("store: lock %q is held (token %d)", e.Key, e.Lease.Token)
}

// Unwrap returns ErrLocked.
func (e *LockedError) Unwrap() error { return ErrLocked }
