package service

import (
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/service/api"
)

// stats are the instance's counters. Every answer is counted on its
// endpoint with the time from receipt to answer; micro's own num_errors and
// processing_time cannot see answers sent after the handler returned (the
// handler never blocks its subscription), so the true figures are in each
// endpoint's data.
type stats struct {
	grants, handoffs, waitTimeouts, lapsed, givenBack, undelivered,
	overloaded, expiredEvents, storeErrors, expiryWakeups atomic.Int64
	// events published, by event name (api.EventReleased, EventExpired,
	// EventForced)
	released, expired, forced atomic.Int64
	ops                       map[string]*opStats
}

// countEvent counts an event published.
func (s *stats) countEvent(event string) {
	switch event {
	case api.EventReleased:
		s.released.Add(1)
	case api.EventExpired:
		s.expired.Add(1)
	case api.EventForced:
		s.forced.Add(1)
	}
}

// opStats counts one endpoint's requests and answers, and tells the
// Observer of each answer.
type opStats struct {
	op                        string
	obs                       Observer
	requests, answered, nanos atomic.Int64
	errors                    map[int]*atomic.Int64
}

var errorCodes = []int{api.CodeBadRequest, api.CodeTimeout, api.CodeConflict, api.CodeInternal, api.CodeUnavailable}

func newOpStats(op string, obs Observer) *opStats {
	o := &opStats{op: op, obs: obs, errors: make(map[int]*atomic.Int64, len(errorCodes))}
	for _, c := range errorCodes {
		o.errors[c] = new(atomic.Int64)
	}
	return o
}

// record counts an answer (code 0: a success) sent d after receipt.
func (o *opStats) record(code int, d time.Duration) {
	o.answered.Add(1)
	o.nanos.Add(int64(d))
	if code != 0 {
		c := o.errors[code]
		if c == nil {
			code = api.CodeInternal
			c = o.errors[code]
		}
		c.Add(1)
	}
	if o.obs != nil {
		o.obs.Answered(o.op, code, d)
	}
}

func (s *Service) statsData(e *micro.Endpoint) any {
	s.mu.Lock()
	keys, waiters := len(s.keys), s.waiters-s.fresh
	s.mu.Unlock()
	d := map[string]any{
		"instance":       s.id,
		"parked_waiters": waiters,
		"waited_keys":    keys,
		"inflight":       len(s.inflight),
		"grants":         s.stats.grants.Load(),
		"handoffs":       s.stats.handoffs.Load(),
		"wait_timeouts":  s.stats.waitTimeouts.Load(),
		"lapsed":         s.stats.lapsed.Load(),
		"given_back":     s.stats.givenBack.Load(),
		"undelivered":    s.stats.undelivered.Load(),
		"overloaded":     s.stats.overloaded.Load(),
		"store_errors":   s.stats.storeErrors.Load(),
		"expired_events": s.stats.expiredEvents.Load(),
		"expiry_wakeups": s.stats.expiryWakeups.Load(),
	}
	if o := s.stats.ops[strings.ReplaceAll(e.Name, "-", ".")]; o != nil {
		errs := make(map[string]int64, len(o.errors))
		var total int64
		for c, n := range o.errors {
			errs[strconv.Itoa(c)] = n.Load()
			total += n.Load()
		}
		answered := o.answered.Load()
		avg := int64(0)
		if answered > 0 {
			avg = o.nanos.Load() / answered
		}
		d["requests"] = o.requests.Load()
		d["answered"] = answered
		d["num_errors"] = total
		d["errors"] = errs
		d["processing_time"] = o.nanos.Load()
		d["average_processing_time"] = avg
	}
	return d
}

// Stats is a snapshot of an instance's own counters.
type Stats struct {
	// ParkedWaiters counts the requests waiting for a wake-up (parked,
	// with their first look at the store done).
	ParkedWaiters int
	WaitedKeys    int
	Inflight      int
	Grants        int64
	Handoffs      int64 // grants made by a release handing the lock over
	GivenBack     int64 // grants released because their lock id was retired
	Lapsed        int64 // parked requests dropped when their liveness window ran out
	Undelivered   int64 // grants whose answer reached nobody (given back)
	WaitTimeouts  int64 // blocking requests (acquire, wait) answered when their wait_ms ran out
	// Overloaded counts the requests refused (503) because the in-flight
	// operations of the instance were at MaxInflight.
	Overloaded int64
	// ExpiryWakeups counts the lease expiries that woke requests parked on
	// their key here.
	ExpiryWakeups int64
	// Events counts the events this instance published, by event name
	// (api.EventReleased, api.EventExpired, api.EventForced).
	Events map[string]int64
	// Errors counts the error answers of all endpoints by code.
	Errors map[int]int64
}

// Stats returns a snapshot of the instance's counters.
func (s *Service) Stats() Stats {
	s.mu.Lock()
	st := Stats{ParkedWaiters: s.waiters - s.fresh, WaitedKeys: len(s.keys)}
	s.mu.Unlock()
	st.Inflight = len(s.inflight)
	st.Grants = s.stats.grants.Load()
	st.Handoffs = s.stats.handoffs.Load()
	st.GivenBack = s.stats.givenBack.Load()
	st.Lapsed = s.stats.lapsed.Load()
	st.Undelivered = s.stats.undelivered.Load()
	st.WaitTimeouts = s.stats.waitTimeouts.Load()
	st.Overloaded = s.stats.overloaded.Load()
	st.ExpiryWakeups = s.stats.expiryWakeups.Load()
	st.Events = map[string]int64{
		api.EventReleased: s.stats.released.Load(),
		api.EventExpired:  s.stats.expired.Load(),
		api.EventForced:   s.stats.forced.Load(),
	}
	st.Errors = make(map[int]int64)
	for _, o := range s.stats.ops {
		for c, n := range o.errors {
			st.Errors[c] += n.Load()
		}
	}
	return st
}
