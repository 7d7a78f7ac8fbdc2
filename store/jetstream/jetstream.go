// Package jetstream is the JetStream KV backend of the lock service: the CP
// choice, replicated by Raft when the bucket has 3 or more replicas.
//
// Layout: one KV bucket (stream KV_<bucket>, History 1, file storage) holds
// two subjects per lock key: $KV.<bucket>.l.<key> for the lease and
// $KV.<bucket>.o.<key> for the state object.
//
//   - A lease is a message with a per-message TTL (Nats-TTL, whole seconds,
//     rounded up) written with an expected last subject sequence, so taking
//     or renewing a lock is one compare-and-set publish. The server expires
//     it by its own clock and writes a limit marker, which watchers see.
//   - The fencing token is the stream sequence of the grant: strictly
//     increasing for the whole bucket, kept across restarts and failovers as
//     long as the bucket is not deleted. Refreshes carry the token forward.
//   - Release, release-with-write and delete are one atomic batch (server
//     2.12+): the object change and the lease purge, both checked against the
//     lease's sequence, so a holder whose lease expired writes nothing.
//   - Write-while-holding is one publish to the object subject guarded by the
//     lease subject's last sequence.
//
// Each Store watches the bucket (watch.go) to learn of releases and
// expiries made anywhere, and keeps the last state it saw per lease subject
// as a hint, so the usual operation is a single round trip; a stale hint only
// costs a re-read, never correctness. It also keeps the set of keys that
// have a state object, which lets Acquire skip reading the object of a key
// that has none (see noObject for why that is safe).
//
// A lease is live only while the server's present time is before the lease
// message's stored time plus its TTL (clock.go): a message's presence in the
// stream is not enough, because a file store recovering from an unclean
// shutdown can bring back messages it had removed (docs/STORES.md). Lease
// records (record.go) that this store could not have written are never live.
//
// For operators (admin.go), List reads the lease subjects alone with a
// consumer made for the call, and Force ends a lease with the marker a
// release writes.
package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/store"
)

// Config configures the JetStream store.
type Config struct {
	// Bucket is the KV bucket name ([a-zA-Z0-9_-]); default "lockservice".
	// Deleting the bucket resets fencing tokens: never recreate it while
	// anyone relies on tokens issued from it.
	Bucket string
	// Replicas is the stream's replica count (1, 3 or 5); default 1.
	Replicas int
	// ObjectTTL is how long a state object lives after its last write;
	// 0 keeps objects forever. Rounded up to whole seconds.
	ObjectTTL time.Duration
	// MarkerTTL is how long release and expiry markers stay (they let get
	// report the last token of an unlocked key), and the longest lease the
	// bucket accepts: a marker must outlive every lease before it on its
	// subject, so that whatever a recovering file store brings back once
	// the marker is gone has ended by the server's clock. Default 10
	// minutes (the service's default longest lease).
	MarkerTTL time.Duration
	// Logger receives warnings (records lockservice did not write, leases
	// the server failed to expire, watcher rebuilds); nil discards them.
	Logger *slog.Logger
	// MaxValueBytes is the largest state object accepted; default 1 MiB
	// less room for headers, capped by the server's max_payload.
	MaxValueBytes int
	// MaxMsgs caps the number of messages in the bucket when New creates
	// it (the stream's max_msgs, discard new): one per key for its lease
	// or release marker, one per state object. 0 sets no limit: only the
	// server's and the account's JetStream storage limits apply. An
	// existing bucket keeps its own limits (nats stream edit KV_<bucket>
	// --max-msgs N). At the limit, taking a key that has no message and
	// writing a state object are refused with an error matching
	// ErrBucketFull, and so are releases with a write and deletes (atomic
	// batches need room for their messages); refreshes, plain releases and
	// hand-overs of existing leases still work. A full server or account
	// refuses every write.
	MaxMsgs int64
}

// The defaults of Config (New fills zero fields with them).
const (
	DefaultBucket    = "lockservice"
	DefaultReplicas  = 1
	DefaultMarkerTTL = 10 * time.Minute
)

const (
	hintLimit = 200_000
	// objLimit bounds the set of keys with a state object; past it the
	// store stops tracking them and always reads the object on acquire.
	objLimit = 1_000_000
)

// Store is the JetStream KV store. Create it with New.
type Store struct {
	nc      *nats.Conn
	js      natsjs.JetStream
	str     natsjs.Stream
	cfg     Config
	log     *slog.Logger
	stream  string
	lockPfx string // $KV.<bucket>.l.
	objPfx  string // $KV.<bucket>.o.
	objTTL  string // Nats-TTL for objects, "" for none
	// markerTTL is the bucket's marker TTL, the longest lease: Config's,
	// or the bucket's when that is longer (read at start and with every
	// clock sample, so that an operator's nats stream edit raising it is
	// seen within a second; it never shrinks).
	markerTTL atomic.Int64
	clock     serverClock
	status    chan nats.Status

	bgMu   sync.Mutex // guards closed
	closed bool       // Close began: no new background work
	mu     sync.Mutex
	hints  map[string]lockState // last state seen per key: a hint only
	notify func(store.Event)
	w      watchState

	acquires  atomic.Int64  // grants attempted (compare-and-set publishes on a free lease)
	skipped   atomic.Int64  // of those, made without reading the state object
	reaped    atomic.Int64  // leases replaced because they had ended by the server's clock
	done      chan struct{} // closed by Close
	bg        context.Context
	stop      context.CancelFunc // cancels bg: background requests end with Close
	closeOnce sync.Once
	wg        sync.WaitGroup
	stops     sync.WaitGroup // watcher consumers being stopped
}

// Stats are counters of one Store since New.
type Stats struct {
	// Acquires counts compare-and-set publishes on a free lease; Skipped
	// those made without reading the state object (the key had none).
	Acquires, Skipped int64
	// Reaped counts leases this store replaced because they were still in
	// the stream after their end by the server's clock.
	Reaped int64
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{Acquires: s.acquires.Load(), Skipped: s.skipped.Load(), Reaped: s.reaped.Load()}
}

var (
	_ store.Store    = (*Store)(nil)
	_ store.Notifier = (*Store)(nil)
)

// ErrServerTooOld is returned by New when the server lacks per-message TTLs
// or atomic batch publish (nats-server before 2.12, JetStream API level < 2).
var ErrServerTooOld = errors.New("jetstream: nats-server too old")

// ErrAtomicPublishUnsupported is returned by New when the stream does not
// accept atomic batch publish after it was asked to.
var ErrAtomicPublishUnsupported = errors.New("jetstream: stream does not allow atomic publish")

// New checks that the server can run the lock service (JetStream enabled,
// API level >= 2), creates the bucket's stream or checks the existing one
// (it never changes an existing bucket's settings; see stream.go) and
// starts watching it. It returns ErrServerTooOld or
// ErrAtomicPublishUnsupported when the server cannot give the guarantees,
// and an error matching ErrBucketMismatch when the bucket exists with other
// settings. nc stays the caller's.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = DefaultBucket
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = DefaultReplicas
	}
	if cfg.MarkerTTL == 0 {
		cfg.MarkerTTL = DefaultMarkerTTL
	}
	if cfg.Replicas < 1 || cfg.Replicas > 5 {
		return nil, fmt.Errorf("jetstream: replicas must be 1 to 5, got %d", cfg.Replicas)
	}
	if cfg.ObjectTTL < 0 || cfg.MarkerTTL < time.Second {
		return nil, fmt.Errorf("jetstream: object TTL must be >= 0 and marker TTL >= 1s")
	}
	cfg.MarkerTTL = ttlSeconds(cfg.MarkerTTL) // the server's resolution
	maxPayload := int(nc.MaxPayload())
	if cfg.MaxValueBytes == 0 || cfg.MaxValueBytes > maxPayload-4096 {
		cfg.MaxValueBytes = maxPayload - 4096
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ai, err := js.AccountInfo(ctx)
	if err != nil {
		if errors.Is(err, natsjs.ErrJetStreamNotEnabled) || errors.Is(err, natsjs.ErrJetStreamNotEnabledForAccount) {
			return nil, fmt.Errorf("jetstream: JetStream is not enabled on nats-server %s at %s; start it with -js (or a jetstream{} block)", nc.ConnectedServerVersion(), nc.ConnectedAddr())
		}
		return nil, fmt.Errorf("jetstream: account info: %w", err)
	}
	if ai.API.Level < 2 {
		return nil, fmt.Errorf("%w: nats-server %s at %s has JetStream API level %d; lockservice needs nats-server 2.12 or newer (API level 2) for per-key TTLs and atomic batch publish",
			ErrServerTooOld, nc.ConnectedServerVersion(), nc.ConnectedAddr(), ai.API.Level)
	}
	s := &Store{
		nc: nc, js: js, cfg: cfg, log: cfg.Logger,
		stream:  "KV_" + cfg.Bucket,
		lockPfx: "$KV." + cfg.Bucket + ".l.",
		objPfx:  "$KV." + cfg.Bucket + ".o.",
		hints:   make(map[string]lockState),
		done:    make(chan struct{}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.w.rebuild = make(chan struct{}, 1)
	if cfg.ObjectTTL > 0 {
		s.objTTL = ttlHeader(cfg.ObjectTTL)
	}
	st, err := ensureStream(ctx, js, streamConfig(cfg, maxPayload), nc.ConnectedServerVersion())
	if err != nil {
		return nil, err
	}
	s.str = st
	// The bucket may keep markers longer than asked: adopt it.
	s.markerTTL.Store(int64(max(cfg.MarkerTTL, st.CachedInfo().Config.SubjectDeleteMarkerTTL)))
	s.bg, s.stop = context.WithCancel(context.Background())
	if err := untilVisible(ctx, func() error { _, err := s.serverNow(ctx); return err }); err != nil {
		s.stop()
		return nil, err
	}
	// Connection drops are watched before the watcher starts, so that no
	// break can fall between the two.
	s.status = nc.StatusChanged(nats.DISCONNECTED, nats.RECONNECTING, nats.CONNECTED)
	if err := untilVisible(ctx, func() error { return s.startWatch(ctx) }); err != nil {
		nc.RemoveStatusListener(s.status)
		s.stop()
		return nil, fmt.Errorf("jetstream: watch %s: %w", s.stream, err)
	}
	s.wg.Add(2)
	status, rebuild := s.status, s.w.rebuild
	go func() { defer s.wg.Done(); s.rebuilder(status, rebuild) }()
	go func() { defer s.wg.Done(); s.reaper() }()
	return s, nil
}

// Close stops watching the bucket. It does not close the connection.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.stop()
		s.nc.RemoveStatusListener(s.status)
		s.bgMu.Lock()
		s.closed = true
		s.bgMu.Unlock()
		s.wg.Wait()
		s.mu.Lock()
		cur := s.w.cur
		s.w.cur = nil
		s.w.gen++ // late callbacks are ignored
		s.mu.Unlock()
		s.stopWatcherAsync(cur)
		stopped := make(chan struct{})
		go func() { s.stops.Wait(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(3 * time.Second): // a consumer being recreated after its server died
		}
	})
	return nil
}

// longest is the longest lease the bucket allows: its marker TTL.
func (s *Store) longest() time.Duration { return time.Duration(s.markerTTL.Load()) }

// MarkerTTLFor is the shortest Config.MarkerTTL that holds a lease of
// maxTTL with a lock-delay of delay (store.AcquireOptions.Delay): the
// bucket rounds each up to whole seconds, and the lease message lives for
// both.
func MarkerTTLFor(maxTTL, delay time.Duration) time.Duration {
	return ttlSeconds(maxTTL) + delaySeconds(delay)
}

// background runs fn in a goroutine that Close waits for, unless Close has
// begun.
func (s *Store) background(fn func()) {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.closed {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// Notify registers fn for releases and expiries seen on the bucket.
func (s *Store) Notify(fn func(store.Event)) {
	s.mu.Lock()
	s.notify = fn
	s.mu.Unlock()
}
