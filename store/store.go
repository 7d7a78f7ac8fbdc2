// Package store defines the seam between the lock service and the databases
// that hold lock state: a small set of atomic operations that every backend
// (store/jetstream, store/redis) implements and that store/storetest checks.
//
// A lock is a lease on a key, held under a lock id chosen by the acquirer,
// with a fencing token that strictly increases each time the lock changes
// hands. Each key also has an optional state object, stored byte for byte,
// whose expiry is independent of the lease. Only the current holder (the lock
// id of the live lease) can change the state object.
//
// Every operation is atomic in the backend: either it is applied as a whole or
// not at all, and none of them is decided by comparing clocks of different
// machines; lease expiry is always the backend server's decision.
package store

import (
	"context"
	"time"
)

// Store is implemented by every backend. Implementations must be safe for
// concurrent use. Errors other than the sentinels below mean the outcome is
// unknown (the backend may or may not have applied the operation); callers
// that need to know re-read with Get.
type Store interface {
	// Acquire takes key for lockID if it is free, or returns the live lease
	// unchanged when lockID already holds it (an idempotent retry). The grant
	// carries the key's state object. When another lock id holds the key it
	// returns a *LockedError that unwraps to ErrLocked.
	Acquire(ctx context.Context, key, lockID string, opts AcquireOptions) (Grant, error)

	// Refresh extends the live lease held by lockID to ttl from now. The
	// fencing token does not change. It returns ErrNotHeld when lockID does
	// not hold key (never held, expired, released, or taken over).
	Refresh(ctx context.Context, key, lockID string, ttl time.Duration) (Lease, error)

	// Release ends the lease held by lockID and applies u to the state object
	// in the same atomic step. It returns ErrNotHeld, and changes nothing,
	// when lockID does not hold key.
	Release(ctx context.Context, key, lockID string, u Update) error

	// Write applies u to the state object while lockID keeps holding key. It
	// returns ErrNotHeld, and changes nothing, when lockID does not hold key.
	Write(ctx context.Context, key, lockID string, u Update) error

	// Get reads the lock and the state object of key without changing them.
	// A key that was never used is an unlocked Info with no value, not an
	// error.
	Get(ctx context.Context, key string) (Info, error)

	// Close releases the store's resources (not the locks it holds). It does
	// not close connections the caller passed in.
	Close() error
}

// Notifier is an optional interface of stores that observe lock changes
// made by anyone (other service instances, or the backend's own expiry).
// The service uses it to wake waiters when a lease expires. Stores that do
// not implement it report expiry times in *LockedError instead, and the
// service wakes waiters by timer.
type Notifier interface {
	// Notify registers fn to be called for every lock release or expiry the
	// store observes. fn must not block. Notify may be called once. A lease
	// with a lock-delay is reported as expired when the delay has passed
	// and the key can be taken again.
	Notify(fn func(Event))
}

// EventKind says what ended a lease.
type EventKind int

const (
	// Released means the holder released (or deleted) the lock.
	Released EventKind = iota + 1
	// Expired means the lease ran out and the backend removed it.
	Expired
)

// Event reports the end of a lease on Key.
type Event struct {
	Kind EventKind
	Key  string
	// Token is the fencing token of the lease that ended, or 0 if unknown.
	Token uint64
}

// AcquireOptions are the parameters of a new lease.
type AcquireOptions struct {
	// TTL is the lease length. Backends with coarser expiry round it up, so
	// the lease never ends before TTL has passed since the request.
	TTL time.Duration
	// Owner is a free-form label shown to anyone who inspects the lock.
	Owner string
	// Delay is the lease's lock-delay: when the lease expires, or Force
	// ends it, the key is granted to nobody for Delay more (the holder's
	// operations fail from the lease's end as always). A release hands the
	// key over at once. Refresh keeps the delay; Transfer gives the new
	// lease its own. Backends with coarser expiry round it up, never down.
	// 0: none.
	Delay time.Duration
}

// Lease describes a live (or the last) grant of a key.
type Lease struct {
	// Token is the fencing token of the grant: strictly greater than the
	// token of every earlier grant of the same key, and constant across
	// refreshes of this grant.
	Token uint64
	// TTL is the lease length granted by the last acquire or refresh.
	TTL time.Duration
	// ExpiresAt is when the lease ends, by the clock of the machine running
	// the store client; informational only, never used for decisions.
	ExpiresAt time.Time
	// Owner is the label given at acquire time.
	Owner string
	// Delay is the lease's lock-delay (AcquireOptions.Delay of its grant,
	// as the store keeps it); 0: none. Set at least in the Grant of
	// Acquire (an idempotent retry included) and Transfer.
	Delay time.Duration
}

// Grant is the result of a successful Acquire.
type Grant struct {
	Lease
	// Value is the state object, or nil when the key has none.
	Value []byte
}

// Info is the result of Get.
type Info struct {
	// Locked is true when a lease is live.
	Locked bool
	// Lease is the live lease when Locked; otherwise the last grant if the
	// backend still knows it (Token 0 when it does not).
	Lease Lease
	// Value is the state object, or nil when the key has none.
	Value []byte
	// Delay is, when the key is not Locked, how long the lock-delay of
	// the lease that expired or was forced still keeps anyone from taking
	// it; 0 when the key can be taken now. Lease is then the ended lease.
	Delay time.Duration
}

// UpdateOp says what to do with the state object.
type UpdateOp int

const (
	// Keep leaves the state object as it is.
	Keep UpdateOp = iota
	// Set replaces the state object with Update.Value.
	Set
	// Delete removes the state object.
	Delete
)

// Update is a change to the state object.
type Update struct {
	Op UpdateOp
	// Value is the new state for Set; it must not be nil for Set.
	Value []byte
}

// Transferrer is an optional interface of stores that can hand a lock from
// its holder straight to the next one in a single atomic operation, so a
// hand-over costs one round trip instead of a release and an acquire. The
// service uses it when a release finds requests parked for the key.
type Transferrer interface {
	// Transfer ends the lease fromID holds on key, applies u to the state
	// object, and grants key to toID with opts, atomically. The grant has a
	// new fencing token and carries the state after u. It returns
	// ErrNotHeld, changing nothing, when fromID does not hold key.
	Transfer(ctx context.Context, key, fromID string, u Update, toID string, opts AcquireOptions) (Grant, error)
}

// Admin is an optional interface of stores that can list the held locks and
// end a lease whoever holds it, for operators. Neither call reads state
// objects.
type Admin interface {
	// List returns live leases whose keys start with prefix ("" for all),
	// at most limit of them, from the page named by cursor ("" for the
	// first page), and the cursor of the next page. The cursor is "" when
	// the listing is complete; a non-empty one may lead to an empty last
	// page. A cursor is only good for the same prefix.
	//
	// The order is unspecified. A lock held throughout the listing is
	// returned, never twice on one page; a backend whose pages cannot
	// rule it out (Redis SCAN) may return it again on a later page and
	// says so. A lock taken or ended during the listing may or may not be
	// returned. It returns ErrInvalid for a limit below 1 or a cursor it
	// cannot read.
	List(ctx context.Context, prefix, cursor string, limit int) ([]Held, string, error)

	// Force ends the live lease of key, whoever holds it, as a release
	// that leaves the state object as it is: the lock id that held it can
	// no longer refresh, write or release (ErrNotHeld), and the next
	// grant's token is higher than the forced lease's. Notifier stores
	// report it as a Released event with the lease's token. A lease with a
	// lock-delay (AcquireOptions.Delay) keeps the key from everyone for
	// the delay, counted from Force; Notifier stores report the delay's
	// end as an Expired event. It returns the lease it ended, or
	// ErrNotHeld, changing nothing, when no lease is live.
	Force(ctx context.Context, key string) (Lease, error)
}

// Held is a live lease found by Admin.List.
type Held struct {
	Key   string
	Lease Lease
}
