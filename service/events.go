package service

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// Wake-ups. Two kinds, two handlers: onRelease (a holder released) and
// onExpiry (a lease ran out). Where they come from depends on the store:
//
//   - A store that observes every lock change (store.Notifier, JetStream)
//     reports releases and expiries itself, including releases whose
//     answer was lost and those made while this instance was disconnected
//     from NATS; the NATS events of other instances are then not needed
//     for waking. This instance publishes the expired events for what its
//     store observed.
//   - Otherwise (Redis) wake-ups come from the released and expired events
//     of the instances, from this instance's own releases, and from a
//     timer per lease (watchLeaseLocked): set for every lease this instance
//     granted or refreshed and for the holder a parked request found, it
//     fires at the lease's end; if the store then shows the lease gone
//     without a release seen, the instance publishes its expired event and
//     wakes the key.

// onEvent handles the released and expired events of other instances.
// Anyone who may publish on the event subjects can forge them, so an event
// is only ever a wake-up: it makes the parked requests look at the store,
// which alone decides. A released event never drops the timer at the end
// of the lease that requests parked here wait for (a forged one would
// leave them parked until their wait_ms); without parked requests it drops
// the timer, so that no expired event is published for a released lease.
func (s *Service) onEvent(m *nats.Msg) {
	if m.Header.Get(api.InstanceHeader) == s.id {
		return
	}
	if _, ok := s.st.(store.Notifier); ok {
		return // the store reports every release and expiry
	}
	rest := m.Subject[len(s.cfg.Prefix)+1:]
	if key, ok := cutPrefix(rest, api.EventExpired+"."); ok {
		s.onExpiry(key)
		return
	}
	if key, ok := cutPrefix(rest, api.EventReleased+"."); ok {
		s.mu.Lock()
		if ks := s.keys[key]; ks != nil && ks.q.len() > 0 {
			if lw := s.watches[key]; lw != nil {
				lw.released = true
			}
		} else {
			s.unwatchLeaseLocked(key)
		}
		s.mu.Unlock()
		if m.Header.Get(api.HandedOffHeader) == "" { // handed off: still locked
			s.onRelease(key)
		}
	}
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) > len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return "", false
}

// onStoreEvent handles the releases and expiries the store observed.
func (s *Service) onStoreEvent(e store.Event) {
	if s.stopping.Load() {
		return
	}
	switch e.Kind {
	case store.Released:
		s.onRelease(e.Key)
	case store.Expired:
		s.stats.expiredEvents.Add(1)
		s.publishEvent(api.EventExpired, e.Key, e.Token)
		s.onExpiry(e.Key)
	}
}

// onRelease wakes the requests parked on key after a release.
func (s *Service) onRelease(key string) {
	s.mu.Lock()
	if ks := s.keys[key]; ks != nil {
		ks.expiring = 0
		s.wakeLocked(key, ks)
	}
	s.mu.Unlock()
}

// onExpiry wakes the requests parked on key after a lease ran out.
func (s *Service) onExpiry(key string) {
	s.mu.Lock()
	if ks := s.keys[key]; ks != nil {
		s.stats.expiryWakeups.Add(1)
		s.wakeLocked(key, ks)
	}
	s.mu.Unlock()
}

// released announces a release made through this instance and, for a store
// without Notifier, wakes the requests parked here.
func (s *Service) released(key string) {
	s.publishEvent(api.EventReleased, key, 0)
	if _, ok := s.st.(store.Notifier); !ok {
		s.mu.Lock()
		s.unwatchLeaseLocked(key)
		s.mu.Unlock()
		s.onRelease(key)
	}
}

// leaseWatch is the timer set for the end of a lease (stores without
// Notifier).
type leaseWatch struct {
	token uint64
	timer *time.Timer
	// released: a released event named the key since the timer was set, so
	// the lease may have been released rather than expired; no expired
	// event is published for it unless the store still shows it held.
	released bool
}

// watchLeaseLocked sets the timer for the lease with token on key, ending
// in d (d 0: unknown end). Stores with Notifier report lease ends, but
// their server may act on an end late (JetStream's expiry scan runs every
// 250 ms, later in a busy bucket): for them the timer is set only while
// requests are parked on the key, whose attempt at the end the store
// decides by its server's clock.
func (s *Service) watchLeaseLocked(key string, token uint64, d time.Duration) {
	if d <= 0 || s.stopping.Load() {
		return
	}
	if _, ok := s.st.(store.Notifier); ok {
		if ks := s.keys[key]; ks == nil || ks.q.len() == 0 {
			return
		}
	}
	if lw := s.watches[key]; lw != nil {
		lw.timer.Stop()
	}
	lw := &leaseWatch{token: token}
	lw.timer = time.AfterFunc(d+2*time.Millisecond, func() { s.leaseDue(key, lw) })
	s.watches[key] = lw
}

// unwatchLeaseLocked drops the timer of key's lease: it was released.
func (s *Service) unwatchLeaseLocked(key string) {
	if lw := s.watches[key]; lw != nil {
		lw.timer.Stop()
		delete(s.watches, key)
	}
}

// leaseDue runs at the end of a watched lease. With requests parked on the
// key it wakes them (their attempt tells whether the lease ended);
// otherwise it reads the key, and publishes the expired event when the
// lease is gone and no release was seen meanwhile.
func (s *Service) leaseDue(key string, lw *leaseWatch) {
	s.mu.Lock()
	if s.watches[key] != lw || s.stopping.Load() {
		s.mu.Unlock()
		return
	}
	if ks := s.keys[key]; ks != nil && ks.q.len() > 0 {
		delete(s.watches, key)
		if !lw.released {
			if _, ok := s.st.(store.Notifier); !ok {
				ks.expiring = lw.token // a Notifier store reports the expiry itself
			}
			s.stats.expiryWakeups.Add(1)
		}
		s.wakeLocked(key, ks)
		s.mu.Unlock()
		return
	}
	if _, ok := s.st.(store.Notifier); ok {
		delete(s.watches, key) // nothing parked here; the store reports the end
		s.mu.Unlock()
		return
	}
	s.ops.Add(1)
	s.mu.Unlock()
	defer s.ops.Done()

	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.StoreTimeout)
	info, err := s.st.Get(ctx, key)
	cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watches[key] != lw {
		return // released (or re-granted) meanwhile
	}
	switch {
	case err != nil:
		s.countStoreError(err)
		lw.timer.Reset(time.Second) // look again
	case info.Locked && info.Lease.Token == lw.token:
		// Refreshed, or never released (a released event was false).
		lw.released = false
		lw.timer.Reset(remaining(info.Lease) + 2*time.Millisecond)
	case !info.Locked && info.Delay > 0 && info.Lease.Token == lw.token:
		// Expired, not released (a release has no lock-delay): announced
		// when the lock-delay ends.
		lw.released = false
		lw.timer.Reset(info.Delay + 2*time.Millisecond)
	case lw.released:
		delete(s.watches, key)
	default:
		delete(s.watches, key)
		s.stats.expiredEvents.Add(1)
		go s.publishEvent(api.EventExpired, key, lw.token)
	}
}
