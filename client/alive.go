package client

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/service/api"
)

// errUnconfirmed: a renewal of a parked request's liveness window was not
// confirmed and the request's answer had not arrived, so no instance has
// the request any more (its instance died, or it was answered and the
// answer was lost, or it was dropped).
var errUnconfirmed = errors.New("a liveness renewal of the parked request went unconfirmed")

// The status of the NATS server's "no responders" answer to a request
// with a reply subject (nats.go does not export these names).
const (
	statusHeader       = "Status"
	noRespondersStatus = "503"
)

// park sends a blocking request named id (a lock id or wait id) and waits
// for its answer on a subscription of its own, renewing the request's
// liveness window meanwhile (renew). It decodes the answer into resp, or
// returns an error matching errUnconfirmed when a renewal went unconfirmed
// and the answer had not arrived, or wrapping ctx's error when ctx ended
// first. There is no other timeout.
//
// inWindow reports that the answer arrived before the window could have
// run out on the service (within the window of the request's send or of
// the last confirmed renewal's): only then is it sure not to be the answer
// of a request the service dropped, retiring its lock id. That happens
// only when this process stalled for longer than the window.
func (c *Client) park(ctx context.Context, op, key, id string, req, resp any) (inWindow bool, err error) {
	msg, err := c.message(op, key, req)
	if err != nil {
		return false, err
	}
	msg.Reply = c.nc.NewInbox()
	answers := make(chan *nats.Msg, 4)
	sub, err := c.nc.ChanSubscribe(msg.Reply, answers)
	if err != nil {
		return false, fmt.Errorf("client: %s %q: %w", op, key, err)
	}
	defer sub.Unsubscribe()
	// confirmed: when the last confirmed renewal (at first, the request)
	// was sent, as the time since start (monotonic, unlike wall time).
	start := time.Now()
	var confirmed atomic.Int64
	if err := c.nc.PublishMsg(msg); err != nil {
		return false, fmt.Errorf("client: %s %q: %w", op, key, err)
	}

	rctx, stop := context.WithCancel(ctx)
	lapsed := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if !c.renew(rctx, key, id, start, &confirmed) {
			close(lapsed)
		}
	}()
	defer func() { stop(); <-done }()

	answer := func(m *nats.Msg) (bool, error) {
		open := time.Since(start)-time.Duration(confirmed.Load()) < c.alive-c.alive/20
		if len(m.Data) == 0 && m.Header.Get(statusHeader) == noRespondersStatus {
			return open, c.noResponders(op, key)
		}
		return open, decodeAnswer(op, key, m, resp)
	}
	select {
	case m := <-answers:
		return answer(m)
	case <-lapsed:
		select {
		case m := <-answers: // answered just before the renewal failed
			return answer(m)
		default:
			return false, fmt.Errorf("client: %s %q: %w", op, key, errUnconfirmed)
		}
	case <-ctx.Done():
		return false, fmt.Errorf("client: %s %q: %w", op, key, ctx.Err())
	}
}

// renew keeps the liveness window of the parked request id open until ctx
// ends (it then returns true): a renewal every window/3, each waiting at
// most min(window/3, the request timeout) for the confirmation of the
// instance that has the request. It sets confirmed to the send time of
// each confirmed renewal, as the time since start, and returns false at
// the first renewal that is not confirmed (no answer, no responders, or an
// error answer).
func (c *Client) renew(ctx context.Context, key, id string, start time.Time, confirmed *atomic.Int64) bool {
	period := c.alive / 3
	t := time.NewTimer(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return true
		case <-t.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, min(period, c.timeout))
		var resp api.AliveResponse
		err := c.call(rctx, api.OpAlive, key, api.AliveRequest{ID: id}, &resp)
		cancel()
		if ctx.Err() != nil {
			return true
		}
		if err != nil || !resp.Alive {
			return false
		}
		confirmed.Store(int64(sent.Sub(start)))
		t.Reset(time.Until(sent.Add(period)))
	}
}
