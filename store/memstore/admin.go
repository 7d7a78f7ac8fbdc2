package memstore

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/lockservice/lockservice/store"
)

var _ store.Admin = (*Store)(nil)

// List returns the live leases (by the server's clock) of the keys that
// start with prefix, sorted by key: at most limit of them, those after
// cursor, which is the last key of the previous page. The next cursor is ""
// when no live lease is left after the page. It costs O(n log n) in the
// keys the server ever saw. It returns store.ErrInvalid for a limit below 1,
// ErrClosed after Close, and ctx's error when ctx is done.
func (s *Store) List(ctx context.Context, prefix, cursor string, limit int) ([]store.Held, string, error) {
	if limit < 1 {
		return nil, "", fmt.Errorf("%w: limit must be at least 1, got %d", store.ErrInvalid, limit)
	}
	now, err := s.enter(ctx)
	if err != nil {
		return nil, "", err
	}
	defer s.srv.mu.Unlock()
	var keys []string
	for key := range s.srv.keys {
		if key > cursor && strings.HasPrefix(key, prefix) {
			if e := s.srv.find(key, now); e.lease != nil {
				keys = append(keys, key)
			}
		}
	}
	slices.Sort(keys)
	next := ""
	if len(keys) > limit {
		keys = keys[:limit]
		next = keys[limit-1]
	}
	out := make([]store.Held, len(keys))
	for i, key := range keys {
		out[i] = store.Held{Key: key, Lease: s.srv.keys[key].lease.public()}
	}
	return out, next, nil
}

// Force ends the live lease of key, whoever holds it, keeping the state
// object, and reports a Released event. It returns the lease it ended,
// store.ErrNotHeld when key has no live lease, and otherwise the errors of
// Get.
func (s *Store) Force(ctx context.Context, key string) (store.Lease, error) {
	if err := checkKey(key); err != nil {
		return store.Lease{}, err
	}
	now, err := s.enter(ctx)
	if err != nil {
		return store.Lease{}, err
	}
	defer s.srv.mu.Unlock()
	e := s.srv.find(key, now)
	if e == nil || e.lease == nil {
		return store.Lease{}, store.ErrNotHeld
	}
	l := e.lease.public()
	if d := e.lease.delay; d > 0 {
		s.srv.emitLocked(store.Event{Kind: store.Released, Key: key, Token: l.Token})
		s.srv.delayLocked(key, e, now.Add(d), now)
		return l, nil
	}
	s.srv.endLocked(key, e, store.Released)
	return l, nil
}
