// Package service is the lock service: NATS micro endpoints on
// <prefix>.<op>.<key> in front of a store.Store, with per-instance waiter
// queues woken by release and expiry events.
//
// An instance keeps no state that matters for safety: mutual exclusion,
// fencing and atomic writes live in the store, so any number of instances
// can share one NATS (they form the queue group "lockservice"). An instance
// only keeps the requests it is waiting on.
//
// The wire protocol is in package api and docs/PROTOCOL.md.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// Version is the service version reported to nats micro.
const Version = "0.1.0"

// Config configures a Service. The zero value is valid: every field has a
// default, listed with it (DefaultConfig returns them).
type Config struct {
	// Prefix is the first subject token; default "lock".
	Prefix string
	// DefaultTTL is the lease length when a request gives none; default 30s.
	DefaultTTL time.Duration
	// MaxTTL is the longest lease a request may ask for; default 10m.
	MaxTTL time.Duration
	// MaxWait is the longest wait_ms accepted; default 10m.
	MaxWait time.Duration
	// LockDelay is the lock-delay of leases whose acquire gives none
	// (lock_delay_ms absent): after such a lease expires or is forced,
	// nobody gets the key for this long. Default 0 (none).
	LockDelay time.Duration
	// MaxLockDelay is the longest lock_delay_ms accepted; default 1m.
	MaxLockDelay time.Duration
	// MaxWaiters bounds the parked acquire and wait requests of this
	// instance; more get 503. Default 100000.
	MaxWaiters int
	// MaxWaitersPerKey bounds the parked requests of one key on this
	// instance, so one key cannot take every slot; more get 503. Default
	// 10000 (at most MaxWaiters).
	MaxWaitersPerKey int
	// MaxInflight bounds the store operations of this instance running at
	// once; more get 503. Default 4096.
	MaxInflight int
	// MaxValueBytes is the largest state object accepted; default 512 KiB
	// (and never more than the NATS max_payload allows).
	MaxValueBytes int
	// StoreTimeout bounds one store operation; default 5s.
	StoreTimeout time.Duration
	// QueueGroup is the micro queue group; default "lockservice".
	QueueGroup string
	// Metadata is added to the micro service metadata (e.g. "store").
	Metadata map[string]string
	// Logger receives the instance's log (see logging.go): store errors
	// and the store's recovery, overload 503s, failed replies and events,
	// stop. Repeated lines of one cause are logged once per HealthInterval.
	// nil discards the log.
	Logger *slog.Logger
	// Observer, when set, is told of every answer and every store call as
	// it happens, for metrics (see Observer). nil: nobody is told.
	Observer Observer
	// HealthInterval is how often a line of one cause may be logged
	// (store errors, overload), and how recent the store's last answer
	// must be for Ready; older, Ready asks the store. Default 10s.
	HealthInterval time.Duration
	// EventConn, when set, publishes the events (released, expired,
	// forced) and the cancel announcements instead of the service's own
	// connection. With it on a NATS user of its own (with the store's
	// connection), the service's user needs to publish only into reply
	// inboxes: a client chooses the reply subject of its requests, NATS
	// does not check it, and micro's discovery answers ($SRV.PING, INFO,
	// STATS) go wherever it points (docs/HARDENING.md). Not closed by Stop.
	EventConn *nats.Conn
}

// DefaultConfig returns the defaults of every Config field: the one place
// they are written (SetDefaults fills zero fields from it; cmd/lockservice
// shows them as its flags' defaults).
func DefaultConfig() Config {
	return Config{
		Prefix:           api.DefaultPrefix,
		DefaultTTL:       30 * time.Second,
		MaxTTL:           10 * time.Minute,
		MaxWait:          10 * time.Minute,
		MaxLockDelay:     time.Minute,
		MaxWaiters:       100_000,
		MaxWaitersPerKey: 10_000,
		MaxInflight:      4096,
		MaxValueBytes:    512 << 10,
		StoreTimeout:     5 * time.Second,
		QueueGroup:       api.ServiceName,
		HealthInterval:   10 * time.Second,
	}
}

// SetDefaults fills every zero field with its default (DefaultConfig).
func (c *Config) SetDefaults() {
	d := DefaultConfig()
	if c.Prefix == "" {
		c.Prefix = d.Prefix
	}
	def := func(v *time.Duration, dv time.Duration) {
		if *v == 0 {
			*v = dv
		}
	}
	def(&c.DefaultTTL, d.DefaultTTL)
	def(&c.MaxTTL, d.MaxTTL)
	def(&c.MaxWait, d.MaxWait)
	def(&c.MaxLockDelay, d.MaxLockDelay)
	def(&c.StoreTimeout, d.StoreTimeout)
	def(&c.HealthInterval, d.HealthInterval)
	if c.MaxWaiters == 0 {
		c.MaxWaiters = d.MaxWaiters
	}
	if c.MaxWaitersPerKey == 0 {
		c.MaxWaitersPerKey = min(d.MaxWaitersPerKey, c.MaxWaiters)
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = d.MaxInflight
	}
	if c.MaxValueBytes == 0 {
		c.MaxValueBytes = d.MaxValueBytes
	}
	if c.QueueGroup == "" {
		c.QueueGroup = d.QueueGroup
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports settings that cannot work, judged with the defaults
// filled in (c itself is not changed).
func (c Config) Validate() error {
	c.SetDefaults()
	if err := api.ValidateKey(c.Prefix); err != nil {
		return fmt.Errorf("service: prefix: %w", err)
	}
	switch {
	case c.DefaultTTL < 0 || c.MaxTTL < 0 || c.MaxWait < 0 || c.StoreTimeout < 0 || c.HealthInterval < 0:
		return errors.New("service: durations must not be negative")
	case c.DefaultTTL > c.MaxTTL:
		return fmt.Errorf("service: default TTL %v is longer than the max TTL %v", c.DefaultTTL, c.MaxTTL)
	case c.LockDelay < 0 || c.MaxLockDelay < 0:
		return fmt.Errorf("service: lock-delay %v and max lock-delay %v must not be negative", c.LockDelay, c.MaxLockDelay)
	case c.LockDelay > c.MaxLockDelay:
		return fmt.Errorf("service: lock-delay %v is longer than the max lock-delay %v", c.LockDelay, c.MaxLockDelay)
	case c.MaxWaiters < 0 || c.MaxWaitersPerKey < 0 || c.MaxInflight < 0 || c.MaxValueBytes < 0:
		return errors.New("service: limits must not be negative")
	}
	return nil
}

// Service is a running lock service instance. Create it with New, stop it
// with Stop.
type Service struct {
	nc   *nats.Conn
	send func(*nats.Msg) error // publishes answers (nc.PublishMsg)
	// announce publishes events and cancel announcements: on
	// Config.EventConn, else as send.
	announce func(*nats.Msg) error
	st       store.Store
	cfg      Config
	id       string
	svc      micro.Service
	subs     []*nats.Subscription
	ctx      context.Context
	abort    context.CancelFunc

	inflight chan struct{}
	jobs     chan func() // unbuffered: idle workers receive here
	ops      sync.WaitGroup
	stopping atomic.Bool
	stopOnce sync.Once

	seq atomic.Uint64 // arrival order of blocking requests

	mu      sync.Mutex
	keys    map[string]*keyState   // keys with parked requests or a running driver
	reg     registry               // lock ids and wait ids in progress, recent grants, retired ids
	watches map[string]*leaseWatch // lease-end timers (stores without Notifier)
	waiters int                    // parked requests
	fresh   int                    // of them, still to make their first store attempt

	stats   stats
	log     *slog.Logger
	limiter *logLimiter
	health  storeHealth

	// grants awaiting a possible no-responders status (delivery.go)
	deliveryInbox string
	deliverySub   *nats.Subscription
	deliverySeq   uint64
	deliveries    map[uint64]pendingDelivery
	deliveryFIFO  []uint64
}

// maxRetired bounds the retired lock ids an instance remembers.
const maxRetired = 100_000

// New registers the micro service "lockservice" on nc with an endpoint per
// operation and starts serving. nc and st stay the caller's: Stop does not
// close them.
//
// A connection of the instance's own may use nats.NoEcho() (cmd/lockservice
// and embedded do): the instance drops its own events anyway. Never use it on
// a connection shared with clients or other instances, which it would hide.
func New(nc *nats.Conn, st store.Store, cfg Config) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.SetDefaults()
	if mp := int(nc.MaxPayload()) - 1024; cfg.MaxValueBytes > mp {
		cfg.MaxValueBytes = mp
	}
	s := newService(st, cfg, nc.PublishMsg)
	if cfg.EventConn != nil {
		s.announce = cfg.EventConn.PublishMsg
	}
	s.nc = nc
	s.deliveryInbox = nc.NewInbox()
	dsub, err := nc.Subscribe(s.deliveryInbox+".*", s.onDeliveryStatus)
	if err != nil {
		return nil, fmt.Errorf("service: subscribe %s: %w", s.deliveryInbox, err)
	}
	s.deliverySub = dsub
	md := map[string]string{"prefix": cfg.Prefix}
	for k, v := range cfg.Metadata {
		md[k] = v
	}
	svc, err := micro.AddService(nc, micro.Config{
		Name:         api.ServiceName,
		Version:      Version,
		Description:  "distributed locks with fencing tokens and attached state",
		Metadata:     md,
		QueueGroup:   cfg.QueueGroup,
		StatsHandler: s.statsData,
	})
	if err != nil {
		s.abort()
		_ = dsub.Unsubscribe()
		return nil, fmt.Errorf("service: %w", err)
	}
	s.svc = svc
	s.id = svc.Info().ID
	g := svc.AddGroup(cfg.Prefix)
	broadcast := []micro.EndpointOpt{micro.WithEndpointQueueGroupDisabled()}
	endpoints := []struct {
		op, desc string
		h        func(*request)
		inline   bool // admitted on the subscription's goroutine, in arrival order
		opts     []micro.EndpointOpt
	}{
		{api.OpAcquire, "take the lock (wait_ms to block), returns the state and a fencing token", s.acquire, true, nil},
		{api.OpRelease, "release the lock, optionally writing a new state atomically", s.release, false, nil},
		{api.OpRefresh, "extend a held lease", s.refresh, false, nil},
		{api.OpWrite, "write the state while holding the lock", s.write, false, nil},
		{api.OpDelete, "delete the state and release the lock", s.delete, false, nil},
		{api.OpGet, "inspect the lock and read the state", s.get, false, nil},
		{api.OpWait, "wait until the key is unlocked and read the state", s.wait, true, nil},
		{api.OpCancel, "withdraw a blocking acquire (sent to every instance)", s.cancel, true, broadcast},
		{api.OpAlive, "renew the liveness window of a parked request (sent to every instance)", s.alive, true, broadcast},
	}
	for _, e := range endpoints {
		opts := append([]micro.EndpointOpt{
			micro.WithEndpointSubject(e.op + ".>"),
			micro.WithEndpointMetadata(map[string]string{"description": e.desc, "format": "application/json or application/msgpack"}),
		}, e.opts...)
		if err := g.AddEndpoint(e.op, s.handler(e.op, e.h, e.inline), opts...); err != nil {
			s.Stop()
			return nil, fmt.Errorf("service: endpoint %s: %w", e.op, err)
		}
	}
	if err := s.addAdmin(svc); err != nil {
		s.Stop()
		return nil, fmt.Errorf("service: admin endpoints: %w", err)
	}
	for _, ev := range []string{api.EventReleased, api.EventExpired} {
		sub, err := nc.Subscribe(cfg.Prefix+"."+ev+".>", s.onEvent)
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("service: subscribe %s events: %w", ev, err)
		}
		s.subs = append(s.subs, sub)
	}
	if err := nc.Flush(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("service: %w", err)
	}
	return s, nil
}

// newService builds the waiting room and the request handling around st,
// without NATS: answers and events go to send. cfg has its defaults.
func newService(st store.Store, cfg Config, send func(*nats.Msg) error) *Service {
	ctx, abort := context.WithCancel(context.Background())
	s := &Service{
		send: send, announce: send, cfg: cfg, ctx: ctx, abort: abort,
		inflight:   make(chan struct{}, cfg.MaxInflight),
		jobs:       make(chan func()),
		keys:       make(map[string]*keyState),
		reg:        newRegistry(cfg.MaxWait+cfg.StoreTimeout+recentGrantTTL, maxRetired),
		deliveries: make(map[uint64]pendingDelivery),
		watches:    make(map[string]*leaseWatch),
		stats:      stats{ops: make(map[string]*opStats)},
		log:        cfg.Logger,
		limiter:    newLogLimiter(cfg.HealthInterval),
	}
	s.st = watchStore(st, s.storeDone)
	for _, op := range []string{api.OpAcquire, api.OpRelease, api.OpRefresh, api.OpWrite, api.OpDelete, api.OpGet, api.OpWait, api.OpCancel, api.OpAlive, api.OpAdminList, api.OpAdminForce} {
		s.stats.ops[op] = newOpStats(op, cfg.Observer)
	}
	if n, ok := s.st.(store.Notifier); ok {
		n.Notify(s.onStoreEvent)
	}
	return s
}

// ID returns the instance id: the micro service id ($SRV.INFO.lockservice.<id>).
func (s *Service) ID() string { return s.id }

// Stop stops serving: new requests get no responder, parked waiters get 503,
// and Stop returns once the store operations in progress have finished
// (nothing is left half-written). It does not close the connection or the
// store.
func (s *Service) Stop() error {
	var err error
	s.stopOnce.Do(func() {
		s.mu.Lock()
		parked := s.waiters
		s.mu.Unlock()
		s.log.Info("stopping", slog.String("instance", s.id), slog.Int("parked", parked))
		s.stopping.Store(true)
		s.stopHealth()
		if s.svc != nil {
			err = s.svc.Stop()
		}
		for _, sub := range s.subs {
			_ = sub.Unsubscribe()
		}
		s.failAllWaiters(api.CodeUnavailable, shutdownMsg)
		s.mu.Lock()
		for key := range s.watches {
			s.unwatchLeaseLocked(key)
		}
		s.mu.Unlock()
		s.waitOps(s.cfg.StoreTimeout + time.Second)
		if s.deliverySub != nil && s.nc.IsConnected() {
			// Grants just sent may come back undelivered: take their
			// statuses (sent by the server before its answer to the
			// flush) and the give-backs they start.
			if s.nc.FlushTimeout(time.Second) == nil {
				_ = s.deliverySub.Drain()
				for end := time.Now().Add(time.Second); s.deliverySub.IsValid() && time.Now().Before(end); {
					time.Sleep(5 * time.Millisecond)
				}
				s.waitOps(s.cfg.StoreTimeout + time.Second)
			}
		}
		s.abort()
		if s.deliverySub != nil {
			_ = s.deliverySub.Unsubscribe()
		}
		if s.nc != nil && s.nc.IsConnected() {
			_ = s.nc.FlushTimeout(time.Second)
		}
		if ec := s.cfg.EventConn; ec != nil && ec.IsConnected() {
			_ = ec.FlushTimeout(time.Second)
		}
		s.log.Info("stopped", slog.String("instance", s.id))
	})
	return err
}

// waitOps waits for the store operations in progress, cancelling them
// after d.
func (s *Service) waitOps(d time.Duration) {
	done := make(chan struct{})
	go func() { s.ops.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		s.abort()
		<-done
	}
}
