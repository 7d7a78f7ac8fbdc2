package service

import "time"

// registry knows, per instance, which request answers for a lock id: the
// acquires in progress by lock id (a retry with the same id supersedes the
// older request), the grants sent within recentGrantTTL (a cancel may still
// give them back), the retired lock ids (cancelled, or whose liveness window
// ran out: never granted again, a late grant for them is given back), and
// the waits with a liveness window by wait id. The caller holds Service.mu.
type registry struct {
	byID  map[string]*waiter
	waits map[string]*waiter

	recent     []recentGrant // by time; entries before recentHead have expired
	recentHead int

	retired     map[retiredID]time.Time // until when
	retiredFIFO []retiredEntry
	retiredHead int
	retiredTTL  time.Duration
	maxRetired  int
}

type recentGrant struct {
	at time.Time
	w  *waiter
}

type retiredID struct{ key, id string }

type retiredEntry struct {
	retiredID
	until time.Time
}

// recentGrantTTL is how long a grant stays cancellable after it is sent,
// covering a cancel that overtakes a grant in flight.
const recentGrantTTL = 5 * time.Second

func newRegistry(retiredTTL time.Duration, maxRetired int) registry {
	return registry{
		byID: make(map[string]*waiter), waits: make(map[string]*waiter),
		retired: make(map[retiredID]time.Time), retiredTTL: retiredTTL, maxRetired: maxRetired,
	}
}

// register makes w the request that answers for its id and returns the
// request it supersedes (still in progress with the same id), if any.
func (g *registry) register(w *waiter) (superseded *waiter) {
	if w.id == "" {
		return nil
	}
	m := g.byID
	if w.kind == waitReq {
		m = g.waits
	}
	if prev := m[w.id]; prev != nil && !prev.done && prev.key == w.key {
		prev.next = w
		superseded = prev
	}
	m[w.id] = w
	return superseded
}

// forget drops w from the registry unless a newer request took its id.
func (g *registry) forget(w *waiter) {
	m := g.byID
	if w.kind == waitReq {
		m = g.waits
	}
	if w.id != "" && m[w.id] == w {
		delete(m, w.id)
	}
}

// lookup returns the request in progress (or recently granted) for id.
func (g *registry) lookup(kind reqKind, id string) *waiter {
	if kind == waitReq {
		return g.waits[id]
	}
	return g.byID[id]
}

// current follows the supersede chain from w to the newest request with
// its id.
func current(w *waiter) *waiter {
	for w.next != nil {
		w = w.next
	}
	return w
}

// rememberGrant keeps the granted acquire w registered (cancellable) for
// recentGrantTTL, and forgets the grants older than that.
func (g *registry) rememberGrant(w *waiter, now time.Time) {
	w.granted = true
	g.recent = append(g.recent, recentGrant{at: now, w: w})
	i := g.recentHead
	for ; i < len(g.recent) && now.Sub(g.recent[i].at) > recentGrantTTL; i++ {
		g.forget(g.recent[i].w)
		g.recent[i] = recentGrant{}
	}
	g.recentHead = i
	if g.recentHead > len(g.recent)/2 {
		n := copy(g.recent, g.recent[g.recentHead:])
		clear(g.recent[n:])
		g.recent = g.recent[:n]
		g.recentHead = 0
	}
}

// retire records that id may never be granted key again on this instance
// for the life of any request that can still carry it. The oldest entries
// go first when there are more than maxRetired.
func (g *registry) retire(key, id string, now time.Time) {
	if id == "" {
		return
	}
	g.pruneRetired(now)
	rid := retiredID{key, id}
	until := now.Add(g.retiredTTL)
	g.retired[rid] = until
	g.retiredFIFO = append(g.retiredFIFO, retiredEntry{rid, until})
	for len(g.retired) > g.maxRetired && g.retiredHead < len(g.retiredFIFO) {
		g.dropRetired(g.retiredFIFO[g.retiredHead])
		g.retiredFIFO[g.retiredHead] = retiredEntry{}
		g.retiredHead++
	}
}

// isRetired reports whether id was retired for key.
func (g *registry) isRetired(key, id string, now time.Time) bool {
	until, ok := g.retired[retiredID{key, id}]
	return ok && now.Before(until)
}

func (g *registry) pruneRetired(now time.Time) {
	i := g.retiredHead
	for ; i < len(g.retiredFIFO) && !now.Before(g.retiredFIFO[i].until); i++ {
		g.dropRetired(g.retiredFIFO[i])
		g.retiredFIFO[i] = retiredEntry{}
	}
	g.retiredHead = i
	if g.retiredHead > len(g.retiredFIFO)/2 {
		n := copy(g.retiredFIFO, g.retiredFIFO[g.retiredHead:])
		clear(g.retiredFIFO[n:])
		g.retiredFIFO = g.retiredFIFO[:n]
		g.retiredHead = 0
	}
}

// dropRetired removes e unless the id was retired again later.
func (g *registry) dropRetired(e retiredEntry) {
	if until, ok := g.retired[e.retiredID]; ok && !until.After(e.until) {
		delete(g.retired, e.retiredID)
	}
}
