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
// default, listed with it.
type Config struct {
	// Prefix is the first subject token; default "lock".
	Prefix string
	// DefaultTTL is the lease length when a request gives none; default 30s.
	DefaultTTL time.Duration
	// MaxTTL is the longest lease a request may ask for; default 10m.
	MaxTTL time.Duration
	// MaxWait is the longest wait_ms accepted; default 10m.
	MaxWait time.Duration
	// MaxWaiters bounds the parked acquire and wait requests of this
	// instance; more get 503. Default 100000.
	MaxWaiters int
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
	// Logf receives diagnostic lines; default: discarded.
	Logf func(format string, args ...any)
}

// Validate fills defaults and reports settings that cannot work.
func (c *Config) Validate() error {
	if c.Prefix == "" {
		c.Prefix = api.DefaultPrefix
	}
	if err := api.ValidateKey(c.Prefix); err != nil {
		return fmt.Errorf("service: prefix: %w", err)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.DefaultTTL, 30*time.Second)
	def(&c.MaxTTL, 10*time.Minute)
	def(&c.MaxWait, 10*time.Minute)
	def(&c.StoreTimeout, 5*time.Second)
	if c.MaxWaiters == 0 {
		c.MaxWaiters = 100_000
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = 4096
	}
	if c.MaxValueBytes == 0 {
		c.MaxValueBytes = 512 << 10
	}
	if c.QueueGroup == "" {
		c.QueueGroup = api.ServiceName
	}
	switch {
	case c.DefaultTTL < 0 || c.MaxTTL < 0 || c.MaxWait < 0 || c.StoreTimeout < 0:
		return errors.New("service: durations must not be negative")
	case c.DefaultTTL > c.MaxTTL:
		return fmt.Errorf("service: default TTL %v is longer than the max TTL %v", c.DefaultTTL, c.MaxTTL)
	case c.MaxWaiters < 0 || c.MaxInflight < 0 || c.MaxValueBytes < 0:
		return errors.New("service: limits must not be negative")
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	return nil
}

// Service is a running lock service instance. Create it with New, stop it
// with Stop.
type Service struct {
	nc    *nats.Conn
	st    store.Store
	cfg   Config
	id    string
	svc   micro.Service
	subs  []*nats.Subscription
	ctx   context.Context
	abort context.CancelFunc

	inflight chan struct{}
	jobs     chan func() // unbuffered: idle workers receive here
	ops      sync.WaitGroup
	stopping atomic.Bool
	stopOnce sync.Once

	mu         sync.Mutex
	keys       map[string]*keyState
	ids        map[string]*waiter // acquires in progress or recently granted, by lock id
	recent     []recentGrant      // grants by time; entries before recentHead have expired
	recentHead int
	waiters    int

	stats stats
}

type stats struct {
	grants, handoffs, waitTimeouts, overloaded, expiredEvents, storeErrors atomic.Int64
	// errors answered by code (micro's own num_errors counts only the
	// errors sent from the handler itself)
	err400, err408, err409, err500, err503 atomic.Int64
}

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
	if mp := int(nc.MaxPayload()) - 1024; cfg.MaxValueBytes > mp {
		cfg.MaxValueBytes = mp
	}
	ctx, abort := context.WithCancel(context.Background())
	s := &Service{
		nc: nc, st: st, cfg: cfg, ctx: ctx, abort: abort,
		inflight: make(chan struct{}, cfg.MaxInflight),
		jobs:     make(chan func()),
		keys:     make(map[string]*keyState),
		ids:      make(map[string]*waiter),
	}
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
		abort()
		return nil, fmt.Errorf("service: %w", err)
	}
	s.svc = svc
	s.id = svc.Info().ID
	g := svc.AddGroup(cfg.Prefix)
	endpoints := []struct {
		op, desc string
		h        func(*request)
		opts     []micro.EndpointOpt
	}{
		{api.OpAcquire, "take the lock (wait_ms to block), returns the state and a fencing token", s.acquire, nil},
		{api.OpRelease, "release the lock, optionally writing a new state atomically", s.release, nil},
		{api.OpRefresh, "extend a held lease", s.refresh, nil},
		{api.OpWrite, "write the state while holding the lock", s.write, nil},
		{api.OpDelete, "delete the state and release the lock", s.delete, nil},
		{api.OpGet, "inspect the lock and read the state", s.get, nil},
		{api.OpWait, "wait until the key is unlocked and read the state", s.wait, nil},
		{api.OpCancel, "withdraw a blocking acquire (sent to every instance)", s.cancel,
			[]micro.EndpointOpt{micro.WithEndpointQueueGroupDisabled()}},
	}
	for _, e := range endpoints {
		opts := append([]micro.EndpointOpt{
			micro.WithEndpointSubject(e.op + ".>"),
			micro.WithEndpointMetadata(map[string]string{"description": e.desc, "format": "application/json or application/msgpack"}),
		}, e.opts...)
		if err := g.AddEndpoint(e.op, s.handler(e.op, e.h), opts...); err != nil {
			s.Stop()
			return nil, fmt.Errorf("service: endpoint %s: %w", e.op, err)
		}
	}
	for _, ev := range []string{api.EventReleased, api.EventExpired} {
		sub, err := nc.Subscribe(cfg.Prefix+"."+ev+".>", s.onEvent)
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("service: subscribe %s events: %w", ev, err)
		}
		s.subs = append(s.subs, sub)
	}
	if n, ok := st.(store.Notifier); ok {
		n.Notify(s.onStoreEvent)
	}
	if err := nc.Flush(); err != nil {
		s.Stop()
		return nil, fmt.Errorf("service: %w", err)
	}
	return s, nil
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
		s.stopping.Store(true)
		if s.svc != nil {
			err = s.svc.Stop()
		}
		for _, sub := range s.subs {
			_ = sub.Unsubscribe()
		}
		s.failAllWaiters(api.CodeUnavailable, "lock service instance is shutting down; retry (another instance may serve you)")
		done := make(chan struct{})
		go func() { s.ops.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(s.cfg.StoreTimeout + time.Second):
			s.abort()
			<-done
		}
		s.abort()
		_ = s.nc.Flush()
	})
	return err
}

func (s *Service) statsData(e *micro.Endpoint) any {
	s.mu.Lock()
	keys, waiters := len(s.keys), s.waiters
	s.mu.Unlock()
	return map[string]any{
		"instance":       s.id,
		"parked_waiters": waiters,
		"waited_keys":    keys,
		"inflight":       len(s.inflight),
		"grants":         s.stats.grants.Load(),
		"handoffs":       s.stats.handoffs.Load(),
		"wait_timeouts":  s.stats.waitTimeouts.Load(),
		"overloaded":     s.stats.overloaded.Load(),
		"store_errors":   s.stats.storeErrors.Load(),
		"expired_events": s.stats.expiredEvents.Load(),
		"errors": map[string]int64{
			"400": s.stats.err400.Load(), "408": s.stats.err408.Load(), "409": s.stats.err409.Load(),
			"500": s.stats.err500.Load(), "503": s.stats.err503.Load(),
		},
	}
}

// Stats is a snapshot of an instance's own counters.
type Stats struct {
	ParkedWaiters int
	WaitedKeys    int
	Inflight      int
	Grants        int64
	Handoffs      int64 // grants made by a release handing the lock over
}

// Stats returns a snapshot of the instance's counters.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{ParkedWaiters: s.waiters, WaitedKeys: len(s.keys), Inflight: len(s.inflight), Grants: s.stats.grants.Load(), Handoffs: s.stats.handoffs.Load()}
}
