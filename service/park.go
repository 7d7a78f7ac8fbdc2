package service

import (
	"container/list"
	"time"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// How a request waits on this instance:
//
//   - A blocking acquire or wait is admitted on its subscription's goroutine,
//     in arrival order: a retired lock id is refused, the registry records
//     the request (superseding an older one with the same lock id), and it
//     is parked in its key's queue. Nothing is asked of the store yet.
//   - The key's driver (driver.go) makes the store attempts: one at a
//     time per key, for the head of the queue (or a read when only waits
//     are parked). A wake-up (events.go) runs it again.
//   - A request's timer answers it when wait_ms runs out, or drops it when
//     its liveness window (alive_ms) was not renewed; a request whose store
//     attempt is in flight at that moment is settled when the attempt
//     returns (settle in driver.go).

type reqKind uint8

const (
	acquireReq reqKind = iota
	waitReq
)

// waiter is one acquire or wait request in progress on this instance.
type waiter struct {
	kind     reqKind
	r        *request
	key      string
	id       string // the lock id (acquire) or wait id (wait; may be empty)
	opts     store.AcquireOptions
	blocking bool
	seq      uint64 // arrival order on this instance
	deadline time.Time
	window   time.Duration // liveness window; 0: none

	// guarded by Service.mu
	elem       *list.Element // its place in its key's queue while parked
	aliveUntil time.Time
	timer      *time.Timer
	attempting bool    // a store attempt for it is in flight
	done       bool    // answered (or dropped); no longer in the queue
	granted    bool    // answered with a grant
	overdue    bool    // wait_ms ran out while an attempt was in flight
	lapsed     bool    // the liveness window ran out
	next       *waiter // the newer request with the same id that superseded it
	fresh      bool    // parked, its first look at the store still to come
	inherits   bool    // an attempt of a request it superseded is in flight
	since      uint64  // a wait: its key's attempts started before it was parked
}

// keyState is the per-key state of this instance: the parked requests and
// the driver's flags. It exists while something is parked or the driver
// runs.
type keyState struct {
	q       keyQueue
	running bool // the driver (or a hand-off) is making a store attempt
	dirty   bool // woken while running: attempt again
	// attempts counts the store attempts started for the key (driver and
	// hand-offs): a wait is answered only by one that started after it.
	attempts uint64
	// expiring is the token of a lease whose end this instance's timer saw
	// (stores without Notifier): an attempt that finds it gone publishes
	// its expired event. A release clears it.
	expiring uint64
}

func (s *Service) keyFor(key string) *keyState {
	ks := s.keys[key]
	if ks == nil {
		ks = &keyState{}
		s.keys[key] = ks
	}
	return ks
}

// dropIfIdle forgets a key with nothing parked and no driver, and on a
// Notifier store the lease-end timer set for what was parked on it (the
// store reports the end; without Notifier the timer stays: it publishes
// the expired event).
func (s *Service) dropIfIdle(key string, ks *keyState) {
	if ks.q.len() == 0 && !ks.running && s.keys[key] == ks {
		delete(s.keys, key)
		if _, ok := s.st.(store.Notifier); ok {
			s.unwatchLeaseLocked(key)
		}
	}
}

// admitAcquire takes an acquire into the waiting room. It runs on the
// acquire subscription's goroutine, so requests are admitted in the order
// they arrived; r's in-flight slot is handed to the store attempt or given
// up once parked.
func (s *Service) admitAcquire(w *waiter) {
	r := w.r // w.r is guarded by s.mu once w is registered
	now := time.Now()
	var out outcome
	s.mu.Lock()
	if s.reg.isRetired(w.key, w.id, now) {
		s.mu.Unlock()
		r.finish()
		s.respond(r, api.AcquireResponse{Key: w.key})
		return
	}
	if old := s.reg.register(w); old != nil {
		s.supersedeLocked(old, w, &out)
	}
	if !w.blocking {
		w.attempting = true
		s.mu.Unlock()
		s.carryOut(out)
		s.dispatch(func() {
			defer r.finish()
			s.tryAcquire(w)
		})
		return
	}
	ks := s.keyFor(w.key)
	if s.parkLocked(ks, w, now, &out) && ks.q.head() == w {
		if !ks.running {
			s.markFreshLocked(w)
		}
		s.wakeLocked(w.key, ks)
	}
	s.dropIfIdle(w.key, ks)
	s.mu.Unlock()
	r.finish()
	s.carryOut(out)
}

// admitWait takes a blocking wait into the waiting room (on the wait
// subscription's goroutine).
func (s *Service) admitWait(w *waiter) {
	r := w.r
	now := time.Now()
	var out outcome
	s.mu.Lock()
	if old := s.reg.register(w); old != nil {
		s.supersedeLocked(old, w, &out)
	}
	ks := s.keyFor(w.key)
	if s.parkLocked(ks, w, now, &out) && (ks.q.head() == nil || ks.running) {
		// Only waits here: the driver reads the key. Behind a parked
		// acquire, the wait is answered when the lock changes hands by an
		// attempt that starts after it: one in flight now cannot answer
		// it, so the driver makes one more round.
		if !ks.running {
			s.markFreshLocked(w)
		}
		s.wakeLocked(w.key, ks)
	}
	s.dropIfIdle(w.key, ks)
	s.mu.Unlock()
	r.finish()
	s.carryOut(out)
}

// supersedeLocked ends old, which w, a newer request with the same id,
// replaced: it is answered at once; if its attempt is in flight, w
// inherits it (settleLocked gives w the attempt's grant).
func (s *Service) supersedeLocked(old, w *waiter, out *outcome) {
	if old.attempting || old.inherits {
		w.inherits = true
	}
	s.finishLocked(old)
	out.answer(old, s.notDone(old))
}

// parkLocked queues w and arms its timer; false (w answered 503 through
// out) when a waiter limit is reached or the instance is stopping.
func (s *Service) parkLocked(ks *keyState, w *waiter, now time.Time, out *outcome) bool {
	op := "acquire"
	if w.kind == waitReq {
		op = "wait"
	}
	switch {
	case s.stopping.Load():
		out.fail(w, api.CodeUnavailable, "%s %q: lock service instance is shutting down; retry (another instance may serve you)", op, w.key)
	case s.waiters >= s.cfg.MaxWaiters:
		s.refused("max_waiters", op, w.key, s.cfg.MaxWaiters)
		out.fail(w, api.CodeUnavailable, "%s %q: too many parked requests on this instance (%d); retry later", op, w.key, s.cfg.MaxWaiters)
	case ks.q.len() >= s.cfg.MaxWaitersPerKey:
		s.refused("max_waiters_per_key", op, w.key, s.cfg.MaxWaitersPerKey)
		out.fail(w, api.CodeUnavailable, "%s %q: too many requests parked on this key (%d); retry later", op, w.key, s.cfg.MaxWaitersPerKey)
	default:
		s.waiters++
		w.since = ks.attempts
		ks.q.push(w)
		if w.window > 0 {
			w.aliveUntil = now.Add(w.window)
		}
		s.armTimerLocked(w, now)
		return true
	}
	w.done = true
	s.reg.forget(w)
	return false
}

// armTimerLocked sets w's timer to its deadline or the end of its
// liveness window, whichever comes first.
func (s *Service) armTimerLocked(w *waiter, now time.Time) {
	at := w.deadline
	if w.window > 0 && w.aliveUntil.Before(at) {
		at = w.aliveUntil
	}
	if w.timer == nil {
		w.timer = time.AfterFunc(at.Sub(now), func() { s.onTimer(w) })
	} else {
		w.timer.Reset(at.Sub(now))
	}
}

// finishLocked takes w out of the waiting room: off its queue, timer
// stopped, and out of the registry unless it was granted (a granted lock id
// stays cancellable for recentGrantTTL).
func (s *Service) finishLocked(w *waiter) {
	s.lookedLocked(w)
	w.done = true
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.elem != nil {
		if ks := s.keys[w.key]; ks != nil {
			ks.q.remove(w)
		}
		w.elem = nil
		s.waiters--
	}
	if !w.granted {
		s.reg.forget(w)
	}
}

// markFreshLocked notes that parked w has not looked at the store yet (and
// no attempt for its key is in flight): it is not counted as parked
// (Stats) until its first attempt returns.
func (s *Service) markFreshLocked(w *waiter) {
	w.fresh = true
	s.fresh++
}

// lookedLocked notes that w's first look at the store returned.
func (s *Service) lookedLocked(w *waiter) {
	if w.fresh {
		w.fresh = false
		s.fresh--
	}
}

// onTimer answers a request whose wait_ms ran out, or drops one whose
// liveness window was not renewed (retiring its lock id), unless a store
// attempt for it is in flight: that attempt settles it.
func (s *Service) onTimer(w *waiter) {
	var out outcome
	s.mu.Lock()
	if !s.dueLocked(w, time.Now(), &out) && !w.done && w.next == nil && !w.overdue && !w.lapsed {
		s.armTimerLocked(w, time.Now())
	}
	if ks := s.keys[w.key]; ks != nil {
		s.dropIfIdle(w.key, ks)
	}
	s.mu.Unlock()
	s.carryOut(out)
}

// dueLocked ends w if its deadline or liveness window has passed at now,
// and reports whether it did (or marked it, when an attempt for it is in
// flight). The driver asks before every attempt, so no attempt starts for
// a request past its deadline or window, whenever its timer fires.
func (s *Service) dueLocked(w *waiter, now time.Time, out *outcome) bool {
	switch {
	case w.done || w.next != nil:
		// answered, or superseded by a retry (settled by its attempt)
		return false
	case !now.Before(w.deadline):
		if w.attempting {
			w.overdue = true
			return true
		}
		s.finishLocked(w)
		s.stats.waitTimeouts.Add(1)
		out.answer(w, s.notDone(w))
		return true
	case w.window > 0 && !now.Before(w.aliveUntil) && !w.lapsed:
		w.lapsed = true
		if w.kind == acquireReq {
			s.reg.retire(w.key, w.id, now)
			out.retired = append(out.retired, giveBack{key: w.key, id: w.id})
		}
		s.stats.lapsed.Add(1)
		if !w.attempting {
			s.finishLocked(w) // no answer: see endLocked
		}
		return true
	}
	return false
}

// notDone is the answer of a request that ends without its result: an
// acquire not acquired, a wait 408.
func (s *Service) notDone(w *waiter) answer {
	if w.kind == waitReq {
		return answer{r: w.r, code: api.CodeTimeout, msg: "wait " + quote(w.key) + ": still locked after wait_ms"}
	}
	return answer{r: w.r, resp: api.AcquireResponse{Key: w.key}}
}

// renew extends the liveness window of the request with id on key. It
// reports whether this instance has that request in progress.
func (s *Service) renew(key, id string) bool {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, kind := range []reqKind{acquireReq, waitReq} {
		w := s.reg.lookup(kind, id)
		if w == nil || w.key != key || w.done || w.lapsed {
			continue
		}
		if w.window > 0 {
			w.aliveUntil = now.Add(w.window)
		}
		return true
	}
	return false
}

// withdraw retires lockID for key on this instance (a cancel): a parked
// request is answered not acquired, an attempt in flight is given back
// when it returns, and a grant sent within recentGrantTTL is given back. It
// reports whether this instance had the request.
func (s *Service) withdraw(key, lockID string) bool {
	now := time.Now()
	var out outcome
	s.mu.Lock()
	s.reg.retire(key, lockID, now)
	w := s.reg.lookup(acquireReq, lockID)
	had := w != nil && w.key == key
	if had {
		switch {
		case w.granted:
			s.reg.forget(w)
			out.giveBack(w, store.Lease{})
		case w.done, w.attempting:
		default:
			s.finishLocked(w)
			out.answer(w, s.notDone(w))
		}
		if ks := s.keys[key]; ks != nil {
			s.dropIfIdle(key, ks)
		}
	}
	s.mu.Unlock()
	if len(out.giveBacks) > 0 {
		s.ops.Add(1)
		s.dispatch(func() {
			defer s.ops.Done()
			s.carryOut(out)
		})
	} else {
		s.carryOut(out)
	}
	return had
}

// failAllWaiters answers every parked request with code (on shutdown),
// except those whose store attempt is in flight: settleLocked answers them
// with the attempt's outcome (Stop waits for it), so a grant the store
// applies is not left to a caller that was told 503.
func (s *Service) failAllWaiters(code int, msg string) {
	var out outcome
	s.mu.Lock()
	for key, ks := range s.keys {
		s.failParkedLocked(ks, code, msg, &out)
		s.dropIfIdle(key, ks)
	}
	s.mu.Unlock()
	s.carryOut(out)
}

// failParkedLocked answers ks's parked requests with code, except those
// with a store attempt in flight for their lock id.
func (s *Service) failParkedLocked(ks *keyState, code int, msg string, out *outcome) {
	for _, w := range ks.q.all() {
		if w.attempting || w.inherits {
			continue
		}
		s.finishLocked(w)
		out.answers = append(out.answers, answer{r: w.r, code: code, msg: msg})
	}
}

// shutdownMsg answers the requests parked on a stopping instance.
const shutdownMsg = "lock service instance is shutting down; retry (another instance may serve you)"
