// Package redis is the Redis backend of the lock service: fast and simple,
// on one Redis server, a Sentinel-managed primary or a Redis Cluster
// (Redis 7.0 or newer).
//
// # Layout
//
// Every lock key uses three Redis keys that share the hash tag {<key>}, so
// they live in one Cluster slot and one script can touch all of them:
//
//   - <ns>:{<key>}:lock is the lease, a hash with fields h (holder: hex of
//     sha256(lock id)[:16], so lock ids are never stored), o (owner label),
//     t (fencing token) and l (lease length in ms). It expires by PEXPIRE,
//     decided by the Redis server's clock alone.
//   - <ns>:{<key>}:fence is the fencing counter (INCR on every grant, no
//     expiry, never reset by the store).
//   - <ns>:{<key>}:obj is the state object, a string stored byte for byte,
//     with PEXPIRE ObjectTTL after each write when ObjectTTL is set, and no
//     expiry otherwise.
//   - <ns>:{<key>}:delay exists only for a lease with a lock-delay
//     (AcquireOptions.Delay; hash field d of the lease): the lease's token
//     and owner label ("token owner"),
//     expiring the delay after the lease (set again by each refresh, and by
//     Force to the delay from then; deleted by a release). While it exists
//     without a lease, nobody is granted the key.
//
// Each operation is one Lua script (acquire.lua, refresh.lua, update.lua
// for Release and Write, get.lua, transfer.lua, force.lua, embedded in the
// binary; steps.lua holds the steps several of them share) run with
// EVALSHA, which falls back to EVAL when the server does not have it
// cached: atomic on the server, with every key passed in KEYS. Concurrent
// calls share round trips: those that arrive while two pipelines are on
// the wire go out together in the next one (batch.go; not with Replicas,
// whose WAIT counts its own connection's writes). List (admin.go) scans for lease keys and reads each with
// lease.lua.
//
// # Tokens
//
// A lock's token is the value of its fence counter after the grant's INCR:
// strictly increasing per key as long as the counter survives. It can go
// backwards when the counter loses writes: a failover to a replica that had
// not received the last INCR (replication is asynchronous), a restart
// without persistence or from an older snapshot, eviction of the counter
// (allkeys-* policies; New refuses them unless Config.AllowEviction), or
// someone deleting the fence key (DEL, FLUSHALL). Run Redis with
// maxmemory-policy noeviction, appendonly yes and appendfsync always, and
// set Config.Replicas so a grant is reported only after replicas have it;
// where tokens must never repeat, use the JetStream store.
//
// # Guarantees
//
// Each operation is atomic on the node that owns the key. Mutual exclusion
// holds while that node keeps its data; with Replicas set, a write that
// returns nil has reached that many replicas (WAIT), which narrows but does
// not close the failover window (Redis may still promote a replica that
// missed it). WAIT counts any replica: in a routine Sentinel failover the
// old primary keeps taking writes that replicas not yet moved to the new
// primary acknowledge and later drop, unless Replicas counts every replica
// (and then writes fail until the old primary rejoins; docs/STORES.md). The store does not implement store.Notifier: a *LockedError
// carries ExpiresIn, the lease's remaining PTTL, and the service wakes
// waiters by timer.
//
// go-redis retries a command whose connection broke after it was sent
// (MaxRetries in its options): a retried Release that had already been
// applied then reports store.ErrNotHeld. Set MaxRetries to -1 on the client
// when that matters more than riding over broken connections.
package redis

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/store"
)

// Config configures the Redis store. The zero value is usable.
type Config struct {
	// Namespace prefixes every Redis key ("<ns>:{<key>}:lock"); default
	// "lockservice". It must not contain '{' or '}'.
	Namespace string
	// ObjectTTL is how long a state object lives after its last write;
	// 0 keeps objects forever. Rounded up to whole milliseconds.
	ObjectTTL time.Duration
	// MaxValueBytes is the largest state object accepted; default 1 MiB.
	MaxValueBytes int
	// Replicas, when above 0, makes every write wait (WAIT, on the node
	// that owns the key) until that many replicas acknowledged it; if fewer
	// did within ReplicaTimeout the operation returns an error wrapping
	// ErrNotReplicated (the write may or may not survive a failover). 0
	// turns the wait off. It needs a *goredis.Client or
	// *goredis.ClusterClient.
	Replicas int
	// ReplicaTimeout bounds the wait for replicas; default 1s.
	ReplicaTimeout time.Duration
	// AllowEviction lets New start on a Redis whose maxmemory-policy is
	// not noeviction, or whose policy it cannot read because CONFIG GET is
	// refused (as on many managed Redis services). Eviction breaks the
	// locks when memory fills: a volatile-* policy evicts live leases (a
	// second holder is granted), an allkeys-* policy also fence counters
	// (tokens start again at 1). Set it only for a Redis that never fills
	// or when losing locks is acceptable; New then reports the risk in
	// Warnings.
	AllowEviction bool
}

const (
	defaultNamespace      = "lockservice"
	defaultMaxValueBytes  = 1 << 20
	defaultReplicaTimeout = time.Second
)

// ErrNotReplicated means a write was applied on the primary but fewer than
// Config.Replicas replicas acknowledged it in time. It matches
// store.ErrUnavailable: the operation may be retried (Acquire by the same
// lock id returns the same grant).
var ErrNotReplicated = fmt.Errorf("redis: write not acknowledged by enough replicas (%w)", store.ErrUnavailable)

var (
	//go:embed steps.lua
	stepsSrc string
	//go:embed acquire.lua
	acquireSrc string
	//go:embed refresh.lua
	refreshSrc string
	//go:embed update.lua
	updateSrc string
	//go:embed get.lua
	getSrc string
	//go:embed transfer.lua
	transferSrc string
	//go:embed force.lua
	forceSrc string
	//go:embed lease.lua
	leaseSrc string

	acquireScript  = goredis.NewScript(withSteps(acquireSrc))
	refreshScript  = goredis.NewScript(withSteps(refreshSrc))
	updateScript   = goredis.NewScript(withSteps(updateSrc))
	getScript      = goredis.NewScript(getSrc)
	transferScript = goredis.NewScript(withSteps(transferSrc))
	forceScript    = goredis.NewScript(forceSrc)
	leaseScript    = goredis.NewScript(leaseSrc)
)

// withSteps inserts steps.lua after the first line of src, its #!lua
// shebang, which Redis reads only on the first line.
func withSteps(src string) string {
	shebang, body, _ := strings.Cut(src, "\n")
	return shebang + "\n" + stepsSrc + body
}

// Store is the Redis store. Create it with New; it is safe for concurrent
// use.
type Store struct {
	rdb      goredis.UniversalClient
	cfg      Config
	objTTLms string // ARGV for the object TTL, "0" for none
	mark     string // acquire.lua ARGV[4]
	warnings []string
	batch    batcher
}

var (
	_ store.Store       = (*Store)(nil)
	_ store.Transferrer = (*Store)(nil)
)

// New checks that Redis answers PING, checks the settings the store's
// guarantees rest on and loads the scripts. On every node that takes
// writes (the server, a Sentinel client's master, each Cluster master, each
// Ring shard) it reads maxmemory-policy, appendonly and save with CONFIG
// GET: a policy other than noeviction, or a refused CONFIG GET, fails New
// with an error wrapping ErrEvictionPolicy unless Config.AllowEviction is
// set; a node without persistence (or with RDB snapshots only) is reported
// in Warnings. New returns an error wrapping store.ErrUnavailable, naming
// the address, when Redis cannot be reached, and a plain error for an
// invalid Config. rdb stays the caller's: Close does not close it.
func New(ctx context.Context, rdb goredis.UniversalClient, cfg Config) (*Store, error) {
	if rdb == nil {
		return nil, errors.New("redis: nil client")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = defaultNamespace
	}
	if cfg.MaxValueBytes == 0 {
		cfg.MaxValueBytes = defaultMaxValueBytes
	}
	if cfg.ReplicaTimeout == 0 {
		cfg.ReplicaTimeout = defaultReplicaTimeout
	}
	switch {
	case strings.ContainsAny(cfg.Namespace, "{}"):
		return nil, fmt.Errorf("redis: namespace %q must not contain '{' or '}' (they would change the Cluster hash tag)", cfg.Namespace)
	case cfg.ObjectTTL < 0:
		return nil, fmt.Errorf("redis: object TTL must be >= 0, got %v", cfg.ObjectTTL)
	case cfg.MaxValueBytes < 0:
		return nil, fmt.Errorf("redis: max value bytes must be >= 0, got %d", cfg.MaxValueBytes)
	case cfg.Replicas < 0:
		return nil, fmt.Errorf("redis: replicas must be >= 0, got %d", cfg.Replicas)
	case cfg.ReplicaTimeout < time.Millisecond:
		// WAIT with timeout 0 would block forever.
		return nil, fmt.Errorf("redis: replica timeout must be at least 1ms, got %v", cfg.ReplicaTimeout)
	}
	if cfg.Replicas > 0 {
		switch rdb.(type) {
		case *goredis.Client, *goredis.ClusterClient:
		default:
			return nil, fmt.Errorf("redis: Replicas needs a *redis.Client or *redis.ClusterClient to WAIT on the key's node, got %T", rdb)
		}
	}
	s := &Store{rdb: rdb, cfg: cfg, objTTLms: "0", mark: "0"}
	if cfg.ObjectTTL > 0 {
		s.objTTLms = millis(cfg.ObjectTTL)
	}
	if cfg.Replicas > 0 {
		s.mark = "1"
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: redis at %s does not answer PING: %w", store.ErrUnavailable, addrOf(rdb), err)
	}
	warnings, err := s.checkServer(ctx)
	if err != nil {
		return nil, err
	}
	s.warnings = warnings
	for _, sc := range []*goredis.Script{acquireScript, refreshScript, updateScript, getScript, transferScript, forceScript, leaseScript} {
		if err := sc.Load(ctx, rdb).Err(); err != nil {
			if errors.Is(err, context.Canceled) {
				return nil, err
			}
			var rerr goredis.Error
			if errors.As(err, &rerr) && !transient(err) {
				return nil, fmt.Errorf("redis: load scripts on %s (lockservice needs Redis 7.0 or newer): %w", addrOf(rdb), err)
			}
			return nil, fmt.Errorf("%w: redis at %s: load scripts: %w", store.ErrUnavailable, addrOf(rdb), err)
		}
	}
	return s, nil
}

// Warnings returns the risks New found in the server's settings and let
// through, one sentence each naming the node and the setting to change:
// no persistence (a restart empties Redis and tokens start again at 1),
// RDB snapshots only, and, with Config.AllowEviction, an eviction policy
// other than noeviction or settings New could not read. Print them where
// operators look. It returns nil when there is nothing to report.
func (s *Store) Warnings() []string { return slices.Clone(s.warnings) }

// Close does nothing: the store holds no resources of its own, and the
// client stays the caller's.
func (s *Store) Close() error { return nil }

func addrOf(rdb goredis.UniversalClient) string {
	switch c := rdb.(type) {
	case *goredis.Client:
		if a := c.Options().Addr; a != "FailoverClient" {
			return a
		}
		// A Sentinel client's placeholder: its errors name the
		// sentinels it asked.
		return "the Sentinel primary"
	case *goredis.ClusterClient:
		return strings.Join(c.Options().Addrs, ",")
	case *goredis.Ring:
		addrs := make([]string, 0, len(c.Options().Addrs))
		for _, a := range c.Options().Addrs {
			addrs = append(addrs, a)
		}
		return strings.Join(addrs, ",")
	}
	return fmt.Sprintf("(%T)", rdb)
}

// millis renders d in whole milliseconds, rounded up, at least 1, so Redis
// never expires anything before d has passed.
func millis(d time.Duration) string {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return strconv.FormatInt(max(int64(ms), 1), 10)
}

// delayMillis renders a lock-delay in ms, rounded up; "0" for none.
func delayMillis(d time.Duration) string {
	if d <= 0 {
		return "0"
	}
	return millis(d)
}

func holder(lockID string) string {
	h := sha256.Sum256([]byte(lockID))
	return hex.EncodeToString(h[:16])
}

func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", store.ErrInvalid)
	}
	if strings.ContainsAny(key, "{}") {
		return fmt.Errorf("%w: key %q contains '{' or '}'", store.ErrInvalid, key)
	}
	return nil
}

// keys returns the lock, fence and object keys of key.
func (s *Store) keys(key string) (lock, fence, obj string) {
	p := s.cfg.Namespace + ":{" + key + "}:"
	return p + "lock", p + "fence", p + "obj"
}

// delayKey returns the lock-delay key of key.
func (s *Store) delayKey(key string) string {
	return s.cfg.Namespace + ":{" + key + "}:delay"
}

// updateArgs validates u and returns its script arguments (op, value).
func (s *Store) updateArgs(u store.Update) (string, []byte, error) {
	switch u.Op {
	case store.Keep:
		return "keep", nil, nil
	case store.Delete:
		return "delete", nil, nil
	case store.Set:
		if u.Value == nil {
			return "", nil, fmt.Errorf("%w: Set needs a non-nil value", store.ErrInvalid)
		}
		if len(u.Value) > s.cfg.MaxValueBytes {
			return "", nil, fmt.Errorf("%w: value is %d bytes, the limit is %d", store.ErrInvalid, len(u.Value), s.cfg.MaxValueBytes)
		}
		return "set", u.Value, nil
	}
	return "", nil, fmt.Errorf("%w: unknown update op %d", store.ErrInvalid, u.Op)
}

// transient reports Redis error replies that mean "not now" rather than
// "never": the server is loading, failing over, resharding or out of
// memory.
func transient(err error) bool {
	if _, ok := goredis.IsMovedError(err); ok {
		return true
	}
	if _, ok := goredis.IsAskError(err); ok {
		return true
	}
	return goredis.IsLoadingError(err) || goredis.IsReadOnlyError(err) ||
		goredis.IsClusterDownError(err) || goredis.IsTryAgainError(err) ||
		goredis.IsMasterDownError(err) || goredis.IsMaxClientsError(err) ||
		goredis.IsOOMError(err) || goredis.IsNoReplicasError(err) ||
		goredis.HasErrorPrefix(err, "BUSY")
}

// mapErr turns a go-redis error into the store's: context.Canceled as is,
// connection failures and transient server replies wrapped in
// store.ErrUnavailable, other server replies (script errors, WRONGTYPE)
// as they are.
func mapErr(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	var rerr goredis.Error
	if errors.As(err, &rerr) && !transient(err) {
		return fmt.Errorf("redis: %w", err)
	}
	if goredis.IsOOMError(err) {
		// Refused before the script ran: nothing was written.
		return fmt.Errorf("%w (%w: Redis is at its maxmemory; raise it or free keys): %w", store.ErrFull, store.ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// run executes sc in one round trip. When wrote reports that the script
// changed data and Config.Replicas is set, it then waits for the replicas
// on the same connection (WAIT counts the writes of its own connection).
// wrote == nil marks a read-only script.
func (s *Store) run(ctx context.Context, sc *goredis.Script, wrote func(any) bool, keys []string, args ...any) (any, error) {
	if s.cfg.Replicas == 0 || wrote == nil {
		r, err := s.batch.run(ctx, s.rdb, sc, keys, args...)
		return r, mapErr(err)
	}
	var node *goredis.Client
	switch c := s.rdb.(type) {
	case *goredis.Client:
		node = c
	case *goredis.ClusterClient:
		var err error
		if node, err = c.MasterForKey(ctx, keys[0]); err != nil {
			return nil, mapErr(err)
		}
	}
	conn := node.Conn()
	defer conn.Close()
	r, err := sc.Run(ctx, conn, keys, args...).Result()
	if err != nil {
		if cc, ok := s.rdb.(*goredis.ClusterClient); ok {
			if _, moved := goredis.IsMovedError(err); moved {
				cc.ReloadState(ctx) // the slot moved: learn the new owner for next time
			}
		}
		return nil, mapErr(err)
	}
	if !wrote(r) {
		return r, nil
	}
	n, err := conn.Wait(ctx, s.cfg.Replicas, s.cfg.ReplicaTimeout).Result()
	if err != nil {
		return nil, mapErr(err)
	}
	if n < int64(s.cfg.Replicas) {
		return nil, fmt.Errorf("%w: %d of %d replicas of %s acknowledged within %v", ErrNotReplicated, n, s.cfg.Replicas, nodeAddr(ctx, node.Options().Addr, conn), s.cfg.ReplicaTimeout)
	}
	return r, nil
}

// reply is a decoded script reply array.
type reply struct {
	a   []any
	err error
}

func decode(r any, minLen int) reply {
	a, ok := r.([]any)
	if !ok || len(a) < minLen {
		return reply{err: fmt.Errorf("redis: unexpected script reply %v", r)}
	}
	return reply{a: a}
}

func (r *reply) int(i int) int64 {
	if r.err != nil {
		return 0
	}
	switch v := r.a[i].(type) {
	case int64:
		return v
	case string:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			r.err = fmt.Errorf("redis: unexpected number %q in script reply", v)
		}
		return n
	}
	r.err = fmt.Errorf("redis: unexpected %T in script reply", r.a[i])
	return 0
}

func (r *reply) uint(i int) uint64 {
	if r.err != nil {
		return 0
	}
	switch v := r.a[i].(type) {
	case int64:
		return uint64(v)
	case string:
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			r.err = fmt.Errorf("redis: unexpected token %q in script reply", v)
		}
		return n
	}
	r.err = fmt.Errorf("redis: unexpected %T in script reply", r.a[i])
	return 0
}

func (r *reply) str(i int) string {
	if r.err != nil {
		return ""
	}
	v, ok := r.a[i].(string)
	if !ok {
		r.err = fmt.Errorf("redis: unexpected %T in script reply", r.a[i])
	}
	return v
}

// value reads the {has value, value} pair at i: nil when absent, a
// non-nil (possibly empty) slice otherwise.
func (r *reply) value(i int) []byte {
	if r.int(i) == 0 {
		return nil
	}
	v := r.str(i + 1)
	if r.err != nil {
		return nil
	}
	return append(make([]byte, 0, len(v)), v...)
}

// lease reads {token, owner, lease ms, pttl ms} at i. ExpiresAt counts the
// remaining PTTL from sent, the moment before the request: never later than
// the server's expiry, by this machine's clock.
func (r *reply) lease(i int, sent time.Time) (l store.Lease, left time.Duration) {
	l = store.Lease{
		Token: r.uint(i),
		Owner: r.str(i + 1),
		TTL:   time.Duration(r.int(i+2)) * time.Millisecond,
	}
	left = max(time.Duration(r.int(i+3))*time.Millisecond, 0)
	l.ExpiresAt = sent.Add(left)
	return l, left
}

// acquireWrote reports an acquire reply after which replicas must have
// the grant: granted (1) or granted before (2, moved past it); a refusal
// (0 held, 3 in a lock-delay) changes nothing.
func acquireWrote(r any) bool {
	if a, ok := r.([]any); ok && len(a) > 0 {
		n, _ := a[0].(int64)
		return n == 1 || n == 2
	}
	return false
}

func statusNonZero(r any) bool {
	if a, ok := r.([]any); ok && len(a) > 0 {
		n, _ := a[0].(int64)
		return n != 0
	}
	n, _ := r.(int64)
	return n != 0
}

// Acquire takes key for lockID, or returns lockID's live grant unchanged
// when it already holds key. It returns a *store.LockedError (ErrLocked)
// with the holder's lease and remaining PTTL when another lock id holds
// key, store.ErrInvalid for a bad key or TTL <= 0, and errors wrapping
// store.ErrUnavailable (ErrNotReplicated among them) when Redis cannot
// serve.
func (s *Store) Acquire(ctx context.Context, key, lockID string, opts store.AcquireOptions) (store.Grant, error) {
	if err := checkKey(key); err != nil {
		return store.Grant{}, err
	}
	if opts.TTL <= 0 {
		return store.Grant{}, fmt.Errorf("%w: TTL must be positive, got %v", store.ErrInvalid, opts.TTL)
	}
	lock, fence, obj := s.keys(key)
	sent := time.Now()
	raw, err := s.run(ctx, acquireScript, acquireWrote, []string{lock, fence, obj, s.delayKey(key)},
		holder(lockID), opts.Owner, millis(opts.TTL), s.mark, delayMillis(opts.Delay))
	if err != nil {
		return store.Grant{}, err
	}
	r := decode(raw, 5)
	status := r.int(0)
	lease, left := r.lease(1, sent)
	if r.err != nil {
		return store.Grant{}, r.err
	}
	switch status {
	case 0:
		// At least 1ms: 0 would mean "unknown" to the service.
		return store.Grant{}, &store.LockedError{Key: key, Lease: lease, ExpiresIn: max(left, time.Millisecond)}
	case 3:
		lease.ExpiresAt = time.Time{} // it has ended
		return store.Grant{}, &store.LockedError{Key: key, Lease: lease, ExpiresIn: max(left, time.Millisecond), Delayed: true}
	}
	if len(r.a) < 8 {
		return store.Grant{}, fmt.Errorf("redis: unexpected acquire reply %v", raw)
	}
	v := r.value(5)
	lease.Delay = time.Duration(r.int(7)) * time.Millisecond
	if r.err != nil {
		return store.Grant{}, r.err
	}
	return store.Grant{Lease: lease, Value: v}, nil
}

// Refresh sets the lease lockID holds on key to ttl from now, keeping its
// token. It returns store.ErrNotHeld when lockID does not hold key,
// store.ErrInvalid for a bad key or ttl <= 0, and errors wrapping
// store.ErrUnavailable when Redis cannot serve.
func (s *Store) Refresh(ctx context.Context, key, lockID string, ttl time.Duration) (store.Lease, error) {
	if err := checkKey(key); err != nil {
		return store.Lease{}, err
	}
	if ttl <= 0 {
		return store.Lease{}, fmt.Errorf("%w: TTL must be positive, got %v", store.ErrInvalid, ttl)
	}
	lock, _, _ := s.keys(key)
	ms := millis(ttl)
	sent := time.Now()
	raw, err := s.run(ctx, refreshScript, statusNonZero, []string{lock, s.delayKey(key)}, holder(lockID), ms)
	if err != nil {
		return store.Lease{}, err
	}
	r := decode(raw, 1)
	if r.int(0) == 0 {
		if r.err != nil {
			return store.Lease{}, r.err
		}
		return store.Lease{}, store.ErrNotHeld
	}
	if len(r.a) < 3 {
		return store.Lease{}, fmt.Errorf("redis: unexpected refresh reply %v", raw)
	}
	n, _ := strconv.ParseInt(ms, 10, 64)
	l := store.Lease{Token: r.uint(1), Owner: r.str(2), TTL: time.Duration(n) * time.Millisecond}
	l.ExpiresAt = sent.Add(l.TTL)
	return l, r.err
}

// Release applies u to key's state object and ends lockID's lease, in one
// step. It returns store.ErrNotHeld, changing nothing, when lockID does not
// hold key; store.ErrInvalid for a bad key or update (checked before
// contacting Redis); errors wrapping store.ErrUnavailable when Redis cannot
// serve.
func (s *Store) Release(ctx context.Context, key, lockID string, u store.Update) error {
	return s.update(ctx, key, lockID, u, "release", true)
}

// Write applies u to key's state object while lockID keeps its lease. It
// returns the same errors as Release.
func (s *Store) Write(ctx context.Context, key, lockID string, u store.Update) error {
	return s.update(ctx, key, lockID, u, "write", u.Op != store.Keep)
}

// update runs update.lua; mode is "release" or "write", writes whether a
// successful run changes data (and so waits for replicas).
func (s *Store) update(ctx context.Context, key, lockID string, u store.Update, mode string, writes bool) error {
	if err := checkKey(key); err != nil {
		return err
	}
	op, value, err := s.updateArgs(u)
	if err != nil {
		return err
	}
	lock, _, obj := s.keys(key)
	wrote := statusNonZero
	if !writes {
		wrote = func(any) bool { return false }
	}
	raw, err := s.run(ctx, updateScript, wrote, []string{lock, obj, s.delayKey(key)}, holder(lockID), op, value, s.objTTLms, mode)
	if err != nil {
		return err
	}
	switch n, ok := raw.(int64); {
	case !ok:
		return fmt.Errorf("redis: unexpected script reply %v", raw)
	case n == 0:
		return store.ErrNotHeld
	}
	return nil
}

// Get reads key's lease and state object. An unlocked key's Lease carries
// only the token of its last grant (0 for a key never granted). It returns
// store.ErrInvalid for a bad key and errors wrapping store.ErrUnavailable
// when Redis cannot serve.
func (s *Store) Get(ctx context.Context, key string) (store.Info, error) {
	if err := checkKey(key); err != nil {
		return store.Info{}, err
	}
	lock, fence, obj := s.keys(key)
	sent := time.Now()
	raw, err := s.run(ctx, getScript, nil, []string{lock, fence, obj, s.delayKey(key)})
	if err != nil {
		return store.Info{}, err
	}
	r := decode(raw, 8)
	locked := r.int(0) == 1
	var info store.Info
	if locked {
		info.Lease, _ = r.lease(1, sent)
	} else {
		info.Lease.Token = r.uint(1)
	}
	info.Locked = locked
	info.Value = r.value(5)
	if !locked {
		info.Delay = time.Duration(r.int(7)) * time.Millisecond
	}
	if r.err != nil {
		return store.Info{}, r.err
	}
	return info, nil
}

// Transfer ends fromID's lease, applies u and grants key to toID, in one
// script. It returns store.ErrNotHeld, changing nothing, when fromID does
// not hold key; the other errors are those of Acquire.
func (s *Store) Transfer(ctx context.Context, key, fromID string, u store.Update, toID string, opts store.AcquireOptions) (store.Grant, error) {
	if err := checkKey(key); err != nil {
		return store.Grant{}, err
	}
	if opts.TTL <= 0 {
		return store.Grant{}, fmt.Errorf("%w: TTL must be positive, got %v", store.ErrInvalid, opts.TTL)
	}
	op, val, err := s.updateArgs(u)
	if err != nil {
		return store.Grant{}, err
	}
	lock, fence, obj := s.keys(key)
	sent := time.Now()
	raw, err := s.run(ctx, transferScript, statusNonZero, []string{lock, fence, obj, s.delayKey(key)},
		holder(fromID), op, val, s.objTTLms, holder(toID), opts.Owner, millis(opts.TTL), delayMillis(opts.Delay))
	if err != nil {
		return store.Grant{}, err
	}
	r := decode(raw, 1)
	if r.int(0) == 0 {
		if r.err != nil {
			return store.Grant{}, r.err
		}
		return store.Grant{}, store.ErrNotHeld
	}
	if len(r.a) < 8 {
		return store.Grant{}, fmt.Errorf("redis: unexpected transfer reply %v", raw)
	}
	lease, _ := r.lease(1, sent)
	v := r.value(5)
	lease.Delay = time.Duration(r.int(7)) * time.Millisecond
	if r.err != nil {
		return store.Grant{}, r.err
	}
	return store.Grant{Lease: lease, Value: v}, nil
}
