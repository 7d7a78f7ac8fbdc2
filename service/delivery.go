package service

import (
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// A grant to a request with a liveness window is sent with a reply subject
// of the instance's own (deliveryInbox.<n>). If nobody is subscribed to the
// request's reply subject any more, the NATS server answers there with a
// "no responders" status, and the grant is given back: its caller died, or
// gave the lock id up (the liveness rules say to keep the reply
// subscription until the answer arrives or the lock id is given up), so
// nobody was told it holds the lock. Without this, a waiter that died
// inside its window and was then granted would hold the key until its
// lease ended.

// deliveryWait is how long an undelivered grant's no-responders status is
// waited for; it arrives within a round trip.
const deliveryWait = 5 * time.Second

type pendingDelivery struct {
	gb giveBack
	at time.Time
}

// expectDelivery registers gb to be given back on a no-responders status
// and returns the reply subject to send its grant with ("" when the
// instance has no NATS connection of its own).
func (s *Service) expectDelivery(gb giveBack) string {
	if s.deliveryInbox == "" {
		return ""
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.deliveryFIFO) > 0 {
		n := s.deliveryFIFO[0]
		if p, ok := s.deliveries[n]; ok && now.Sub(p.at) < deliveryWait {
			break
		}
		delete(s.deliveries, n)
		s.deliveryFIFO = s.deliveryFIFO[1:]
	}
	s.deliverySeq++
	n := s.deliverySeq
	s.deliveries[n] = pendingDelivery{gb: gb, at: now}
	s.deliveryFIFO = append(s.deliveryFIFO, n)
	return s.deliveryInbox + "." + strconv.FormatUint(n, 10)
}

// onDeliveryStatus handles the server's no-responders status for a grant
// answer: the lock id is retired and the grant given back.
func (s *Service) onDeliveryStatus(m *nats.Msg) {
	if m.Header.Get("Status") != "503" {
		return
	}
	n, err := strconv.ParseUint(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	p, ok := s.deliveries[n]
	delete(s.deliveries, n)
	if ok {
		s.reg.retire(p.gb.key, p.gb.id, time.Now())
		if w := s.reg.lookup(acquireReq, p.gb.id); w != nil && w.key == p.gb.key {
			s.reg.forget(w)
		}
	}
	s.mu.Unlock()
	if !ok {
		return
	}
	s.stats.undelivered.Add(1)
	s.announceRetired(p.gb.key, p.gb.id)
	s.ops.Add(1)
	s.dispatch(func() {
		defer s.ops.Done()
		s.giveBack(p.gb)
	})
}
