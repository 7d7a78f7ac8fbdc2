package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// ErrNotReady is wrapped by the errors of Ready: the instance cannot serve
// now (NATS disconnected, the store failing, stopping).
var ErrNotReady = errors.New("service: not ready")

// probeKey is the key Ready reads when the store has not answered within
// HealthInterval. A get changes nothing: a lock on the key is left alone.
const probeKey = "lockservice-readyz"

// storeHealth follows whether the store answers. Only a call that started
// after the call that last decided had ended can change the state: one
// that was in flight with it says nothing new (an answer sent just before
// an outage can arrive after the outage's first failure, and a failure of
// a call made before the store came back after its first answer).
type storeHealth struct {
	mu        sync.Mutex
	failing   bool
	decidedAt time.Time // the end of the call that last decided the state
	since     time.Time // failing: the end of the first failed call
	failures  int       // failing: the calls that failed since
	lastErr   error     // failing: the last failure

	owed    *recovery   // a recovery the log held back, logged when the interval ends
	timer   *time.Timer // for owed
	probing chan struct{}
}

// recovery is the end of an outage of the store.
type recovery struct {
	failedFor time.Duration
	failures  int
	lastErr   error
}

// record takes the outcome of a call that ran from start to end; it
// returns the recovery when the call ended an outage.
func (h *storeHealth) record(start, end time.Time, outcome string, err error) (recovery, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if failed(outcome) && h.failing {
		h.failures++
		h.lastErr = err
	}
	if start.Before(h.decidedAt) || (!failed(outcome) && !answered(outcome)) {
		return recovery{}, false
	}
	h.decidedAt = end
	switch {
	case failed(outcome) && !h.failing:
		h.failing, h.since, h.failures, h.lastErr = true, end, 1, err
	case !failed(outcome) && h.failing:
		h.failing = false
		return recovery{failedFor: end.Sub(h.since), failures: h.failures, lastErr: h.lastErr}, true
	}
	return recovery{}, false
}

// state is the store's health at now: nil, or why the instance is not
// ready; fresh says whether a call decided it within interval.
func (h *storeHealth) state(now time.Time, interval time.Duration) (err error, fresh bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fresh = !h.decidedAt.IsZero() && now.Sub(h.decidedAt) < interval
	if h.failing {
		return fmt.Errorf("%w: the store has failed since %s (%d calls failed; the last: %v)",
			ErrNotReady, h.since.UTC().Format(time.RFC3339), h.failures, h.lastErr), fresh
	}
	return nil, fresh
}

// causeRecovered is the log limiter's cause of "store recovered" lines.
const causeRecovered = "store recovered"

// logRecovered logs the end of an outage, at most once per interval: a
// recovery held back (the store fails and answers by turns) is logged when
// the interval ends, if the store still answers then, so the log never
// ends on a failure the store has recovered from.
func (s *Service) logRecovered(rec recovery) {
	if ok, n := s.limiter.allow(causeRecovered, time.Now()); ok {
		s.logRecovery(rec, n)
		return
	}
	h := &s.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.owed != nil {
		rec.failedFor += h.owed.failedFor
		rec.failures += h.owed.failures
	}
	h.owed = &rec
	if h.timer == nil && !s.stopping.Load() {
		h.timer = time.AfterFunc(time.Until(s.limiter.next(causeRecovered)), s.flushRecovered)
	}
}

// flushRecovered logs the recovery logRecovered held back, unless the store
// fails again by now (its failures are logged; the next recovery will be).
func (s *Service) flushRecovered() {
	h := &s.health
	h.mu.Lock()
	rec, failing := h.owed, h.failing
	h.owed, h.timer = nil, nil
	h.mu.Unlock()
	if rec == nil || failing || s.stopping.Load() {
		return
	}
	ok, n := s.limiter.allow(causeRecovered, time.Now())
	if !ok {
		s.logRecovered(*rec) // the clock moved back: wait again
		return
	}
	s.logRecovery(*rec, n)
}

func (s *Service) logRecovery(rec recovery, suppressed int) {
	attrs := []slog.Attr{
		slog.String("failed_for", rec.failedFor.Round(time.Millisecond).String()),
		slog.Int("failed_calls", rec.failures),
		slog.Any("last_err", rec.lastErr),
	}
	if suppressed > 0 {
		attrs = append(attrs, slog.Int("suppressed", suppressed))
	}
	s.log.LogAttrs(context.Background(), slog.LevelInfo, "store recovered", attrs...)
}

// stopHealth stops the timer of a held-back recovery line.
func (s *Service) stopHealth() {
	s.health.mu.Lock()
	if s.health.timer != nil {
		s.health.timer.Stop()
		s.health.timer = nil
	}
	s.health.mu.Unlock()
}

// Ready reports whether the instance can serve: nil when its NATS
// connection is up and the store answered its last call, made within
// HealthInterval. When no store call ended within HealthInterval, Ready
// reads a key (one get, at most one at a time, bounded by StoreTimeout)
// and reports on its outcome. Otherwise it returns an error wrapping
// ErrNotReady that says why: stopping, the connection's status, since
// when the store fails and its last error, or ctx's error when ctx ended
// before the store answered.
func (s *Service) Ready(ctx context.Context) error {
	switch {
	case s.stopping.Load():
		return fmt.Errorf("%w: the instance is stopping", ErrNotReady)
	case s.nc != nil && !s.nc.IsConnected():
		return fmt.Errorf("%w: the NATS connection is %v", ErrNotReady, s.nc.Status())
	}
	if err, fresh := s.health.state(time.Now(), s.cfg.HealthInterval); fresh {
		return err
	}
	select {
	case <-s.probe():
	case <-ctx.Done():
		return fmt.Errorf("%w: the store has not answered a get within %v: %w", ErrNotReady, s.cfg.HealthInterval, ctx.Err())
	}
	err, fresh := s.health.state(time.Now(), s.cfg.HealthInterval)
	if err == nil && !fresh {
		return fmt.Errorf("%w: the store has not answered a get within %v", ErrNotReady, s.cfg.HealthInterval)
	}
	return err
}

// probe starts a get of probeKey unless one is in flight, and returns a
// channel closed when that get has ended (its outcome is recorded by the
// watched store). The get outlives a caller that stops waiting: the next
// Ready uses its outcome.
func (s *Service) probe() <-chan struct{} {
	h := &s.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.probing != nil {
		return h.probing
	}
	done := make(chan struct{})
	h.probing = done
	go func() {
		ctx, cancel := s.storeCtx()
		_, _ = s.st.Get(ctx, probeKey)
		cancel()
		h.mu.Lock()
		h.probing = nil
		h.mu.Unlock()
		close(done)
	}()
	return done
}
