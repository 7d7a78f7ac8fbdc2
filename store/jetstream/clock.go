package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Leases end by the server's clock. The server expires a lease message
// itself (Nats-TTL), but a file store recovering from an unclean shutdown can
// bring back messages it had already removed, and does not expire them again
// (nats-server issue 8505; docs/UPSTREAM-REVIVE.md). So the store never takes
// a lease message's presence as proof that the lease is live: a lease is live
// only while the server's present time is before stored+TTL, both stamped by
// the server. A lease found past its end is replaced (reap) so that waiters
// are woken and the key does not stay locked.
//
// The server's present time comes from the "ts" of a STREAM.INFO answer.
// Between samples it is interpolated with this process's monotonic clock (a
// rate, never a wall-clock reading); a lease within clockMargin of its end by
// that estimate is checked against a fresh sample before any decision that
// it has ended or that it is live.

const (
	// clockMargin: within this of a lease's end by the estimate, ask the
	// server.
	clockMargin = time.Second
	// clockEvery is how often the reaper re-samples the server's clock and
	// looks for leases past their end.
	clockEvery = time.Second
	// reapGrace is how long past its end (server clock) the reaper leaves
	// a lease to the server's own expiry before replacing it.
	reapGrace = time.Second
	// reapBatch bounds the leases replaced per reaper round.
	reapBatch = 1000
)

type serverClock struct {
	mu   sync.Mutex
	ts   time.Time // a server "now"
	at   time.Time // this process's time (monotonic) when ts was current
	have bool
	// skewForTest moves the server's present time as the store sees it
	// (tests only: a lease past its end whose message the server still
	// has).
	skewForTest time.Duration
}

func (c *serverClock) skew() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.skewForTest
}

// estimate is the server's present time by the last sample and the
// monotonic time elapsed since.
func (c *serverClock) estimate() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.have {
		return time.Time{}, false
	}
	return c.ts.Add(time.Since(c.at) + c.skewForTest), true
}

func (c *serverClock) set(ts, sent time.Time) {
	now := time.Now()
	mid := sent.Add(now.Sub(sent) / 2)
	c.mu.Lock()
	c.ts, c.at, c.have = ts, mid, true
	c.mu.Unlock()
}

// serverNow asks the stream leader for its present time.
func (s *Store) serverNow(ctx context.Context) (time.Time, error) {
	sent := time.Now()
	resp, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.INFO."+s.stream, nil)
	if err != nil {
		return time.Time{}, unavailable(err)
	}
	var info struct {
		TS     time.Time `json:"ts"`
		Config struct {
			MarkerTTL time.Duration `json:"subject_delete_marker_ttl"`
		} `json:"config"`
		Error *natsjs.APIError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &info); err != nil {
		return time.Time{}, fmt.Errorf("jetstream: stream info: %w", err)
	}
	if info.Error != nil {
		return time.Time{}, fmt.Errorf("jetstream: stream info: %w", info.Error)
	}
	if info.TS.IsZero() {
		return time.Time{}, fmt.Errorf("jetstream: stream info from nats-server %s has no server time", s.nc.ConnectedServerVersion())
	}
	s.clock.set(info.TS, sent)
	for {
		cur := s.markerTTL.Load()
		if int64(info.Config.MarkerTTL) <= cur || s.markerTTL.CompareAndSwap(cur, int64(info.Config.MarkerTTL)) {
			break
		}
	}
	return info.TS.Add(s.clock.skew()), nil
}

// surelyLive reports whether the lease st describes is live by the clock
// estimate with a margin to spare (its message: see surelyBefore). False
// means "ask".
func (s *Store) surelyLive(st lockState) bool { return s.surelyBefore(st, st.end()) }

// surelyHeld is surelyLive for the holder's part of the lease (without the
// lock-delay).
func (s *Store) surelyHeld(st lockState) bool { return s.surelyBefore(st, st.holderEnd()) }

func (s *Store) surelyBefore(st lockState, end time.Time) bool {
	if !st.held || st.stored.IsZero() {
		return false
	}
	est, ok := s.clock.estimate()
	return ok && est.Add(clockMargin).Before(end)
}

// ended reports whether the lease message st describes has ended by the
// server's clock (always false for a removal): the lease and its
// lock-delay. It asks the server unless the estimate shows it live with a
// margin. st's stored time must be exact.
func (s *Store) ended(ctx context.Context, st lockState) (bool, error) {
	return s.endedAt(ctx, st, st.end())
}

// holderEnded is ended for the holder's part of the lease: true in the
// lock-delay after it, and for a blocker.
func (s *Store) holderEnded(ctx context.Context, st lockState) (bool, error) {
	return s.endedAt(ctx, st, st.holderEnd())
}

func (s *Store) endedAt(ctx context.Context, st lockState, end time.Time) (bool, error) {
	if !st.held {
		return false, nil
	}
	if !st.exact {
		return false, fmt.Errorf("jetstream: internal error: lease end decided without the server's stored time")
	}
	if s.surelyBefore(st, end) {
		return false, nil
	}
	now, err := s.serverNow(ctx)
	if err != nil {
		return false, err
	}
	return !now.Before(end), nil
}

// untilEnd is how long until the lease message st ends (the lease and its
// lock-delay) by the clock estimate, at least 1ms; 0 without an estimate.
// The service sets a timer by it for the requests parked on the key, so
// that an expiry is acted on at the end rather than when the server's
// expiry scan removes the message.
func (s *Store) untilEnd(st lockState) time.Duration {
	est, ok := s.clock.estimate()
	if !ok || st.stored.IsZero() {
		return 0
	}
	return max(st.end().Sub(est), time.Millisecond)
}

// delayLeft is how long the lock-delay of st, whose holder's part has
// ended, still runs by the clock estimate: at least 1ms (it has not ended
// by the last look).
func (s *Store) delayLeft(st lockState) time.Duration {
	est, ok := s.clock.estimate()
	if !ok {
		return time.Millisecond
	}
	return max(st.end().Sub(est), time.Millisecond)
}

// reapMsg replaces a lease that has ended by the server's clock with an
// expiry marker (compare-and-set on the lease's sequence), as the server
// would have.
func (s *Store) reapMsg(key string, st lockState) *nats.Msg {
	m := s.releaseMsg(key, st)
	m.Header.Set(reasonHeader, reasonExpired)
	return m
}

// reap replaces the lease st on key, which has ended by the server's clock.
// Losing the compare-and-set (errWrongSeq) means someone else moved the key
// on: the hint is refreshed so that the reaper does not try again.
func (s *Store) reap(ctx context.Context, key string, st lockState) error {
	ack, err := s.publish(ctx, s.reapMsg(key, st))
	switch {
	case err == nil:
		s.setHint(key, lockState{seq: ack.Sequence, rec: st.rec, token: st.token})
		s.reaped.Add(1)
		s.log.Warn("lease past its end by the server's clock was still in the stream; replaced it with an expiry marker",
			"key", key, "token", st.token, "seq", st.seq, "end", st.end())
	case errors.Is(err, errWrongSeq):
		_, _ = s.readLock(ctx, key)
	}
	return err
}

// reaper samples the server's clock and replaces leases this store knows
// of (its hints) that are past their end by more than reapGrace: leases a
// recovering server brought back and will never expire.
func (s *Store) reaper() {
	t := time.NewTicker(clockEvery)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.bg, 5*time.Second)
		now, err := s.serverNow(ctx)
		if err == nil {
			type due struct {
				key string
				st  lockState
			}
			var todo []due
			// Hints only: nothing is sent while the watcher is broken,
			// as they may come from a history the stream lost.
			s.mu.Lock()
			broken := s.w.broken
			for k, h := range s.hints {
				if broken {
					break
				}
				if h.held && h.exact && now.Sub(h.end()) > reapGrace {
					todo = append(todo, due{k, h})
					if len(todo) == reapBatch {
						break
					}
				}
			}
			s.mu.Unlock()
			for _, d := range todo {
				_ = s.reap(ctx, d.key, d.st)
			}
		}
		cancel()
	}
}
