package tests

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

// TestModelCatchesViolations feeds the checker histories that break each
// property it is meant to guard, and histories that are fine. Times are in
// history units; leases end at 100 unless a case says otherwise.
func TestModelCatchesViolations(t *testing.T) {
	const end = 100 // lease end of every grant below
	op := func(c int, call, ret int64, in lockInput, out lockOutput) porcupine.Operation {
		in.key, in.client, in.ret = "k", c, ret
		return porcupine.Operation{ClientId: c, Input: in, Call: call, Return: ret, Output: out}
	}
	// Client c acts under lease c.
	acq := func(c int, call, ret int64, token uint64, value string) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opAcquire, lease: c}, lockOutput{ok: true, token: token, value: value, deadline: end})
	}
	acqUntil := func(c int, call, ret int64, token uint64, value string, deadline int64) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opAcquire, lease: c}, lockOutput{ok: true, token: token, value: value, deadline: deadline})
	}
	tryRefused := func(c int, call, ret int64, holderToken uint64) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opAcquire, lease: c, try: true}, lockOutput{token: holderToken})
	}
	unknownAcq := func(c int, call, ret int64) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opAcquire, lease: c}, lockOutput{unknown: true})
	}
	rel := func(c int, call, ret int64, value string, ok bool) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opRelease, lease: c, value: value}, lockOutput{ok: ok})
	}
	unknownRel := func(c int, call, ret int64, value string) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opRelease, lease: c, value: value}, lockOutput{unknown: true})
	}
	write := func(c int, call, ret int64, value string, ok bool) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opWrite, lease: c, value: value}, lockOutput{ok: ok})
	}
	unknownWrite := func(c int, call, ret int64, value string) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opWrite, lease: c, value: value}, lockOutput{unknown: true})
	}
	refresh := func(c int, call, ret int64, ok bool, deadline int64) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opRefresh, lease: c}, lockOutput{ok: ok, deadline: deadline})
	}
	get := func(c int, call, ret int64, locked bool, token uint64, value string) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opGet}, lockOutput{locked: locked, token: token, value: value})
	}
	wait := func(c int, call, ret int64, value string) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opWait}, lockOutput{value: value})
	}
	force := func(c int, call, ret int64, ok bool, token uint64) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opForce}, lockOutput{ok: ok, token: token})
	}
	unknownForce := func(c int, call, ret int64) porcupine.Operation {
		return op(c, call, ret, lockInput{kind: opForce}, lockOutput{unknown: true})
	}
	type h = []porcupine.Operation
	model := lockModel.ToModel()
	cases := []struct {
		name string
		ok   bool
		h    h
	}{
		// Acquire and release.
		{"sequential", true, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), acq(1, 4, 5, 2, "a"), rel(1, 6, 7, "b", true)}},
		{"two holders", false, h{acq(0, 0, 1, 1, ""), acq(1, 2, 3, 2, ""), rel(0, 4, 5, "a", true)}},
		{"lost update", false, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), acq(1, 4, 5, 2, "")}},
		{"token went back", false, h{acq(0, 0, 1, 5, ""), rel(0, 2, 3, "a", true), acq(1, 4, 5, 3, "a")}},
		{"holder told not held", false, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", false)}},
		{"orphan after unknown acquire", true, h{unknownAcq(0, 0, 1), acq(1, 2, 3, 4, ""), rel(1, 4, 5, "a", true)}},
		{"release without a value keeps the state", true, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), acq(1, 4, 5, 2, "a"), rel(1, 6, 7, "", true), acq(0, 8, 9, 3, "a")}},
		{"release without a value loses the state", false, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), acq(1, 4, 5, 2, "a"), rel(1, 6, 7, "", true), acq(0, 8, 9, 3, "")}},
		{"unknown release: applied", true, h{acq(0, 0, 1, 1, ""), unknownRel(0, 2, 3, "a"), acq(1, 4, 5, 2, "a")}},
		{"unknown release: not applied, lease expired", true, h{acq(0, 0, 1, 1, ""), unknownRel(0, 2, 3, "a"), acq(1, 200, 201, 2, "")}},
		{"unknown release: not applied, lease live", false, h{acq(0, 0, 1, 1, ""), unknownRel(0, 2, 3, "a"), acq(1, 4, 5, 2, "")}},
		// Expiry: only after the lease's end as the client counts it.
		{"expired lease taken over", true, h{acq(0, 0, 1, 1, ""), acq(1, 150, 160, 2, "")}},
		{"live lease taken over", false, h{acq(0, 0, 1, 1, ""), acq(1, 50, 60, 2, "")}},
		{"taken over while the lease may have ended", true, h{acq(0, 0, 1, 1, ""), acq(1, 50, 120, 2, "")}},
		{"refreshed lease taken over", false, h{acq(0, 0, 1, 1, ""), refresh(0, 90, 91, true, 300), acq(1, 150, 160, 2, "")}},
		{"holder refused after expiry", true, h{acq(0, 0, 1, 1, ""), rel(0, 150, 151, "a", false)}},
		{"holder released after expiry, nobody took over", true, h{acq(0, 0, 1, 1, ""), rel(0, 150, 151, "a", true), acq(1, 152, 153, 2, "a")}},
		{"revived lease: refreshed after its release", false, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), refresh(0, 4, 5, true, 300)}},
		{"revived lease: written after its expiry and a new grant", false, h{acq(0, 0, 1, 1, ""), acq(1, 150, 151, 2, ""), rel(1, 152, 153, "", true), write(0, 160, 161, "x", true)}},
		{"revived lease: get says locked after the release", false, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), get(2, 4, 5, true, 1, "a")}},
		{"revived lease: try-acquire refused after the expiry", false, h{acqUntil(0, 0, 1, 1, "", 10), get(2, 20, 21, false, 0, ""), tryRefused(1, 30, 31, 1)}},
		// Write.
		{"write then release without a value", true, h{acq(0, 0, 1, 1, ""), write(0, 2, 3, "w", true), rel(0, 4, 5, "", true), acq(1, 6, 7, 2, "w")}},
		{"write lost on hand-over", false, h{acq(0, 0, 1, 1, ""), write(0, 2, 3, "w", true), rel(0, 4, 5, "", true), acq(1, 6, 7, 2, "")}},
		{"write racing the release: both acknowledged", true, h{acq(0, 0, 1, 1, ""), write(0, 2, 6, "w", true), rel(0, 3, 5, "", true), acq(1, 4, 8, 2, "w")}},
		{"write racing the release: next holder saw the state before the write", false, h{acq(0, 0, 1, 1, ""), write(0, 2, 6, "w", true), rel(0, 3, 5, "", true), acq(1, 4, 8, 2, "")}},
		{"write racing the release: write refused", true, h{acq(0, 0, 1, 1, ""), write(0, 2, 6, "w", false), rel(0, 3, 5, "", true), acq(1, 4, 8, 2, "")}},
		{"write accepted from a non-holder", false, h{acq(0, 0, 1, 1, ""), write(1, 2, 3, "w", true)}},
		{"write accepted under a released lease", false, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), write(0, 4, 5, "w", true)}},
		{"write refused to the holder", false, h{acq(0, 0, 1, 1, ""), write(0, 2, 3, "w", false)}},
		{"unknown write: applied", true, h{acq(0, 0, 1, 1, ""), unknownWrite(0, 2, 3, "w"), rel(0, 4, 5, "", true), acq(1, 6, 7, 2, "w")}},
		{"unknown write: not applied", true, h{acq(0, 0, 1, 1, ""), unknownWrite(0, 2, 3, "w"), rel(0, 4, 5, "", true), acq(1, 6, 7, 2, "")}},
		// Refresh.
		{"refresh by a non-holder", false, h{acq(0, 0, 1, 1, ""), refresh(1, 2, 3, true, 300)}},
		{"refresh refused to the holder", false, h{acq(0, 0, 1, 1, ""), refresh(0, 2, 3, false, 0)}},
		// Get and wait.
		{"get locked, then unlocked", true, h{acq(0, 0, 1, 1, ""), get(2, 2, 3, true, 1, ""), rel(0, 4, 5, "a", true), get(2, 6, 7, false, 1, "a"), get(2, 8, 9, false, 0, "a")}},
		{"get mixing states: unlocked with the value from before the release", false, h{acq(0, 0, 1, 1, ""), write(0, 2, 3, "w", true), rel(0, 4, 5, "a", true), get(2, 6, 7, false, 1, "w")}},
		{"get mixing states: unlocked during the release with the old value", false, h{acq(0, 0, 1, 1, ""), write(0, 2, 3, "w", true), rel(0, 4, 8, "a", true), get(2, 5, 7, false, 1, "w"), get(2, 9, 10, false, 1, "a")}},
		{"get during the release: either state", true, h{acq(0, 0, 1, 1, ""), write(0, 2, 3, "w", true), rel(0, 4, 8, "a", true), get(2, 5, 7, true, 1, "w"), get(2, 9, 10, false, 1, "a")}},
		{"get with the wrong token", false, h{acq(0, 0, 1, 7, ""), get(2, 2, 3, true, 6, "")}},
		{"get sees a lease nobody was told about", true, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), get(2, 4, 5, true, 9, "a"), acq(1, 200, 201, 10, "a")}},
		{"get sees an unknown acquire's orphan", true, h{unknownAcq(1, 0, 50), get(2, 2, 3, true, 4, ""), acq(0, 10, 11, 5, "")}},
		{"wait returns the released value", true, h{acq(0, 0, 1, 1, ""), wait(2, 2, 7, "a"), rel(0, 4, 5, "a", true)}},
		{"wait returns while locked", false, h{acq(0, 0, 1, 1, ""), wait(2, 2, 3, "")}},
		{"wait returns a stale value", false, h{acq(0, 0, 1, 1, ""), write(0, 2, 3, "w", true), rel(0, 4, 5, "a", true), wait(2, 6, 7, "w")}},
		// Force (an operator ends whatever lease is live).
		{"forced lease: holder refused, next grant keeps the state", true, h{acq(0, 0, 1, 1, ""), write(0, 2, 3, "w", true), force(2, 4, 5, true, 1), rel(0, 6, 7, "a", false), acq(1, 8, 9, 2, "w")}},
		{"forced lease: holder still writes", false, h{acq(0, 0, 1, 1, ""), force(2, 2, 3, true, 1), write(0, 4, 5, "w", true)}},
		{"forced lease: wrong token", false, h{acq(0, 0, 1, 3, ""), force(2, 2, 3, true, 2)}},
		{"force finds nothing while a lease is live", false, h{acq(0, 0, 1, 1, ""), force(2, 2, 3, false, 0)}},
		{"force finds nothing after a release", true, h{acq(0, 0, 1, 1, ""), rel(0, 2, 3, "a", true), force(2, 4, 5, false, 0), acq(1, 6, 7, 2, "a")}},
		{"force ends an unknown acquire's orphan", true, h{unknownAcq(1, 0, 50), force(2, 2, 3, true, 4), acq(0, 10, 11, 5, "")}},
		{"unknown force: lease may be gone", true, h{acq(0, 0, 1, 1, ""), unknownForce(2, 2, 3), acq(1, 4, 5, 2, "")}},
		{"forced lease taken over: token went back", false, h{acq(0, 0, 1, 5, ""), force(2, 2, 3, true, 5), acq(1, 4, 5, 4, "")}},
		{"wait sees a hand-over", true, h{acq(0, 0, 1, 1, ""), wait(2, 2, 9, "a"), acq(1, 3, 8, 2, "a"), rel(0, 4, 6, "a", true), get(2, 10, 11, true, 2, "a")}},
	}
	for _, c := range cases {
		if got := porcupine.CheckOperations(model, c.h); got != c.ok {
			t.Errorf("%s: linearizable = %v, want %v", c.name, got, c.ok)
		}
	}
}
