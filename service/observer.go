package service

import "time"

// Observer is told of what an instance does as it happens, for metrics
// (cmd/lockservice feeds Prometheus from it). Its methods are called on
// the request path, from many goroutines at once: they must be safe for
// concurrent use, fast, and must not block. Counters that need no event
// (grants, hand-offs, parked requests...) are in Stats.
type Observer interface {
	// Answered reports the answer to a request on endpoint op (api.OpAcquire
	// and the others, api.OpAdminList, api.OpAdminForce): code is 0 for a
	// success (acquired:false is one) or the wire error code, d the time
	// from the request's receipt to its answer.
	Answered(op string, code int, d time.Duration)
	// StoreCalled reports a finished store call.
	StoreCalled(c StoreCall)
}

// StoreCall describes one finished call of the store.
type StoreCall struct {
	// Op is the call: acquire, refresh, release, write, get, transfer,
	// list or force.
	Op string
	// Outcome is one of the Outcome constants.
	Outcome string
	// Duration is how long the call took.
	Duration time.Duration
	// Err is the call's error (nil for OutcomeOK).
	Err error
}

// The outcomes of a store call. The store answered: OutcomeOK,
// OutcomeLocked, OutcomeNotHeld, OutcomeInvalid. The store failed (a store
// error, logged, and counted in Failed): OutcomeTimeout (StoreTimeout ran
// out), OutcomeUnavailable (store.ErrUnavailable), OutcomeError (anything
// else: the outcome is unknown). OutcomeCanceled: the instance stopped
// waiting (Stop), which says nothing about the store.
const (
	OutcomeOK          = "ok"
	OutcomeLocked      = "locked"
	OutcomeNotHeld     = "not_held"
	OutcomeInvalid     = "invalid"
	OutcomeTimeout     = "timeout"
	OutcomeUnavailable = "unavailable"
	OutcomeError       = "error"
	OutcomeCanceled    = "canceled"
)

// Failed reports whether the store failed the call (timeout, unavailable,
// error) rather than answered it.
func (c StoreCall) Failed() bool { return failed(c.Outcome) }

func failed(outcome string) bool {
	return outcome == OutcomeTimeout || outcome == OutcomeUnavailable || outcome == OutcomeError
}

// answered reports whether the store answered (the call reached it and it
// decided).
func answered(outcome string) bool {
	return outcome == OutcomeOK || outcome == OutcomeLocked || outcome == OutcomeNotHeld || outcome == OutcomeInvalid
}
