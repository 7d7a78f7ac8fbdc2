package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/store"
)

// readLock reads the lease subject's last message from the stream leader.
func (s *Store) readLock(ctx context.Context, key string) (lockState, error) {
	m, err := s.getLast(ctx, s.lockPfx+key)
	if err != nil {
		return lockState{}, err
	}
	if m == nil {
		return lockState{}, nil
	}
	st := parse(m.Sequence, m.Header, m.Time, s.longest())
	if st.overlong {
		// Longer than the longest lease this store knows: an operator
		// may have raised the bucket's marker TTL since the last sample.
		if _, err := s.serverNow(ctx); err != nil {
			return lockState{}, err
		}
		st = parse(m.Sequence, m.Header, m.Time, s.longest())
	}
	s.setHint(key, st)
	return st, nil
}

// object is a state object as read: its value (nil when there is none) and
// the sequence of the subject's last message (0 when it has none).
type object struct {
	v   []byte
	seq uint64
}

// readObject reads the state object of key.
//
// An object whose own TTL (Config.ObjectTTL) has run out by the server's
// clock is absent even if a recovering server brought it back.
func (s *Store) readObject(ctx context.Context, key string) (object, error) {
	m, err := s.getLast(ctx, s.objPfx+key)
	if err != nil || m == nil {
		return object{}, err
	}
	o := object{seq: m.Sequence}
	if removal(m.Header) {
		return o, nil
	}
	if ttl, ok := parseTTL(m.Header.Get(natsjs.MsgTTLHeader)); ok {
		gone, err := s.ended(ctx, lockState{held: true, stored: m.Time, exact: true, ttl: ttl})
		if err != nil {
			return object{}, err
		}
		if gone {
			return o, nil
		}
	}
	o.v = m.Data
	if o.v == nil {
		o.v = []byte{}
	}
	return o, nil
}

// sent records the times of a publish about to be sent.
type sent struct {
	local  time.Time // this machine's clock: for Lease.ExpiresAt only
	server time.Time // the server's time by the estimate (zero without one): a lower bound of the stored time
}

func (s *Store) sendTimes() sent {
	est, _ := s.clock.estimate()
	return sent{local: time.Now(), server: est}
}

// state is the lease this store just wrote at seq. Its stored time is only
// a lower bound (not exact): enough to show it live, never that it ended.
func (t sent) state(seq uint64, rec record, token uint64, ttl time.Duration) lockState {
	return lockState{seq: seq, held: true, rec: rec, token: token, stored: t.server, ttl: msgTTL(ttl, rec),
		expires: t.local.Add(time.Duration(rec.TTLms) * time.Millisecond)}
}

// live reports whether st is a lease that has not ended by the server's
// clock; st must come from the server (exact). A lease found ended is
// replaced in the background (reap).
func (s *Store) live(ctx context.Context, key string, st lockState) (bool, error) {
	if !st.held {
		return false, nil
	}
	gone, err := s.ended(ctx, st)
	if err != nil {
		return false, err
	}
	if gone {
		s.background(func() {
			ctx, cancel := context.WithTimeout(s.bg, 5*time.Second)
			defer cancel()
			_ = s.reap(ctx, key, st)
		})
	}
	return !gone, nil
}

type objResult struct {
	o   object
	err error
}

// Acquire takes key for lockID with one compare-and-set publish, reading the
// state object in parallel. The object read is consistent with the grant:
// the object can only change while the lease subject is at a live holder's
// sequence, and the publish succeeds only if the subject was still at the
// free (or ended) sequence we expected, which it was since we learnt of it.
func (s *Store) Acquire(ctx context.Context, key, lockID string, opts store.AcquireOptions) (store.Grant, error) {
	if err := s.checkTTL(opts.TTL, opts.Delay); err != nil {
		return store.Grant{}, err
	}
	me := holderHash(lockID)
	// Without a hint, assume a never-used key (expected sequence 0): one
	// round trip for new keys, a re-read on mismatch.
	cur, _ := s.getHint(key)
	fresh, inFlight := false, false
	for attempt := 0; attempt < 6; attempt++ {
		if !fresh && (attempt > 0 || cur.held) {
			// A hint of a lease may be stale, and only a read gives the
			// server's stored time that shows whether it has ended.
			var err error
			if cur, err = s.readLock(ctx, key); err != nil {
				return store.Grant{}, err
			}
			fresh = true
		}
		alive, err := s.live(ctx, key, cur)
		if err != nil {
			return store.Grant{}, err
		}
		if alive {
			delayed, now, err := s.inDelay(ctx, key, cur)
			if err != nil {
				return store.Grant{}, err
			}
			if delayed {
				// now: the blocker, which may outlast cur's message.
				return store.Grant{}, &store.LockedError{Key: key, Lease: cur.ended(), Delayed: true, ExpiresIn: s.delayLeft(now)}
			}
			if !sameHolder(cur.rec.Holder, me) {
				return store.Grant{}, &store.LockedError{Key: key, Lease: cur.lease(), ExpiresIn: s.untilEnd(cur)}
			}
			// Idempotent retry: the same grant, with the state as it is.
			o, err := s.readObject(ctx, key)
			if err != nil {
				return store.Grant{}, err
			}
			again, err := s.readLock(ctx, key)
			if err != nil {
				return store.Grant{}, err
			}
			if again.seq != cur.seq {
				cur = again
				continue
			}
			return store.Grant{Lease: cur.lease(), Value: o.v}, nil
		}
		// Free, or a lease that has ended by the server's clock (which a
		// recovering server may have brought back): take it over.
		objc := make(chan objResult, 1)
		s.acquires.Add(1)
		if s.noObject(key, cur.seq) {
			s.skipped.Add(1)
			objc <- objResult{}
		} else {
			go func() {
				o, err := s.readObject(ctx, key)
				objc <- objResult{o, err}
			}()
		}
		rec := record{Holder: me, Owner: opts.Owner, TTLms: opts.TTL.Milliseconds(), Dms: delayMs(opts.Delay)}
		m := s.leaseMsg(key, rec, opts.TTL, cur.seq)
		if cur.held {
			// cur has ended (not live): this take-over is its expiry.
			m.Header.Set(endedHeader, strconv.FormatUint(cur.token, 10))
		}
		sent := s.sendTimes()
		ack, err := s.publish(ctx, m)
		if errors.Is(err, errWrongSeq) {
			<-objc
			fresh = false
			if inFlight = errors.Is(err, errInFlight); inFlight {
				if err := backoff(ctx, attempt); err != nil {
					return store.Grant{}, err
				}
			}
			continue
		}
		if err != nil {
			<-objc
			return store.Grant{}, err
		}
		st := sent.state(ack.Sequence, rec, ack.Sequence, opts.TTL)
		s.setHint(key, st)
		o := <-objc
		if o.err != nil {
			// We hold the lock but could not read its state: give it back.
			_ = s.releaseAfterFailure(key, st)
			return store.Grant{}, o.err
		}
		return store.Grant{Lease: st.lease(), Value: o.o.v}, nil
	}
	if inFlight {
		return store.Grant{}, fmt.Errorf("%w: %s: writes kept being in flight on the lease", store.ErrUnavailable, key)
	}
	// Every compare-and-set after a fresh read lost to another writer of
	// the lease subject, and only an acquire can move a free lease: the lock
	// was held by someone else in between, which is the answer.
	return store.Grant{}, &store.LockedError{Key: key, Lease: cur.lease()}
}

// delayMs is a lock-delay in whole milliseconds, rounded up.
func delayMs(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// inDelay reports whether st, a lease message live by the server's clock
// (read from the server), is in its lock-delay: a blocker, or a lease whose
// holder's part has ended. Such a lease is replaced by a blocker first (see
// block), so that no write of its holder lands from then on. It also
// returns what keeps the key: the blocker written, or st.
func (s *Store) inDelay(ctx context.Context, key string, st lockState) (bool, lockState, error) {
	if st.blocker() {
		return true, st, nil
	}
	if st.rec.Dms <= 0 {
		return false, st, nil
	}
	gone, err := s.holderEnded(ctx, st)
	if err != nil || !gone {
		return false, st, err
	}
	blk, err := s.block(ctx, key, st)
	if err != nil && !errors.Is(err, errWrongSeq) {
		return false, st, err
	}
	if err != nil || !blk.blocker() {
		blk = st
	}
	return true, blk, nil
}

// block replaces the lease st, whose holder's part has ended, with a
// blocker for the rest of its lock-delay (with a margin for the clock
// estimate; rounded up to whole seconds), and returns the subject's state
// read after it.
func (s *Store) block(ctx context.Context, key string, st lockState) (lockState, error) {
	_, err := s.publish(ctx, s.blockerMsg(key, st, s.delayLeft(st)+250*time.Millisecond, reasonExpired))
	if err != nil {
		return lockState{}, err
	}
	return s.readLock(ctx, key) // the hint, with the server's stored time
}

func (s *Store) releaseAfterFailure(key string, st lockState) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := s.publish(ctx, s.releaseMsg(key, st))
	return err
}

// held returns the live lease on key that me holds (me nil: whoever holds
// it), trying the hint first when trustHint is set, or ErrNotHeld.
func (s *Store) held(ctx context.Context, key string, me []byte, trustHint bool) (lockState, error) {
	holds := func(st lockState) bool {
		return st.held && !st.blocker() && (me == nil || sameHolder(st.rec.Holder, me))
	}
	if trustHint {
		if h, ok := s.getHint(key); ok && holds(h) && s.surelyHeld(h) {
			return h, nil
		}
	}
	st, err := s.readLock(ctx, key)
	if err != nil {
		return lockState{}, err
	}
	if !holds(st) {
		return lockState{}, store.ErrNotHeld
	}
	alive, err := s.live(ctx, key, st)
	if err != nil {
		return lockState{}, err
	}
	if !alive {
		return lockState{}, store.ErrNotHeld
	}
	if st.rec.Dms > 0 {
		// In the lock-delay the message is there but the lease is not.
		gone, err := s.holderEnded(ctx, st)
		if err != nil {
			return lockState{}, err
		}
		if gone {
			return lockState{}, store.ErrNotHeld
		}
	}
	return st, nil
}

// casHeld runs op against the lease lockID holds, re-reading when the
// compare-and-set fails: only a read that shows the lease gone or another
// holder's means ErrNotHeld. A lease subject that keeps moving (its holder
// refreshing, or writes in flight on a replicated stream) while lockID
// still holds it makes the outcome unknown.
func (s *Store) casHeld(ctx context.Context, key, lockID string, op func(lockState) error) error {
	return s.casLease(ctx, key, holderHash(lockID), op)
}

// casLease is casHeld for the holder hash me, or for whoever holds key
// when me is nil (Force).
func (s *Store) casLease(ctx context.Context, key string, me []byte, op func(lockState) error) error {
	for attempt := 0; attempt < 8; attempt++ {
		st, err := s.held(ctx, key, me, attempt == 0)
		if err != nil {
			return err
		}
		err = op(st)
		if errors.Is(err, errInFlight) {
			if err := backoff(ctx, attempt); err != nil {
				return err
			}
		}
		if errors.Is(err, errWrongSeq) {
			continue
		}
		return err
	}
	return fmt.Errorf("%w: %s: the lease kept changing under the compare-and-set", store.ErrUnavailable, key)
}

// backoff waits before retrying a compare-and-set that found a write in
// flight: 1, 2, 4 ... 32 ms.
func backoff(ctx context.Context, attempt int) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Millisecond << min(attempt, 5)):
		return nil
	}
}

// Refresh renews the lease with a new TTL, keeping its token.
func (s *Store) Refresh(ctx context.Context, key, lockID string, ttl time.Duration) (store.Lease, error) {
	if err := s.checkTTL(ttl, 0); err != nil {
		return store.Lease{}, err
	}
	var out store.Lease
	err := s.casHeld(ctx, key, lockID, func(st lockState) error {
		if err := s.checkTTL(ttl, time.Duration(st.rec.Dms)*time.Millisecond); err != nil {
			return err
		}
		rec := st.rec
		rec.Token = st.token
		rec.TTLms = ttl.Milliseconds()
		sent := s.sendTimes()
		ack, err := s.publish(ctx, s.leaseMsg(key, rec, ttl, st.seq))
		if err != nil {
			return err
		}
		ns := sent.state(ack.Sequence, rec, st.token, ttl)
		s.setHint(key, ns)
		out = ns.lease()
		return nil
	})
	return out, err
}

// Release purges the lease and applies u, atomically.
func (s *Store) Release(ctx context.Context, key, lockID string, u store.Update) error {
	if err := s.checkValue(u); err != nil {
		return err
	}
	return s.casHeld(ctx, key, lockID, func(st lockState) error {
		var ack pubAck
		var err error
		if u.Op == store.Keep {
			ack, err = s.publish(ctx, s.releaseMsg(key, st))
		} else {
			ack, err = s.batch(ctx, s.objectMsg(key, u), s.releaseMsg(key, st))
		}
		if err == nil {
			s.setHint(key, lockState{seq: ack.Sequence, rec: st.rec, token: st.token})
		}
		return err
	})
}

// Write applies u to the state object, guarded by the lease's sequence.
func (s *Store) Write(ctx context.Context, key, lockID string, u store.Update) error {
	if err := s.checkValue(u); err != nil {
		return err
	}
	if u.Op == store.Keep {
		_, err := s.held(ctx, key, holderHash(lockID), false)
		return err
	}
	return s.casHeld(ctx, key, lockID, func(st lockState) error {
		m := s.objectMsg(key, u)
		m.Header.Set(natsjs.ExpectedLastSubjSeqSubjHeader, s.lockPfx+key)
		m.Header.Set(natsjs.ExpectedLastSubjSeqHeader, strconv.FormatUint(st.seq, 10))
		_, err := s.publish(ctx, m)
		return err
	})
}

// Get reads the lease and the state object as they were at one moment.
//
// The lease is read, then the object. If the object's last message is older
// than the lease's, the object was already so when the lease was read: the
// two describe the moment of the lease read. Otherwise the lease is read
// again; unchanged, it was so throughout the object read, and the two
// describe the moment of the object read. If it changed, try again.
func (s *Store) Get(ctx context.Context, key string) (store.Info, error) {
	for attempt := 0; attempt < 10; attempt++ {
		st, err := s.readLock(ctx, key)
		if err != nil {
			return store.Info{}, err
		}
		o, err := s.readObject(ctx, key)
		if err != nil {
			return store.Info{}, err
		}
		if o.seq > st.seq {
			again, err := s.readLock(ctx, key)
			if err != nil {
				return store.Info{}, err
			}
			if again.seq != st.seq {
				continue
			}
		}
		if st.held {
			gone, err := s.ended(ctx, st)
			if err != nil {
				return store.Info{}, err
			}
			if !gone && st.rec.Dms > 0 && !st.blocker() {
				// A lease in its lock-delay becomes a blocker before
				// it is reported ended (as with reap below).
				delayed, _, err := s.inDelay(ctx, key, st)
				if err != nil {
					return store.Info{}, err
				}
				if delayed {
					continue
				}
			}
			if !gone && st.blocker() {
				return store.Info{Lease: st.ended(), Value: o.v, Delay: s.delayLeft(st)}, nil
			}
			if gone {
				// The lease has ended by the server's clock, but its
				// message is still there (the server's expiry pass
				// runs every 250 ms, or the server brought it back),
				// and a write sent before the end may still land.
				// Replace it before saying "unlocked", then read again:
				// no write of the old holder lands after that.
				if err := s.reap(ctx, key, st); err != nil && !errors.Is(err, errWrongSeq) {
					return store.Info{}, err
				}
				continue
			}
		}
		return store.Info{Locked: st.held, Lease: st.lease(), Value: o.v}, nil
	}
	return store.Info{}, fmt.Errorf("%w: get %s: the key kept changing while it was read", store.ErrUnavailable, key)
}

var _ store.Transferrer = (*Store)(nil)

// Transfer replaces fromID's lease by a new one for toID with one
// compare-and-set publish (an atomic batch with the state change when u
// writes), so the key is never free in between. The new lease's token is
// its own sequence.
//
// With Keep, the state handed over is read after the transfer: until then
// fromID, who still holds the key, may write it; after it, only toID may,
// and toID has not been told yet.
func (s *Store) Transfer(ctx context.Context, key, fromID string, u store.Update, toID string, opts store.AcquireOptions) (store.Grant, error) {
	if err := s.checkTTL(opts.TTL, opts.Delay); err != nil {
		return store.Grant{}, err
	}
	if err := s.checkValue(u); err != nil {
		return store.Grant{}, err
	}
	var g store.Grant
	err := s.casHeld(ctx, key, fromID, func(st lockState) error {
		rec := record{Holder: holderHash(toID), Owner: opts.Owner, TTLms: opts.TTL.Milliseconds(), Dms: delayMs(opts.Delay)}
		lease := s.leaseMsg(key, rec, opts.TTL, st.seq)
		sent := s.sendTimes()
		var (
			ack pubAck
			err error
			val []byte
		)
		switch u.Op {
		case store.Keep:
			ack, err = s.publish(ctx, lease)
		case store.Set:
			ack, err = s.batch(ctx, s.objectMsg(key, u), lease)
			val = u.Value
		case store.Delete:
			ack, err = s.batch(ctx, s.objectMsg(key, u), lease)
		}
		if err != nil {
			return err
		}
		ns := sent.state(ack.Sequence, rec, ack.Sequence, opts.TTL)
		s.setHint(key, ns)
		if u.Op == store.Keep {
			o, err := s.readObject(ctx, key)
			if err != nil {
				return fmt.Errorf("%w (the lock was handed over, its state could not be read)", err)
			}
			val = o.v
		}
		g = store.Grant{Lease: ns.lease(), Value: val}
		return nil
	})
	return g, err
}
