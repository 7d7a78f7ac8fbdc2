package service

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// How the service waits, per instance:
//
//   - Every blocking request (acquire with wait_ms, wait) that finds the key
//     locked is parked in the key's queue: acquirers in FIFO order, waiters
//     in a second list.
//   - A wake-up (a release event from any instance, an expiry seen by the
//     store's watcher, or for stores without one a timer set to the holder's
//     known expiry) runs the key's driver, which makes one store attempt for
//     the key: an acquire for the first parked acquirer, or a get when only
//     waiters are parked. Wake-ups that arrive while an attempt runs are
//     folded into one more attempt, never one per waiter.
//   - A request whose deadline passes is answered (not acquired / 408) and
//     forgotten; a grant that completes after its request's deadline, or
//     after a cancel, is released again at once. The service never grants
//     after the caller's deadline.

type waiterKind int

const (
	acquireWaiter waiterKind = iota
	waitWaiter
)

type waiter struct {
	kind     waiterKind
	r        *request
	key      string
	lockID   string
	opts     store.AcquireOptions
	blocking bool
	deadline time.Time

	// guarded by Service.mu
	elem    *list.Element // position in its key queue when parked
	timer   *time.Timer   // deadline
	done    bool          // answered, timed out, cancelled or superseded
	granted bool          // answered with a grant (kept briefly for cancel)
	// superseded: a retry with the same lock id took over; a grant this
	// request obtains belongs to the retry too, so it is not given back.
	superseded bool
}

type keyState struct {
	acquirers list.List // *waiter, FIFO
	watchers  list.List // *waiter
	pending   int       // requests making their first attempt
	epoch     uint64    // incremented by every wake-up
	running   bool      // the driver is running
	dirty     bool      // woken while running: attempt again
	expiry    *time.Timer
	// expiring is the token of a lease this instance expects to expire
	// (stores without Notifier); cleared by a release event.
	expiring uint64
}

type recentGrant struct {
	at     time.Time
	lockID string
	w      *waiter
}

// recentGrantTTL is how long a grant stays cancellable after it is sent,
// covering a cancel that overtakes a grant in flight.
const recentGrantTTL = 5 * time.Second

func (s *Service) keyFor(key string) *keyState {
	ks := s.keys[key]
	if ks == nil {
		ks = &keyState{}
		s.keys[key] = ks
	}
	return ks
}

// dropIfIdle forgets a key with nothing parked. Called with s.mu held.
func (s *Service) dropIfIdle(key string, ks *keyState) {
	if ks.acquirers.Len() == 0 && ks.watchers.Len() == 0 && ks.pending == 0 && !ks.running {
		if ks.expiry != nil {
			ks.expiry.Stop()
		}
		if s.keys[key] == ks {
			delete(s.keys, key)
		}
	}
}

// registerID makes w the in-progress acquire of its lock id on this
// instance, superseding an earlier request with the same id (a client
// retry): only the newest is answered. Called with s.mu held.
func (s *Service) registerID(w *waiter) (superseded *waiter) {
	if prev := s.ids[w.lockID]; prev != nil && !prev.done {
		superseded = prev
		prev.superseded = true
		s.unparkLocked(prev)
	}
	s.ids[w.lockID] = w
	return superseded
}

// unparkLocked marks w done and removes it from its queue and timers.
func (s *Service) unparkLocked(w *waiter) {
	w.done = true
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.elem != nil {
		ks := s.keys[w.key]
		if ks != nil {
			if w.kind == acquireWaiter {
				ks.acquirers.Remove(w.elem)
			} else {
				ks.watchers.Remove(w.elem)
			}
		}
		w.elem = nil
		s.waiters--
	}
}

func (s *Service) forgetIDLocked(w *waiter) {
	if s.ids[w.lockID] == w {
		delete(s.ids, w.lockID)
	}
}

// rememberGrantLocked keeps a granted waiter cancellable for a short while.
func (s *Service) rememberGrantLocked(w *waiter, now time.Time) {
	w.granted = true
	s.recent = append(s.recent, recentGrant{at: now, lockID: w.lockID, w: w})
	i := s.recentHead
	for ; i < len(s.recent) && now.Sub(s.recent[i].at) > recentGrantTTL; i++ {
		rg := s.recent[i]
		if s.ids[rg.lockID] == rg.w {
			delete(s.ids, rg.lockID)
		}
		s.recent[i] = recentGrant{}
	}
	s.recentHead = i
	// Compact when the expired prefix is half the slice: amortized O(1)
	// per grant (copying on every expiry cost O(grants in the window)).
	if s.recentHead > len(s.recent)/2 {
		n := copy(s.recent, s.recent[s.recentHead:])
		clear(s.recent[n:])
		s.recent = s.recent[:n]
		s.recentHead = 0
	}
}

func (s *Service) startAcquire(w *waiter) {
	s.mu.Lock()
	superseded := s.registerID(w)
	ks := s.keyFor(w.key)
	// Blocking requests queue behind those already parked here (FIFO).
	if w.blocking && ks.acquirers.Len() > 0 {
		ok := s.parkLocked(ks, w)
		s.mu.Unlock()
		s.answerSuperseded(superseded)
		if !ok {
			s.fail(w.r, api.CodeUnavailable, "acquire %q: too many parked requests on this instance (%d); retry later", w.key, s.cfg.MaxWaiters)
		}
		return
	}
	ks.pending++
	epoch := ks.epoch
	s.mu.Unlock()
	s.answerSuperseded(superseded)

	ctx, cancel := s.storeCtx()
	g, err := s.st.Acquire(ctx, w.key, w.lockID, w.opts)
	cancel()

	var le *store.LockedError
	s.mu.Lock()
	ks.pending--
	switch {
	case err == nil:
		if w.superseded {
			answers, back := s.adoptLocked(w, ks, g)
			s.dropIfIdle(w.key, ks)
			s.mu.Unlock()
			for _, a := range answers {
				s.respond(a.r, a.resp)
			}
			if back {
				s.giveBack(w)
			}
			return
		}
		if w.done || time.Now().After(w.deadline.Add(s.graceFor(w))) {
			// Cancelled, or too late for the caller: give the lock back.
			answered := w.done
			w.done = true
			s.forgetIDLocked(w)
			s.dropIfIdle(w.key, ks)
			s.mu.Unlock()
			if !answered {
				s.respond(w.r, notAcquired(w, nil))
			}
			s.giveBack(w)
			return
		}
		w.done = true
		s.rememberGrantLocked(w, time.Now())
		s.armForGrantLocked(w.key, ks, g)
		s.dropIfIdle(w.key, ks)
		s.mu.Unlock()
		s.stats.grants.Add(1)
		s.respond(w.r, s.grantResponse(w, g))
	case errors.As(err, &le) && w.blocking && !w.done:
		s.armExpiryLocked(w.key, ks, le)
		ok := s.parkLocked(ks, w)
		if ks.epoch != epoch {
			s.wakeLocked(w.key, ks)
		}
		s.dropIfIdle(w.key, ks)
		s.mu.Unlock()
		if !ok {
			s.fail(w.r, api.CodeUnavailable, "acquire %q: too many parked requests on this instance (%d); retry later", w.key, s.cfg.MaxWaiters)
		}
	default:
		done := w.done
		w.done = true
		s.forgetIDLocked(w)
		s.dropIfIdle(w.key, ks)
		s.mu.Unlock()
		switch {
		case done:
		case errors.As(err, &le):
			s.respond(w.r, notAcquired(w, le))
		default:
			s.failStore(w.r, "acquire", err)
		}
	}
}

// graceFor is how late a grant for a try (non-blocking) acquire may still
// be sent: tries have no deadline beyond the store timeout.
func (s *Service) graceFor(w *waiter) time.Duration {
	if w.blocking {
		return 0
	}
	return s.cfg.StoreTimeout
}

func (s *Service) answerSuperseded(w *waiter) {
	if w != nil {
		s.respond(w.r, api.AcquireResponse{Key: w.key})
	}
}

// giveBack releases a grant nobody will receive.
func (s *Service) giveBack(w *waiter) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	defer cancel()
	if err := s.st.Release(ctx, w.key, w.lockID, store.Update{}); err == nil {
		s.released(w.key)
	} else if !errors.Is(err, store.ErrNotHeld) {
		s.cfg.Logf("release abandoned grant of %q: %v", w.key, err)
	}
}

func (s *Service) startWait(w *waiter) {
	s.mu.Lock()
	ks := s.keyFor(w.key)
	ks.pending++
	epoch := ks.epoch
	s.mu.Unlock()

	ctx, cancel := s.storeCtx()
	info, err := s.st.Get(ctx, w.key)
	cancel()

	s.mu.Lock()
	ks.pending--
	switch {
	case err == nil && !info.Locked:
		s.dropIfIdle(w.key, ks)
		s.mu.Unlock()
		s.respond(w.r, api.WaitResponse{Key: w.key, Value: info.Value})
	case err == nil && w.blocking:
		s.armExpiryLocked(w.key, ks, &store.LockedError{Key: w.key, Lease: info.Lease, ExpiresIn: remaining(info.Lease)})
		ok := s.parkLocked(ks, w)
		if ks.epoch != epoch {
			s.wakeLocked(w.key, ks)
		}
		s.dropIfIdle(w.key, ks)
		s.mu.Unlock()
		if !ok {
			s.fail(w.r, api.CodeUnavailable, "wait %q: too many parked requests on this instance (%d); retry later", w.key, s.cfg.MaxWaiters)
		}
	case err == nil:
		s.dropIfIdle(w.key, ks)
		s.mu.Unlock()
		s.fail(w.r, api.CodeTimeout, "wait %q: the key is locked (wait_ms was 0)", w.key)
	default:
		s.dropIfIdle(w.key, ks)
		s.mu.Unlock()
		s.failStore(w.r, "wait", err)
	}
}

// parkLocked queues w with its deadline timer; false when the instance's
// waiter limit is reached.
func (s *Service) parkLocked(ks *keyState, w *waiter) bool {
	if s.waiters >= s.cfg.MaxWaiters || s.stopping.Load() {
		w.done = true
		if w.kind == acquireWaiter {
			s.forgetIDLocked(w)
		}
		return false
	}
	s.waiters++
	if w.kind == acquireWaiter {
		w.elem = ks.acquirers.PushBack(w)
	} else {
		w.elem = ks.watchers.PushBack(w)
	}
	w.timer = time.AfterFunc(time.Until(w.deadline), func() { s.expireWaiter(w) })
	return true
}

// expireWaiter answers a parked request whose deadline passed.
func (s *Service) expireWaiter(w *waiter) {
	s.mu.Lock()
	if w.done {
		s.mu.Unlock()
		return
	}
	s.unparkLocked(w)
	if w.kind == acquireWaiter {
		s.forgetIDLocked(w)
	}
	if ks := s.keys[w.key]; ks != nil {
		s.dropIfIdle(w.key, ks)
	}
	s.mu.Unlock()
	s.stats.waitTimeouts.Add(1)
	if w.kind == acquireWaiter {
		s.respond(w.r, notAcquired(w, nil))
	} else {
		s.fail(w.r, api.CodeTimeout, "wait %q: still locked after wait_ms", w.key)
	}
}

// armExpiryLocked sets a wake-up for when the holder's lease ends, for
// stores that cannot report expiries themselves.
func (s *Service) armExpiryLocked(key string, ks *keyState, le *store.LockedError) {
	if _, ok := s.st.(store.Notifier); ok || le.ExpiresIn <= 0 {
		return // 0: the store does not know; it reports expiry otherwise
	}
	in := le.ExpiresIn
	if ks.expiry != nil {
		ks.expiry.Stop()
	}
	ks.expiring = le.Lease.Token
	ks.expiry = time.AfterFunc(in+2*time.Millisecond, func() { s.wake(key, true) })
}

// adoptLocked decides what becomes of a grant made for a request that a
// retry with the same lock id superseded. The grant belongs to the lock id:
// a retry parked here receives it now; a retry still making its first
// attempt gets it from the store itself (acquire is idempotent) or was
// already answered with it; if no live request has the id any more, the
// grant is given back (giveBack true).
func (s *Service) adoptLocked(w *waiter, ks *keyState, g store.Grant) (answers []answer, giveBack bool) {
	cur := s.ids[w.lockID]
	switch {
	case cur == nil || cur == w || (cur.done && !cur.granted) || cur.key != w.key:
		return nil, true
	case cur.done: // granted: the client holds it
		return nil, false
	case cur.elem != nil: // parked: hand it over now
		s.unparkLocked(cur)
		s.rememberGrantLocked(cur, time.Now())
		s.stats.grants.Add(1)
		s.armForGrantLocked(cur.key, ks, g)
		return []answer{{r: cur.r, resp: s.grantResponse(cur, g)}}, false
	default: // first attempt in flight: the store returns it the same grant
		return nil, false
	}
}

// armForGrantLocked sets the expiry wake-up for a lease this instance just
// granted, so the requests still parked behind it are woken if its holder
// never releases (stores without Notifier).
func (s *Service) armForGrantLocked(key string, ks *keyState, g store.Grant) {
	if ks.acquirers.Len() == 0 && ks.watchers.Len() == 0 {
		return
	}
	s.armExpiryLocked(key, ks, &store.LockedError{Key: key, Lease: g.Lease, ExpiresIn: remaining(g.Lease)})
}

// remaining is how long until l ends, at least 1ms (a lease reported as
// over still needs a wake-up: the store will have expired it by then), or
// 0 when the store gave no expiry.
func remaining(l store.Lease) time.Duration {
	if l.ExpiresAt.IsZero() {
		return 0
	}
	return max(time.Until(l.ExpiresAt), time.Millisecond)
}

// wake runs the key's driver if anything is parked on it.
func (s *Service) wake(key string, expiryTimer bool) {
	s.mu.Lock()
	if ks := s.keys[key]; ks != nil {
		if !expiryTimer {
			ks.expiring = 0
		}
		s.wakeLocked(key, ks)
	}
	s.mu.Unlock()
}

func (s *Service) wakeLocked(key string, ks *keyState) {
	ks.epoch++
	if ks.acquirers.Len() == 0 && ks.watchers.Len() == 0 {
		return
	}
	if ks.running {
		ks.dirty = true
		return
	}
	ks.running = true
	s.ops.Add(1)
	go s.drive(key, ks)
}

type answer struct {
	r    *request
	resp any
	code int
	msg  string
}

// drive makes one store attempt per round for the key, until no wake-up
// arrived during the last one.
func (s *Service) drive(key string, ks *keyState) {
	defer s.ops.Done()
	for {
		s.mu.Lock()
		ks.dirty = false
		var head *waiter
		if e := ks.acquirers.Front(); e != nil {
			head = e.Value.(*waiter)
		}
		watching := ks.watchers.Len() > 0
		expiring := ks.expiring
		s.mu.Unlock()

		var answers []answer
		var abandoned *waiter
		expiredToken := uint64(0)
		ctx, cancel := s.storeCtx()
		switch {
		case head != nil:
			g, err := s.st.Acquire(ctx, key, head.lockID, head.opts)
			var le *store.LockedError
			s.mu.Lock()
			switch {
			case err == nil && head.superseded:
				var back bool
				answers, back = s.adoptLocked(head, ks, g)
				if back {
					abandoned = head
				}
			case err == nil && (head.done || time.Now().After(head.deadline)):
				abandoned = head
				if !head.done {
					s.unparkLocked(head)
					answers = append(answers, answer{r: head.r, resp: notAcquired(head, nil)})
				}
				s.forgetIDLocked(head)
			case err == nil:
				s.unparkLocked(head)
				s.rememberGrantLocked(head, time.Now())
				s.stats.grants.Add(1)
				answers = append(answers, answer{r: head.r, resp: s.grantResponse(head, g)})
				answers = s.takeWatchersLocked(ks, answers, g.Value)
				s.armForGrantLocked(key, ks, g)
				if expiring != 0 && expiring != g.Token {
					expiredToken = expiring
				}
			case errors.As(err, &le):
				if expiring != 0 && le.Lease.Token != expiring {
					expiredToken = expiring
				}
				s.armExpiryLocked(key, ks, le)
			default:
				if !head.done {
					s.unparkLocked(head)
					s.forgetIDLocked(head)
					answers = append(answers, answer{r: head.r, code: CodeFor(err), msg: fmt.Sprintf("acquire %q: store error: %v", key, err)})
				}
				// The key may be free: let the next request try rather
				// than wait for a wake-up that may never come.
				if ks.acquirers.Len() > 0 {
					ks.dirty = true
				}
			}
		case watching:
			info, err := s.st.Get(ctx, key)
			s.mu.Lock()
			switch {
			case err == nil && !info.Locked:
				answers = s.takeWatchersLocked(ks, answers, info.Value)
				if expiring != 0 {
					expiredToken = expiring
				}
			case err == nil:
				if expiring != 0 && info.Lease.Token != expiring {
					expiredToken = expiring
				}
				s.armExpiryLocked(key, ks, &store.LockedError{Key: key, Lease: info.Lease, ExpiresIn: remaining(info.Lease)})
			default:
				for e := ks.watchers.Front(); e != nil; e = ks.watchers.Front() {
					w := e.Value.(*waiter)
					s.unparkLocked(w)
					answers = append(answers, answer{r: w.r, code: CodeFor(err), msg: fmt.Sprintf("wait %q: store error: %v", key, err)})
				}
			}
		default:
			s.mu.Lock()
		}
		cancel()
		if expiredToken != 0 && ks.expiring == expiredToken {
			ks.expiring = 0
		}
		if abandoned != nil {
			ks.dirty = true // the lock is free again once given back
		}
		more := ks.dirty && !s.stopping.Load()
		if !more {
			ks.running = false
			s.dropIfIdle(key, ks)
		}
		s.mu.Unlock()

		if abandoned != nil {
			ctx, cancel := s.storeCtx()
			err := s.st.Release(ctx, key, abandoned.lockID, store.Update{})
			cancel()
			if err == nil {
				s.publishEvent(api.EventReleased, key, 0)
			}
		}
		if expiredToken != 0 {
			s.stats.expiredEvents.Add(1)
			s.publishEvent(api.EventExpired, key, expiredToken)
		}
		for _, a := range answers {
			if a.code != 0 {
				s.fail(a.r, a.code, "%s", a.msg)
			} else {
				s.respond(a.r, a.resp)
			}
		}
		if !more {
			return
		}
	}
}

func (s *Service) takeWatchersLocked(ks *keyState, answers []answer, value []byte) []answer {
	for e := ks.watchers.Front(); e != nil; e = ks.watchers.Front() {
		w := e.Value.(*waiter)
		s.unparkLocked(w)
		answers = append(answers, answer{r: w.r, resp: api.WaitResponse{Key: w.key, Value: value}})
	}
	return answers
}

// cancelAcquire withdraws the acquire with lockID on key; a grant already
// sent within recentGrantTTL is released. It reports whether this instance
// had the request.
func (s *Service) cancelAcquire(key, lockID string) bool {
	s.mu.Lock()
	w := s.ids[lockID]
	if w == nil || w.key != key {
		s.mu.Unlock()
		return false
	}
	granted := w.granted
	wasParked := !w.done
	s.unparkLocked(w)
	s.forgetIDLocked(w)
	if ks := s.keys[key]; ks != nil {
		s.dropIfIdle(key, ks)
	}
	s.mu.Unlock()
	if wasParked {
		s.respond(w.r, api.AcquireResponse{Key: key})
	}
	if granted {
		s.giveBack(w)
	}
	// An attempt in flight sees w.done and gives the grant back itself.
	return true
}

// onEvent wakes waiters on release and expiry events from other instances.
func (s *Service) onEvent(m *nats.Msg) {
	if m.Header.Get(api.InstanceHeader) == s.id {
		return
	}
	rest := m.Subject[len(s.cfg.Prefix)+1:]
	expired := len(rest) > len(api.EventExpired) && rest[:len(api.EventExpired)+1] == api.EventExpired+"."
	if expired {
		if _, ok := s.st.(store.Notifier); ok {
			return // this instance sees expiries in the store itself
		}
		s.wake(rest[len(api.EventExpired)+1:], true)
		return
	}
	if m.Header.Get(api.HandedOffHeader) != "" {
		return // the lock went straight to the next holder: still locked
	}
	if _, ok := s.st.(store.Notifier); ok {
		return // this instance sees releases in the store itself
	}
	if len(rest) > len(api.EventReleased)+1 {
		s.wake(rest[len(api.EventReleased)+1:], false)
	}
}

// handOff ends fromID's lease and, when a request is parked for the key on
// this instance and the store can do it atomically, grants the lock to the
// first parked request in the same store operation (store.Transferrer):
// one round trip, no window in which the key is free, FIFO. It reports
// false when it did nothing (the caller then releases normally); otherwise
// err is the store's answer for the release (store.ErrNotHeld: nothing
// changed).
func (s *Service) handOff(ctx context.Context, key, fromID string, u store.Update) (bool, error) {
	tr, ok := s.st.(store.Transferrer)
	if !ok {
		return false, nil
	}
	s.mu.Lock()
	ks := s.keys[key]
	var head *waiter
	if ks != nil && !ks.running {
		if e := ks.acquirers.Front(); e != nil {
			if w := e.Value.(*waiter); time.Now().Before(w.deadline) {
				head = w
				ks.running = true // this release acts as the key's driver
			}
		}
	}
	s.mu.Unlock()
	if head == nil {
		return false, nil
	}
	g, err := tr.Transfer(ctx, key, fromID, u, head.lockID, head.opts)
	var answers []answer
	abandoned := false
	s.mu.Lock()
	switch {
	case errors.Is(err, store.ErrNotHeld):
	case err != nil:
		// Unknown outcome: the head may hold the lock now. Let the driver
		// ask the store again for it (acquire is idempotent per lock id).
		ks.dirty = true
	case head.superseded:
		answers, abandoned = s.adoptLocked(head, ks, g)
	case head.done || time.Now().After(head.deadline):
		abandoned = true
		if !head.done {
			s.unparkLocked(head)
			answers = append(answers, answer{r: head.r, resp: notAcquired(head, nil)})
		}
		s.forgetIDLocked(head)
	default:
		s.unparkLocked(head)
		s.rememberGrantLocked(head, time.Now())
		s.stats.grants.Add(1)
		s.stats.handoffs.Add(1)
		answers = append(answers, answer{r: head.r, resp: s.grantResponse(head, g)})
		answers = s.takeWatchersLocked(ks, answers, g.Value)
		s.armForGrantLocked(key, ks, g)
	}
	ks.running = false
	if ks.dirty && !abandoned {
		ks.dirty = false
		s.wakeLocked(key, ks)
	}
	s.dropIfIdle(key, ks)
	s.mu.Unlock()
	for _, a := range answers {
		s.respond(a.r, a.resp)
	}
	if err == nil {
		s.publishEventMsg(api.EventReleased, api.Event{Key: key, HandedOff: !abandoned})
		if abandoned {
			s.giveBack(head)
		}
	}
	return true, err
}

// onStoreEvent handles expiries observed by the store (Notifier).
func (s *Service) onStoreEvent(e store.Event) {
	if s.stopping.Load() {
		return
	}
	if e.Kind == store.Released {
		// The one wake-up for a release with such a store: the NATS
		// release event is sent only when the store call answered (not
		// after a lost acknowledgement) and reaches only instances
		// connected at that moment. The event is published by the
		// releasing instance.
		s.wake(e.Key, false)
		return
	}
	s.stats.expiredEvents.Add(1)
	s.publishEvent(api.EventExpired, e.Key, e.Token)
	s.wake(e.Key, true)
}

// failAllWaiters answers every parked request with code (on shutdown).
func (s *Service) failAllWaiters(code int, msg string) {
	s.mu.Lock()
	var rs []*request
	for key, ks := range s.keys {
		for _, l := range []*list.List{&ks.acquirers, &ks.watchers} {
			for e := l.Front(); e != nil; e = l.Front() {
				w := e.Value.(*waiter)
				s.unparkLocked(w)
				s.forgetIDLocked(w)
				rs = append(rs, w.r)
			}
		}
		s.dropIfIdle(key, ks)
	}
	s.mu.Unlock()
	for _, r := range rs {
		s.fail(r, code, "%s", msg)
	}
}
