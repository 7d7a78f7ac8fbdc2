package tests

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

// TestModelCatchesViolations feeds the checker histories that break each
// property it is meant to guard, and one that is fine.
func TestModelCatchesViolations(t *testing.T) {
	acq := func(c int, call, ret int64, token uint64, value int) porcupine.Operation {
		return porcupine.Operation{ClientId: c, Input: lockInput{kind: opAcquire, key: "k", client: c}, Call: call, Return: ret,
			Output: lockOutput{ok: true, token: token, value: value}}
	}
	rel := func(c int, call, ret int64, value int, ok bool) porcupine.Operation {
		return porcupine.Operation{ClientId: c, Input: lockInput{kind: opRelease, key: "k", client: c, value: value}, Call: call, Return: ret,
			Output: lockOutput{ok: ok}}
	}
	unknownAcq := func(c int, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: c, Input: lockInput{kind: opAcquire, key: "k", client: c}, Call: call, Return: ret,
			Output: lockOutput{unknown: true}}
	}
	model := lockModel.ToModel()
	cases := []struct {
		name string
		ok   bool
		h    []porcupine.Operation
	}{
		{"sequential", true, []porcupine.Operation{acq(0, 0, 1, 1, 0), rel(0, 2, 3, 1, true), acq(1, 4, 5, 2, 1), rel(1, 6, 7, 2, true)}},
		{"two holders", false, []porcupine.Operation{acq(0, 0, 1, 1, 0), acq(1, 2, 3, 2, 0), rel(0, 4, 5, 1, true)}},
		{"lost update", false, []porcupine.Operation{acq(0, 0, 1, 1, 0), rel(0, 2, 3, 1, true), acq(1, 4, 5, 2, 0)}},
		{"token went back", false, []porcupine.Operation{acq(0, 0, 1, 5, 0), rel(0, 2, 3, 1, true), acq(1, 4, 5, 3, 1)}},
		{"holder told not held", false, []porcupine.Operation{acq(0, 0, 1, 1, 0), rel(0, 2, 3, 1, false)}},
		{"orphan after unknown acquire", true, []porcupine.Operation{unknownAcq(0, 0, 1), acq(1, 2, 3, 4, 0), rel(1, 4, 5, 1, true)}},
	}
	for _, c := range cases {
		if got := porcupine.CheckOperations(model, c.h); got != c.ok {
			t.Errorf("%s: linearizable = %v, want %v", c.name, got, c.ok)
		}
	}
}
