package service

import "container/list"

// keyQueue holds the requests parked on one key of this instance: acquires
// in arrival order (the order the subscription delivered them, seq), waits
// in no particular order. It is a plain data structure: the caller holds
// Service.mu.
type keyQueue struct {
	acquirers list.List // *waiter by seq, oldest first
	watchers  list.List // *waiter
}

// push adds w: an acquire at its place by seq (found from the back, where
// arrivals almost always go), a wait at the end.
func (q *keyQueue) push(w *waiter) {
	if w.kind == waitReq {
		w.elem = q.watchers.PushBack(w)
		return
	}
	for e := q.acquirers.Back(); e != nil; e = e.Prev() {
		if e.Value.(*waiter).seq < w.seq {
			w.elem = q.acquirers.InsertAfter(w, e)
			return
		}
	}
	w.elem = q.acquirers.PushFront(w)
}

// remove takes w out of the queue; a no-op when w is not in it.
func (q *keyQueue) remove(w *waiter) {
	if w.elem == nil {
		return
	}
	if w.kind == waitReq {
		q.watchers.Remove(w.elem)
	} else {
		q.acquirers.Remove(w.elem)
	}
	w.elem = nil
}

// moveToFront makes the parked acquire w the head.
func (q *keyQueue) moveToFront(w *waiter) {
	if w.elem != nil && w.kind == acquireReq {
		q.acquirers.MoveToFront(w.elem)
	}
}

// head is the oldest parked acquire, or nil.
func (q *keyQueue) head() *waiter {
	if e := q.acquirers.Front(); e != nil {
		return e.Value.(*waiter)
	}
	return nil
}

// waits returns the parked waits (still parked).
func (q *keyQueue) waits() []*waiter {
	ws := make([]*waiter, 0, q.watchers.Len())
	for e := q.watchers.Front(); e != nil; e = e.Next() {
		ws = append(ws, e.Value.(*waiter))
	}
	return ws
}

// all returns every parked request, acquires first.
func (q *keyQueue) all() []*waiter {
	ws := make([]*waiter, 0, q.len())
	for _, l := range []*list.List{&q.acquirers, &q.watchers} {
		for e := l.Front(); e != nil; e = e.Next() {
			ws = append(ws, e.Value.(*waiter))
		}
	}
	return ws
}

func (q *keyQueue) len() int       { return q.acquirers.Len() + q.watchers.Len() }
func (q *keyQueue) watching() bool { return q.watchers.Len() > 0 }
