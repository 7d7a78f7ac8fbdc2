package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/store"
)

// The watcher is one ordered consumer on the bucket (headers only, so state
// objects are never copied to it). It starts with the last message of every
// subject (the current leases and objects) and then follows every new one
// in stream order. From it the store keeps a hint per lease subject, the
// set of keys that have a state object, and reports releases and expiries.
//
// The set of keys with an object is trusted (see noObject) only while the
// watcher provably saw one unbroken history of the stream: from a start
// that caught up with the stream, with no disconnection and no reset of the
// consumer since. Any sign of a break (the connection dropped, the consumer
// reported an error or was recreated) distrusts it at once and rebuilds the
// watcher from the stream as it is now. nats.go's own recovery of an
// ordered consumer resumes after the last sequence it delivered, which after
// an R1 server lost the stream's tail is beyond the stream's end: it would
// silently skip the sequences that get reused.

// watchState is the watcher's bookkeeping, guarded by Store.mu.
type watchState struct {
	gen      uint64              // generation of the current consumer; callbacks of older ones are ignored
	startSeq uint64              // the stream's last sequence when the current consumer started
	pos      uint64              // last stream sequence the current consumer applied
	oldPos   uint64              // pos of the previous consumer (events above it are reported even in the initial replay)
	caughtUp bool                // the current consumer delivered the stream as it was at its start
	broken   bool                // a break was seen since the current consumer started
	objs     map[string]struct{} // keys whose state object existed at pos
	objsFull bool                // objs outgrew objLimit: not kept
	// before holds the previous consumer's hints while the current one
	// replays the stream: they decide which replayed releases are news.
	before  map[string]lockState
	cur     *watcher      // the current consumer, nil while none runs
	rebuild chan struct{} // signals the rebuilder; buffered 1
}

// startWatch creates a watcher consumer from the stream as it is now and
// makes it current. The previous one, if any, is stopped.
func (s *Store) startWatch(ctx context.Context) error {
	s.mu.Lock()
	str := s.str
	s.mu.Unlock()
	info, err := str.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	s.mu.Lock()
	s.w.gen++
	gen := s.w.gen
	old := s.w.cur
	s.w.cur = nil
	// The highest position any earlier consumer reached: a rebuild that
	// failed, or was replaced before it caught up, left a lower one.
	s.w.oldPos = max(s.w.oldPos, s.w.pos)
	if s.w.gen == 1 {
		s.w.oldPos = info.State.LastSeq // no events for what was there before New
	}
	s.w.startSeq = info.State.LastSeq
	s.w.pos = 0
	s.w.caughtUp = false
	s.w.broken = false
	s.w.objs = make(map[string]struct{})
	s.w.objsFull = false
	// Hints of the previous history may carry sequences the stream has
	// reused since: start afresh (suspect may have done so already).
	if s.w.before == nil {
		s.w.before = s.hints
	}
	s.hints = make(map[string]lockState)
	s.mu.Unlock()
	s.stopWatcherAsync(old)
	cons, err := s.js.OrderedConsumer(ctx, s.stream, natsjs.OrderedConsumerConfig{
		FilterSubjects: []string{s.lockPfx + ">", s.objPfx + ">"},
		DeliverPolicy:  natsjs.DeliverLastPerSubjectPolicy,
		HeadersOnly:    true,
	})
	if err != nil {
		return fmt.Errorf("ordered consumer: %w", err)
	}
	wt := &watcher{first: cons.CachedInfo().Name}
	wt.name = wt.first
	cc, err := cons.Consume(func(m natsjs.Msg) { s.observe(gen, &wt.name, m) },
		natsjs.ConsumeErrHandler(func(_ natsjs.ConsumeContext, err error) {
			if !errors.Is(err, natsjs.ErrConsumerLeadershipChanged) {
				s.suspect(gen)
			}
		}),
		// The consumer may live on another server of a cluster than the
		// connection: its loss shows only as missing heartbeats (two).
		natsjs.PullHeartbeat(watchHeartbeat))
	if err != nil {
		s.deleteConsumers(wt.first)
		return fmt.Errorf("consume: %w", err)
	}
	wt.cc = cc
	pending := cons.CachedInfo().NumPending
	s.mu.Lock()
	if s.w.gen != gen {
		s.mu.Unlock()
		s.stopWatcherAsync(wt)
		return nil
	}
	s.w.cur = wt
	if pending == 0 {
		s.w.caughtUp = true
		s.w.before = nil
	}
	s.mu.Unlock()
	return nil
}

// watchHeartbeat is the watcher consumer's idle heartbeat: a consumer on a
// server that died is noticed after two missed ones.
const watchHeartbeat = 500 * time.Millisecond

// watcher is one consumer of the watcher: its consume context and the
// names nats.go gave it (it recreates the consumer after gaps).
type watcher struct {
	cc    natsjs.ConsumeContext
	first string
	name  string // the latest, guarded by Store.mu (observe sets it)
}

// stopWatcherAsync stops w and deletes its consumers on the server
// (stopping an ordered consumer leaves them there until their inactivity
// threshold), in the background: while nats.go is recreating a consumer
// whose server died, Stop waits for it (10 s and more), and a rebuild must
// not.
func (s *Store) stopWatcherAsync(w *watcher) {
	if w == nil {
		return
	}
	s.stops.Add(1)
	go func() {
		defer s.stops.Done()
		s.stopWatcher(w)
	}()
}

func (s *Store) stopWatcher(w *watcher) {
	w.cc.Stop()
	s.mu.Lock()
	names := []string{w.first}
	if w.name != w.first && w.name != "" {
		names = append(names, w.name)
	}
	s.mu.Unlock()
	s.deleteConsumers(names...)
}

func (s *Store) deleteConsumers(names ...string) {
	if !s.nc.IsConnected() {
		return // the server drops them after their inactivity threshold
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, n := range names {
		_ = s.js.DeleteConsumer(ctx, s.stream, n)
	}
}

// suspect distrusts the watcher of generation gen (0: whichever is current)
// and asks for a rebuild. The hints go at once: after a break they may
// describe a history the stream has lost, whose sequences it reuses, and a
// compare-and-set against such a sequence would succeed on someone else's
// lease. Until the rebuild, operations read before they write.
func (s *Store) suspect(gen uint64) {
	s.mu.Lock()
	if gen != 0 && gen != s.w.gen {
		s.mu.Unlock()
		return
	}
	s.breakLocked()
	s.mu.Unlock()
}

// breakLocked marks the current watcher broken, drops the hints (keeping
// them as the previous history's for the rebuild's replay) and asks for a
// rebuild.
func (s *Store) breakLocked() {
	s.w.broken = true
	if s.w.before == nil {
		s.w.before = s.hints
	}
	s.hints = make(map[string]lockState)
	select {
	case s.w.rebuild <- struct{}{}:
	default:
	}
}

// rebuilder rebuilds the watcher after a break, once the connection is up,
// retrying until it succeeds or the store is closed. It also turns
// connection drops into breaks.
func (s *Store) rebuilder(status chan nats.Status, rebuild chan struct{}) {
	for {
		select {
		case <-s.done:
			return
		case st, ok := <-status:
			if !ok {
				return
			}
			if st == nats.DISCONNECTED || st == nats.RECONNECTING || st == nats.CONNECTED {
				s.suspect(0)
			}
			continue
		case <-rebuild:
		}
		for try := 0; ; try++ {
			if s.nc.IsConnected() {
				// Short tries: a request sent just before a drop waits
				// its whole timeout, and on a cluster the new consumer
				// may be placed on a server that is down (then the try
				// times out and the next one places it again).
				ctx, cancel := context.WithTimeout(s.bg, time.Second)
				err := s.startWatch(ctx)
				cancel()
				if err == nil {
					break
				}
				s.log.Warn("rebuilding the bucket watcher failed; retrying", "bucket", s.cfg.Bucket, "err", err)
			}
			select {
			case <-s.done:
				return
			case <-time.After(min(time.Duration(try+1)*100*time.Millisecond, 2*time.Second)):
			}
		}
	}
}

// observe is the watcher's callback. Messages arrive in stream order,
// headers only.
func (s *Store) observe(gen uint64, consumer *string, m natsjs.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	s.mu.Lock()
	if gen != s.w.gen {
		s.mu.Unlock()
		return
	}
	if *consumer != md.Consumer {
		if *consumer != "" {
			// nats.go recreated the ordered consumer: a break.
			s.breakLocked()
		}
		*consumer = md.Consumer
	}
	seq := md.Sequence.Stream
	ev, report := s.applyLocked(seq, m.Subject(), m.Headers(), md.Timestamp)
	if seq > s.w.pos {
		s.w.pos = seq
	}
	if md.NumPending == 0 || seq >= s.w.startSeq {
		s.w.caughtUp = true
		if !s.w.broken {
			s.w.before = nil
		}
	}
	fn := s.notify
	s.mu.Unlock()
	if report && fn != nil {
		fn(ev)
	}
}

// applyLocked applies one watched message and returns the event it means,
// if any.
func (s *Store) applyLocked(seq uint64, subj string, hdr nats.Header, stored time.Time) (store.Event, bool) {
	switch {
	case strings.HasPrefix(subj, s.objPfx):
		key := subj[len(s.objPfx):]
		switch {
		case removal(hdr) && seq > s.w.pos:
			// Only in order: a removal older than what was applied may
			// be followed by a newer write already applied.
			delete(s.w.objs, key)
		case removal(hdr):
		case s.w.objsFull:
		case len(s.w.objs) >= objLimit:
			s.w.objsFull, s.w.objs = true, nil
		default:
			s.w.objs[key] = struct{}{}
		}
		return store.Event{}, false
	case !strings.HasPrefix(subj, s.lockPfx):
		return store.Event{}, false
	}
	key := subj[len(s.lockPfx):]
	st := parse(seq, hdr, stored, s.longest())
	st.watched = true
	if st.overlong {
		// Maybe a newer instance's lease after the bucket's marker TTL
		// was raised: settle it with a read (which re-reads the marker
		// TTL) instead of taking it as a release now.
		st.corrupt, st.held = "", true
		st.exact = false // never reaped on this view
		s.setHintLocked(key, st)
		s.background(func() {
			ctx, cancel := context.WithTimeout(s.bg, 5*time.Second)
			defer cancel()
			st, err := s.readLock(ctx, key)
			if err != nil || st.seq != seq || st.corrupt == "" {
				return // held after all, or moved on: its own message tells
			}
			s.log.Warn("lease subject holds a record lockservice did not write; treated as free (an acquire replaces it)",
				"key", key, "seq", seq, "why", st.corrupt)
			s.mu.Lock()
			fn := s.notify
			s.mu.Unlock()
			if fn != nil {
				fn(store.Event{Key: key, Kind: store.Released})
			}
		})
		return store.Event{}, false
	}
	if st.corrupt != "" {
		s.log.Warn("lease subject holds a record lockservice did not write; treated as free (an acquire replaces it)",
			"key", key, "seq", seq, "why", st.corrupt)
	}
	prev, had := s.hints[key]
	replay := seq <= s.w.startSeq
	if !had && replay {
		prev, had = s.w.before[key]
	}
	s.setHintLocked(key, st)
	old := replay && seq <= s.w.oldPos
	if st.held && !(st.blocker() && hdr.Get(reasonHeader) == reasonForced) {
		// A lease, or a blocker after an expiry (reported at its end).
		// An acquire that took over a lease (or blocker) after its end
		// by the server's clock, before the server removed it (the
		// service acts at the end; the expiry scan may be late), says
		// so (endedHeader): that is its expiry. Not judged from the
		// previous hint, which may already be this very message (the
		// acquire's own, set when its publish was acknowledged), nor
		// from stored times (a hand-over checked before the end may
		// land after it).
		if tok, ok := endedToken(hdr, seq); ok && !old {
			return store.Event{Key: key, Kind: store.Expired, Token: tok}, true
		}
		return store.Event{}, false
	}
	if old && !(had && prev.held && prev.seq != seq) {
		// Known before this watcher started: no news, unless the key
		// was held by what the previous watcher saw (the stream went
		// back and reused the sequence).
		return store.Event{}, false
	}
	ev := store.Event{Key: key, Kind: store.Released, Token: st.token}
	if expiredMarker(hdr) {
		ev.Kind = store.Expired
		// A reap's marker names the lease it ended; the server's names
		// none: it removed the lease message the watcher applied last.
		// The hint may be newer than that (this store's own read or
		// acquire after the marker), so only an older one tells.
		switch {
		case ev.Token != 0:
		case had && prev.watchedLease != 0:
			ev.Token = prev.watchedLease
		case had && prev.held && prev.seq < seq:
			ev.Token = prev.token
		}
	}
	return ev, true
}

// noObject reports whether key certainly has no state object, given that
// the lease subject is free at sequence leaseSeq (a release or expiry marker)
// and an acquire is about to compare-and-set against it.
//
// Any state object that exists when that compare-and-set succeeds was written
// before leaseSeq: objects are written only by a holder (guarded by the lease
// subject being at the holder's sequence) or in one atomic batch before a
// release or transfer message, and the lease subject has moved on to the free
// message at leaseSeq since. The watcher applies messages in stream order, so
// once it has applied leaseSeq it has seen that write, and the key would be
// in objs. leaseSeq 0 (no lease message) proves nothing, and neither does a
// watcher that has not reached leaseSeq, one that has not caught up with the
// stream since it started, or one that saw a break since.
//
// The hint for key must be the current watcher's own view of that free
// message (watched), not one the store set from its own publish or read.
func (s *Store) noObject(key string, leaseSeq uint64) bool {
	if leaseSeq == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &s.w
	h, ok := s.hints[key]
	if w.broken || !w.caughtUp || w.objsFull || w.pos < leaseSeq || !ok || h.seq != leaseSeq || !h.watched || h.held || h.corrupt != "" {
		return false
	}
	_, has := w.objs[key]
	return !has
}

func (s *Store) setHintLocked(key string, st lockState) {
	if st.watched {
		st.watchedLease = 0
		if st.held {
			st.watchedLease = st.token
		}
	}
	if prev, ok := s.hints[key]; ok {
		if !st.watched {
			st.watchedLease = prev.watchedLease
		}
		if prev.seq > st.seq {
			if st.watched {
				// A read or publish got ahead of the watcher: the hint
				// stays, with what the watcher has now applied.
				prev.watchedLease = st.watchedLease
				s.hints[key] = prev
			}
			return
		}
		if prev.seq == st.seq && prev.watched {
			st.watched = true // the same message, seen by the watcher too
		}
	}
	if len(s.hints) >= hintLimit {
		for k := range s.hints { // drop an arbitrary entry; hints are only hints
			delete(s.hints, k)
			break
		}
	}
	s.hints[key] = st
}

func (s *Store) setHint(key string, st lockState) {
	s.mu.Lock()
	s.setHintLocked(key, st)
	s.mu.Unlock()
}

// getHint returns the hint for key, none while the watcher is broken.
func (s *Store) getHint(key string) (lockState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w.broken {
		return lockState{}, false
	}
	h, ok := s.hints[key]
	return h, ok
}
