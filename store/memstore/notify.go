package memstore

import "github.com/lockservice/lockservice/store"

// Store is one client of a Server, like one service instance's connection
// to a real backend. Create it with New; it is safe for concurrent use.
type Store struct {
	srv *Server

	// Guarded by srv.mu.
	closed  bool
	fn      func(store.Event)
	events  []store.Event // queued for fn
	wake    chan struct{} // buffered 1: events were queued
	stop    chan struct{} // closed to end delivery
	stopped chan struct{} // closed when delivery has ended
}

var (
	_ store.Store       = (*Store)(nil)
	_ store.Notifier    = (*Store)(nil)
	_ store.Transferrer = (*Store)(nil)
)

// New returns a store on srv.
func New(srv *Server) *Store {
	return &Store{srv: srv}
}

// Notify registers fn for every release and expiry on the server, from any
// of its stores (Transfer reports none: see the package comment). fn is
// called from one goroutine of this store, in the order the server applied
// the changes, never with the server's mutex held; it must not block and
// must not call Close. Notify may be called once; a later call replaces fn.
// It does nothing on a closed store.
func (s *Store) Notify(fn func(store.Event)) {
	srv := s.srv
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if s.closed || srv.closed {
		return
	}
	s.fn = fn
	if s.stop != nil {
		return
	}
	s.wake = make(chan struct{}, 1)
	s.stop = make(chan struct{})
	s.stopped = make(chan struct{})
	srv.subs[s] = struct{}{}
	go s.deliver()
}

// deliver calls fn for the queued events until the store or the server is
// closed.
func (s *Store) deliver() {
	defer close(s.stopped)
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
		}
		s.srv.mu.Lock()
		evs, fn := s.events, s.fn
		s.events = nil
		s.srv.mu.Unlock()
		for _, ev := range evs {
			select {
			case <-s.stop:
				return
			default:
			}
			fn(ev)
		}
	}
}

// emitLocked queues ev for every store with a Notify function.
func (srv *Server) emitLocked(ev store.Event) {
	for s := range srv.subs {
		s.events = append(s.events, ev)
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// stopLocked ends s's event delivery and returns a channel closed once it
// has ended.
func (s *Store) stopLocked() chan struct{} {
	s.closed = true
	if s.stop == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	if _, ok := s.srv.subs[s]; ok {
		delete(s.srv.subs, s)
		close(s.stop)
		s.events = nil
	}
	return s.stopped
}

// Close ends this store's event delivery, waiting for a notify function
// that is running to return; its operations then return ErrClosed. The
// locks it took stay on the server. Close always returns nil.
func (s *Store) Close() error {
	s.srv.mu.Lock()
	stopped := s.stopLocked()
	s.srv.mu.Unlock()
	<-stopped
	return nil
}
