package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// The driver makes the store attempts for the requests parked on a key:
// one at a time per key, for the head of the key's queue, or a read when
// only waits are parked. Wake-ups that arrive while an attempt runs fold
// into one more attempt, never one per waiter. A release handled by this
// instance hands the lock to the head in the same store operation
// (handOff). Every attempt's result goes through settleLocked, the one
// place that decides what becomes of the request and of a grant, and what
// settleLocked decides is carried out by carryOut.

// attempt is the result of one store attempt for an acquire.
type attempt struct {
	grant store.Grant
	err   error // nil: granted; store.ErrLocked (a *store.LockedError); else unknown outcome
	// retry: the outcome is unknown but the request stays parked and the
	// driver asks the store again (a hand-off whose Transfer failed:
	// acquire is idempotent per lock id).
	retry bool
	// n is the key's attempt number (keyState.attempts when it started),
	// 0 for a try: a grant answers only the waits parked before it started.
	n uint64
}

// answer is a reply to send once Service.mu is released.
type answer struct {
	r    *request
	resp any
	// an error reply: code and message, or err through the error table
	code int
	msg  string
	op   string
	err  error
	// undelivered, when set, is given back if the answer reaches nobody
	// (a grant to a request with a liveness window; delivery.go).
	undelivered *giveBack
}

// outcome is what a decision asks to be done outside Service.mu.
type outcome struct {
	answers   []answer
	giveBacks []giveBack // grants nobody will receive: released by lock id
	expired   []store.Event
	retired   []giveBack // lock ids this instance retired on its own: announced to the others
	wake      bool       // the key may be free: attempt again
}

func (o *outcome) answer(w *waiter, a answer) { o.answers = append(o.answers, a) }

func (o *outcome) fail(w *waiter, code int, format string, args ...any) {
	o.answers = append(o.answers, answer{r: w.r, code: code, msg: fmt.Sprintf(format, args...)})
}

// giveBack is a grant to release: to a retired lock id. lease is the
// grant's when the attempt returned it (zero for an unknown outcome).
type giveBack struct {
	key, id string
	lease   store.Lease
}

// giveBack asks for the grant to w's retired lock id to be released; the
// key may then be free, so the driver looks again.
func (o *outcome) giveBack(w *waiter, lease store.Lease) {
	o.giveBacks = append(o.giveBacks, giveBack{key: w.key, id: w.id, lease: lease})
	o.wake = true
}

// settleLocked decides the fate of acquire w after a store attempt for it:
// granted, superseded by a retry, too late, cancelled, or failed. It
// answers through out and returns true when w's lock id got the lock and
// keeps it.
//
// The service gives a grant back (releases it) only when the lock id is
// retired: cancelled by its caller, or its liveness window ran out. A
// request whose wait_ms ran out during the attempt gets the attempt's
// result, so an answer acquired:true is never followed by the service
// releasing that lease on its own.
func (s *Service) settleLocked(ks *keyState, w *waiter, a attempt, out *outcome) bool {
	w.attempting = false
	s.lookedLocked(w)
	if w.next != nil {
		current(w).inherits = false // the inherited attempt returns now
	}
	retired := w.lapsed || s.reg.isRetired(w.key, w.id, time.Now())
	var le *store.LockedError
	switch {
	case a.retry:
		if retired {
			out.giveBack(w, store.Lease{})
			s.endLocked(w, out)
			return false
		}
		out.wake = true
		return false
	case a.err == nil:
		switch {
		case retired:
			out.giveBack(w, a.grant.Lease)
			s.endLocked(w, out)
			return false
		case w.next != nil:
			// Superseded: the grant belongs to the newest request with the
			// id. A parked one receives it now; one making its own attempt
			// gets the same grant from the store; one already answered
			// leaves the lease to the id (a retry with it gets it back).
			if cur := current(w); !cur.done && !cur.attempting && cur.elem != nil {
				s.grantLocked(ks, cur, a.grant, a.n, out)
			} else {
				s.watchLeaseLocked(w.key, a.grant.Token, remaining(a.grant.Lease))
			}
			return true
		case w.done:
			// Answered 503 while the attempt ran (shutdown): an unknown
			// outcome for the caller, who retries with the id or withdraws.
			s.watchLeaseLocked(w.key, a.grant.Token, remaining(a.grant.Lease))
			return true
		}
		s.grantLocked(ks, w, a.grant, a.n, out)
		return true
	case errors.As(a.err, &le):
		if w.done {
			return false
		}
		if s.stopping.Load() && w.blocking && !retired {
			s.finishLocked(w)
			out.fail(w, api.CodeUnavailable, "acquire %q: lock service instance is shutting down; retry (another instance may serve you)", w.key)
			return false
		}
		if retired || w.overdue || !w.blocking || w.elem == nil {
			if !w.blocking {
				s.finishLocked(w)
				out.answer(w, answer{r: w.r, resp: notAcquired(w.key, le)})
			} else {
				s.endLocked(w, out)
			}
		}
		return false
	default:
		// Unknown outcome: the store may have granted it.
		switch {
		case retired:
			out.giveBack(w, store.Lease{})
			s.endLocked(w, out)
		case w.done:
			if cur := current(w); cur != w && cur.elem != nil {
				// A retry is parked: let it ask the store first.
				ks.q.moveToFront(cur)
				out.wake = true
			}
		default:
			s.finishLocked(w)
			out.answers = append(out.answers, answer{r: w.r, op: "acquire", err: a.err})
			out.wake = true
		}
		return false
	}
}

// endLocked finishes w and answers it "not acquired" unless it was
// answered already or its liveness window ran out. A lapsed request gets
// no answer: its caller stopped renewing and must treat its lock id as
// spent, and an "acquired":false could be taken for a wait that ran out,
// after which a caller may reuse the id elsewhere while this instance
// gives back a late grant for it.
func (s *Service) endLocked(w *waiter, out *outcome) {
	if w.done {
		return
	}
	s.finishLocked(w)
	if !w.lapsed {
		out.answer(w, s.notDone(w))
	}
}

// grantLocked answers w with grant g, made by the key's attempt n, and the
// waits parked before that attempt started: the key was free at a moment
// of their lifetime (the lock changed hands). A wait parked while the
// attempt was in flight may have arrived after that moment; it waits on.
func (s *Service) grantLocked(ks *keyState, w *waiter, g store.Grant, n uint64, out *outcome) {
	w.granted = true // stays registered: cancellable for recentGrantTTL
	s.finishLocked(w)
	s.reg.rememberGrant(w, time.Now())
	s.stats.grants.Add(1)
	a := answer{r: w.r, resp: grantResponse(w, g)}
	if w.window > 0 {
		a.undelivered = &giveBack{key: w.key, id: w.id, lease: g.Lease}
	}
	out.answer(w, a)
	w.r = nil // answered: the registry keeps only the id for a cancel
	s.watchLeaseLocked(w.key, g.Lease.Token, remaining(g.Lease))
	if ks != nil {
		for _, ww := range ks.q.waits() {
			if ww.since >= n {
				continue
			}
			s.finishLocked(ww)
			out.answer(ww, answer{r: ww.r, resp: api.WaitResponse{Key: ww.key, Value: g.Value}})
		}
	}
}

// wakeLocked runs the key's driver if anything is parked on it, or makes
// a running one attempt once more.
func (s *Service) wakeLocked(key string, ks *keyState) {
	if ks.q.len() == 0 {
		return
	}
	if ks.running {
		ks.dirty = true
		return
	}
	ks.running = true
	s.ops.Add(1)
	s.dispatch(func() {
		defer s.ops.Done()
		s.drive(key, ks)
	})
}

// drive makes one store attempt per round for the key, until no wake-up
// arrived during the last one.
func (s *Service) drive(key string, ks *keyState) {
	for {
		var out outcome
		s.mu.Lock()
		ks.dirty = false
		now := time.Now()
		head := ks.q.head()
		for head != nil && s.dueLocked(head, now, &out) {
			head = ks.q.head()
		}
		for _, w := range ks.q.waits() {
			s.dueLocked(w, now, &out)
		}
		switch {
		case head != nil:
			head.attempting = true
			ks.attempts++
			n := ks.attempts
			s.mu.Unlock()
			ctx, cancel := s.storeCtx()
			g, err := s.st.Acquire(ctx, key, head.id, head.opts)
			cancel()
			s.mu.Lock()
			for _, w := range ks.q.waits() {
				s.lookedLocked(w) // the attempt looked at the key for them too
			}
			s.observeLocked(key, ks, g.Lease, err, &out)
			s.settleLocked(ks, head, attempt{grant: g, err: err, n: n}, &out)
		case ks.q.watching():
			ks.attempts++
			n := ks.attempts
			s.mu.Unlock()
			ctx, cancel := s.storeCtx()
			info, err := s.st.Get(ctx, key)
			cancel()
			s.mu.Lock()
			s.settleWatchersLocked(key, ks, info, err, n, &out)
		}
		if s.stopping.Load() {
			s.failParkedLocked(ks, api.CodeUnavailable, shutdownMsg, &out)
		}
		more := (ks.dirty || out.wake) && ks.q.len() > 0 && !s.stopping.Load()
		if !more {
			ks.running = false
			s.dropIfIdle(key, ks)
		}
		s.mu.Unlock()
		s.carryOut(out)
		if !more {
			return
		}
	}
}

// observeLocked publishes the expiry of the lease this instance's timer
// saw due (ks.expiring) once an attempt finds it gone, and sets the timer
// for the holder it finds (stores without Notifier).
func (s *Service) observeLocked(key string, ks *keyState, granted store.Lease, err error, out *outcome) {
	var le *store.LockedError
	switch {
	case err == nil:
		if ks.expiring != 0 && ks.expiring != granted.Token {
			out.expired = append(out.expired, store.Event{Kind: store.Expired, Key: key, Token: ks.expiring})
		}
		ks.expiring = 0
	case errors.As(err, &le):
		if ks.expiring != 0 && le.Lease.Token != ks.expiring {
			out.expired = append(out.expired, store.Event{Kind: store.Expired, Key: key, Token: ks.expiring})
			ks.expiring = 0
		}
		s.watchLeaseLocked(key, le.Lease.Token, le.ExpiresIn)
	default:
		if ks.expiring != 0 {
			// The attempt could not tell: look at that lease again.
			s.watchLeaseLocked(key, ks.expiring, time.Second)
			ks.expiring = 0
		}
	}
}

// settleWatchersLocked answers the parked waits after a read of the key.
func (s *Service) settleWatchersLocked(key string, ks *keyState, info store.Info, err error, n uint64, out *outcome) {
	switch {
	case err == nil && !info.Locked && info.Delay > 0:
		// The lease ended but its lock-delay runs: a wait ends when the
		// key can be taken. Notifier stores report the delay's end; for
		// the others a timer looks again then.
		for _, w := range ks.q.waits() {
			s.lookedLocked(w)
		}
		s.watchLeaseLocked(key, info.Lease.Token, info.Delay)
	case err == nil && !info.Locked:
		if ks.expiring != 0 {
			out.expired = append(out.expired, store.Event{Kind: store.Expired, Key: key, Token: ks.expiring})
			if lw := s.watches[key]; lw != nil && lw.token == ks.expiring {
				// The timer for the end of its lock-delay: announced now.
				s.unwatchLeaseLocked(key)
			}
			ks.expiring = 0
		}
		for _, w := range ks.q.waits() {
			if w.since >= n {
				out.wake = true // parked during the read: it needs a read of its own
				continue
			}
			s.finishLocked(w)
			out.answer(w, answer{r: w.r, resp: api.WaitResponse{Key: key, Value: info.Value}})
		}
	case err == nil:
		for _, w := range ks.q.waits() {
			s.lookedLocked(w)
		}
		if ks.expiring != 0 && info.Lease.Token != ks.expiring {
			out.expired = append(out.expired, store.Event{Kind: store.Expired, Key: key, Token: ks.expiring})
			ks.expiring = 0
		}
		d := remaining(info.Lease)
		if _, ok := s.st.(store.Notifier); ok && !info.Lease.ExpiresAt.IsZero() && !time.Now().Before(info.Lease.ExpiresAt) {
			// Still held past its ExpiresAt (a JetStream lease message
			// lives to its whole-second Nats-TTL): the store reports its
			// end. A timer by remaining would be 1 ms, again and again.
			d = 0
		}
		s.watchLeaseLocked(key, info.Lease.Token, d)
	default:
		for _, w := range ks.q.waits() {
			s.finishLocked(w)
			out.answers = append(out.answers, answer{r: w.r, op: "wait", err: err})
		}
	}
}

// tryAcquire makes the one store attempt of a try (wait_ms 0).
func (s *Service) tryAcquire(w *waiter) {
	ctx, cancel := s.storeCtx()
	g, err := s.st.Acquire(ctx, w.key, w.id, w.opts)
	cancel()
	var out outcome
	s.mu.Lock()
	ks := s.keys[w.key]
	s.settleLocked(ks, w, attempt{grant: g, err: err}, &out)
	if ks != nil && s.stopping.Load() {
		s.failParkedLocked(ks, api.CodeUnavailable, shutdownMsg, &out)
		s.dropIfIdle(w.key, ks)
	}
	s.mu.Unlock()
	s.carryOut(out)
}

// handOff ends fromID's lease and, when a request is parked for the key on
// this instance and the store can do it atomically, grants the lock to the
// head of the queue in the same store operation (store.Transferrer): one
// round trip, no moment in which the key is free, FIFO. It reports false
// when it did nothing (the caller then releases normally); otherwise err is
// the store's answer for the release (store.ErrNotHeld: nothing changed).
func (s *Service) handOff(ctx context.Context, key, fromID string, u store.Update) (bool, error) {
	tr, ok := s.st.(store.Transferrer)
	if !ok {
		return false, nil
	}
	now := time.Now()
	s.mu.Lock()
	ks := s.keys[key]
	var head *waiter
	var early outcome
	var n uint64
	if ks != nil && !ks.running {
		w := ks.q.head()
		for w != nil && s.dueLocked(w, now, &early) {
			w = ks.q.head()
		}
		if w != nil {
			head = w
			head.attempting = true
			ks.running = true // this release acts as the key's driver
			ks.attempts++
			n = ks.attempts
		}
	}
	s.mu.Unlock()
	s.carryOut(early)
	if head == nil {
		return false, nil
	}
	g, err := tr.Transfer(ctx, key, fromID, u, head.id, head.opts)
	// ErrInvalid: the store refused the request and changed nothing, for
	// u or for the head's options (a JetStream bucket cannot hold a lease
	// plus lock-delay longer than its marker TTL, which a request parked
	// behind the head was never checked against). The head then asks the
	// store itself (and is answered 400 if it is the cause), and the caller
	// releases as if nobody were parked.
	invalid := errors.Is(err, store.ErrInvalid)
	var out outcome
	s.mu.Lock()
	a := attempt{grant: g, err: err, n: n}
	switch {
	case errors.Is(err, store.ErrNotHeld):
		a.err = &store.LockedError{Key: key} // nothing changed: the head stays parked
	case err != nil:
		a = attempt{retry: true}
	}
	if err == nil {
		s.unwatchLeaseLocked(key) // the releaser's lease ended
	}
	if s.settleLocked(ks, head, a, &out) {
		s.stats.handoffs.Add(1)
	}
	ks.running = false
	if s.stopping.Load() {
		s.failParkedLocked(ks, api.CodeUnavailable, shutdownMsg, &out)
	} else if ks.dirty || out.wake {
		ks.dirty = false
		out.wake = false
		s.wakeLocked(key, ks)
	}
	s.dropIfIdle(key, ks)
	s.mu.Unlock()
	if err == nil {
		s.publishEventMsg(api.EventReleased, api.Event{Key: key, HandedOff: true})
	}
	s.carryOut(out)
	if invalid {
		return false, nil
	}
	return true, err
}

// carryOut does what a decision asked: answers, give-backs, expired
// events.
func (s *Service) carryOut(out outcome) {
	for _, a := range out.answers {
		switch {
		case a.err != nil:
			s.failStore(a.r, a.op, a.err)
		case a.code != 0:
			s.fail(a.r, a.code, "%s", a.msg)
		case a.undelivered != nil:
			s.respondVia(a.r, a.resp, s.expectDelivery(*a.undelivered))
		default:
			s.respond(a.r, a.resp)
		}
	}
	for _, gb := range out.giveBacks {
		s.giveBack(gb)
	}
	for _, r := range out.retired {
		s.announceRetired(r.key, r.id)
	}
	for _, e := range out.expired {
		s.stats.expiredEvents.Add(1)
		s.publishEvent(api.EventExpired, e.Key, e.Token)
	}
}

// announceRetired tells every instance that this one retired lockID for
// key (its liveness window ran out, or its grant reached nobody), as the
// caller's own cancel would: a request with it that reaches another
// instance is then refused rather than told acquired:true for a lease this
// instance gives back.
func (s *Service) announceRetired(key, lockID string) {
	data, _ := json.Marshal(api.CancelRequest{LockID: lockID})
	subject := api.Subject(s.cfg.Prefix, api.OpCancel, key)
	if err := s.announce(&nats.Msg{Subject: subject, Data: data,
		Header: nats.Header{api.ContentTypeHeader: {api.JSONContentType}}}); err != nil {
		s.logSendError("publish failed", subject, err)
	}
}

// giveBack releases a grant nobody will receive (its lock id is retired).
// The one path by which the service releases a lease on its own. When the
// store fails, the lease's end is watched (stores without Notifier) and the
// release is tried again in the background, once a second, until it is
// done, the lease can have ended, or the instance stops.
func (s *Service) giveBack(gb giveBack) {
	if s.giveBackOnce(gb) {
		return
	}
	s.mu.Lock()
	s.watchLeaseLocked(gb.key, gb.lease.Token, remaining(gb.lease))
	s.mu.Unlock()
	until := time.Now().Add(s.cfg.MaxTTL)
	if !gb.lease.ExpiresAt.IsZero() {
		until = gb.lease.ExpiresAt
	}
	s.ops.Add(1)
	go func() {
		defer s.ops.Done()
		t := time.NewTimer(time.Second)
		defer t.Stop()
		for time.Now().Before(until) {
			select {
			case <-s.ctx.Done():
				return
			case <-t.C:
			}
			if s.giveBackOnce(gb) {
				return
			}
			t.Reset(time.Second)
		}
	}()
}

// giveBackOnce tries the release of a give-back once; true when it is
// settled (released, or the lock id no longer holds the key).
func (s *Service) giveBackOnce(gb giveBack) bool {
	// Not s.ctx: a give-back started while the instance stops still runs.
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	defer cancel()
	err := s.st.Release(ctx, gb.key, gb.id, store.Update{})
	switch {
	case err == nil:
		s.stats.givenBack.Add(1)
		s.released(gb.key)
		return true
	case errors.Is(err, store.ErrNotHeld):
		return true
	default:
		s.countStoreError(err)
		s.logLimited(slog.LevelWarn, "give back: "+rootCause(err).Error(), "give back failed: trying again",
			slog.String("key", gb.key), slog.Any("err", err))
		return false
	}
}

func grantResponse(w *waiter, g store.Grant) api.AcquireResponse {
	return api.AcquireResponse{
		Acquired: true, Key: w.key, LockID: w.id, Token: g.Token,
		TTLms: g.TTL.Milliseconds(), ExpiresAt: api.FormatTime(g.ExpiresAt),
		Owner: g.Owner, Value: g.Value, LockDelayMs: ceilMs(g.Delay),
	}
}

// notAcquired answers a try that found the key held (le names the holder)
// or a blocking acquire that ends without the lock (le nil).
func notAcquired(key string, le *store.LockedError) api.AcquireResponse {
	resp := api.AcquireResponse{Key: key}
	if le != nil {
		resp.Owner = le.Lease.Owner
		resp.Token = le.Lease.Token
		resp.ExpiresAt = api.FormatTime(le.Lease.ExpiresAt)
		if le.Delayed {
			resp.DelayMs = max(ceilMs(le.ExpiresIn), 1)
		}
	}
	return resp
}

// ceilMs is d in whole milliseconds, rounded up.
func ceilMs(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// remaining is how long until l ends, at least 1ms (a lease reported as
// over still needs a look: the store will have expired it by then), or 0
// when the store gave no expiry.
func remaining(l store.Lease) time.Duration {
	if l.ExpiresAt.IsZero() {
		return 0
	}
	return max(time.Until(l.ExpiresAt), time.Millisecond)
}

func quote(s string) string { return strconv.Quote(s) }
