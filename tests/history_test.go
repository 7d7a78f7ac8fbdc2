package tests

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// The checker. Every operation of the workload (workload_test.go) is
// recorded with its invocation and response time; an operation whose
// outcome the client could not learn (a timeout, a 503, a dropped
// connection) is recorded as unknown. The history is checked for
// linearizability with porcupine against a sequential model of one lock
// with a fenced state object, per key:
//
//	(holder, lease end, last token, state value)
//
// The model's rules, which one check covers together:
//   - an acquire succeeds only when nobody holds the key (mutual
//     exclusion); its token is greater than every token granted before
//     (fencing-token monotonicity); it reads exactly the value written by
//     the last applied release or write (no lost or phantom update);
//   - a release, write or refresh succeeds only under the live lease, and
//     is answered "not held" only when the lease is no longer live;
//   - get reports a state the key was in: locked with the live lease's
//     token, or unlocked with the last grant's token (or 0), and the value
//     of that same state; wait returns the value of an unlocked state.
//
// Time enters only through expiry. A lease may expire at any moment after
// its end as the client counts it (from when it sent the acquire or the
// refresh, which is never later than the server's expiry), never before:
// an operation may see the lease expired only if that end is before the
// operation returned.
//
// Unknown outcomes are nondeterministic steps: an acquire that may have
// been granted leaves an orphan lease (it may be freed at any time: the
// client withdraws it, or it expires); a release or write that may have
// been applied either was or was not; a refresh that may have been applied
// changes nothing the model needs (the lease may still end at the earlier
// time). A request whose reply was lost can still be applied after the
// client gave up on it, so an unknown operation stays open for lateWindow
// after its invocation.
//
// Two relaxations keep the checker free of false alarms. The client's
// Acquire retries lost replies and withdraws lock ids it gives up on, and
// the service gives back grants that arrive too late: those grants are
// real but reported to nobody. So a get or a refused try-acquire may
// observe a lease nobody was told about, when the model has the key free
// and the observed token is newer than every token the model knows; and an
// unlocked get may report a newer token than the model knows (the last
// grant was such a lease). A lease that comes back after its release or
// expiry carries an old token and is still caught.

const (
	free   = -1
	orphan = -2 // granted to a request whose client gave up or never heard back

	// lateWindow is how long after its invocation an operation with an
	// unknown outcome may still take effect: the client's retries for
	// one operation (opBudget, at most 6 s), one request timeout (2 s)
	// and the service's store timeout (5 s), rounded up.
	lateWindow = int64(15 * time.Second)
)

type opKind int

const (
	opAcquire opKind = iota
	opRelease
	opWrite
	opRefresh
	opGet
	opWait
	opForce // an operator ends whatever lease is live (admin force)
)

type lockInput struct {
	kind   opKind
	key    string
	client int
	lease  int    // the grant the operation acts under (acquire: the one it makes)
	try    bool   // acquire: try once (a refusal is a definite answer)
	value  string // release, write: the value written; release: "" keeps the state
	ret    int64  // set by history.add: when the operation took effect at the latest
}

type lockOutput struct {
	unknown  bool
	ok       bool   // acquire: granted; release: released; write, refresh: applied; force: a lease was ended
	token    uint64 // acquire: the grant's token (refused try: the holder's, 0 = not said); get: the token reported; force: the token of the lease ended
	value    string // acquire, get, wait: the state read ("" = none)
	locked   bool   // get
	deadline int64  // acquire, refresh: the lease's end at the earliest, in history time
}

type lockState struct {
	holder     int    // a lease id, free or orphan
	deadline   int64  // the holder's lease end at the earliest (history time)
	token      uint64 // the last grant's token (a lower bound when !tokenKnown)
	tokenKnown bool
	value      string // "" = no state
}

// settle lists the states s may be in when an operation returning at ret
// takes effect: s itself, or s with its lease ended.
func settle(s lockState, ret int64) []lockState {
	out := []lockState{s}
	switch {
	case s.holder == orphan:
		out = append(out, lockState{holder: free, token: s.token, value: s.value})
	case s.holder >= 0 && s.deadline < ret:
		out = append(out, lockState{holder: free, token: s.token, tokenKnown: s.tokenKnown, value: s.value})
	}
	return out
}

// held reports whether a lease is (or, for an orphan, may be) live in s.
func (s lockState) held() bool { return s.holder != free }

// observeHeld is the state after seeing the key locked with token t
// (0: not said): the lease the model knows, or one nobody was told about.
func observeHeld(s lockState, t uint64) (lockState, bool) {
	switch {
	case s.holder >= 0 || (s.holder == orphan && s.tokenKnown):
		return s, t == 0 || t == s.token
	case s.holder == orphan:
		if t == 0 {
			return s, true
		}
		if t <= s.token {
			return s, false
		}
		s.token, s.tokenKnown = t, true
		return s, true
	default: // free: a grant reported to nobody, newer than every known one
		if t == 0 || t <= s.token {
			return s, false
		}
		return lockState{holder: orphan, token: t, tokenKnown: true, value: s.value}, true
	}
}

func step(s lockState, i lockInput, o lockOutput) []lockState {
	switch i.kind {
	case opAcquire:
		switch {
		case o.unknown:
			if s.held() {
				return []lockState{s}
			}
			return []lockState{s, {holder: orphan, token: s.token, value: s.value}}
		case o.ok:
			if s.held() || o.value != s.value || o.token <= s.token {
				return nil
			}
			return []lockState{{holder: i.lease, deadline: o.deadline, token: o.token, tokenKnown: true, value: s.value}}
		default: // a try refused: someone held the key
			if n, ok := observeHeld(s, o.token); ok {
				return []lockState{n}
			}
			return nil
		}
	case opRelease, opWrite:
		mine := s.holder == i.lease
		applied := s
		if i.value != "" {
			applied.value = i.value
		}
		if i.kind == opRelease {
			applied.holder, applied.deadline = free, 0
		}
		switch {
		case o.unknown && mine:
			return []lockState{s, applied}
		case o.unknown, !o.ok && !mine:
			return []lockState{s}
		case o.ok && mine:
			return []lockState{applied}
		}
		return nil // applied without the lease, or refused under it
	case opRefresh:
		mine := s.holder == i.lease
		switch {
		case o.unknown, !o.ok && !mine:
			return []lockState{s}
		case o.ok && mine:
			n := s
			n.deadline = o.deadline
			return []lockState{n}
		}
		return nil
	case opGet:
		if o.value != s.value {
			return nil
		}
		if o.locked {
			if n, ok := observeHeld(s, o.token); ok {
				return []lockState{n}
			}
			return nil
		}
		if s.held() {
			return nil
		}
		switch {
		case o.token == 0 || o.token == s.token:
			return []lockState{s}
		case o.token > s.token: // the last grant was one nobody was told about
			s.token, s.tokenKnown = o.token, true
			return []lockState{s}
		}
		return nil
	case opWait:
		if s.held() || o.value != s.value {
			return nil
		}
		return []lockState{s}
	case opForce:
		ended := func(n lockState) lockState {
			return lockState{holder: free, token: n.token, tokenKnown: n.tokenKnown, value: n.value}
		}
		switch {
		case o.unknown:
			return []lockState{s, ended(s)}
		case o.ok: // a live lease with o.token was ended; the state stays
			if n, ok := observeHeld(s, o.token); ok {
				return []lockState{ended(n)}
			}
			return nil
		case s.holder >= 0: // "nothing was live" while a known lease was
			return nil
		default:
			return []lockState{ended(s)}
		}
	}
	return nil
}

var lockModel = porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := op.Input.(lockInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []any { return []any{lockState{holder: free, tokenKnown: true}} },
	Step: func(st, in, out any) []any {
		i, o := in.(lockInput), out.(lockOutput)
		var next []any
		for _, s := range settle(st.(lockState), i.ret) {
			for _, n := range step(s, i, o) {
				if !slices.Contains(next, any(n)) {
					next = append(next, n)
				}
			}
		}
		return next
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(lockInput), out.(lockOutput)
		res := "unknown"
		if !o.unknown {
			res = fmt.Sprintf("ok=%v", o.ok)
		}
		switch i.kind {
		case opAcquire:
			if !o.unknown {
				res += fmt.Sprintf(" token=%d value=%q", o.token, o.value)
			}
			kind := "acquire"
			if i.try {
				kind = "try-acquire"
			}
			return fmt.Sprintf("%s(%s, c%d, lease %d) -> %s", kind, i.key, i.client, i.lease, res)
		case opRelease:
			return fmt.Sprintf("release(%s, c%d, lease %d, %q) -> %s", i.key, i.client, i.lease, i.value, res)
		case opWrite:
			return fmt.Sprintf("write(%s, c%d, lease %d, %q) -> %s", i.key, i.client, i.lease, i.value, res)
		case opRefresh:
			return fmt.Sprintf("refresh(%s, c%d, lease %d) -> %s", i.key, i.client, i.lease, res)
		case opGet:
			return fmt.Sprintf("get(%s, c%d) -> locked=%v token=%d value=%q", i.key, i.client, o.locked, o.token, o.value)
		case opForce:
			return fmt.Sprintf("force(%s, c%d) -> %s token=%d", i.key, i.client, res, o.token)
		default:
			return fmt.Sprintf("wait(%s, c%d) -> %q", i.key, i.client, o.value)
		}
	},
}

// history records operations from concurrent clients.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation

	acquires, releases, writes, refreshes, gets, waits, forces, unknown, staleRejected atomic.Int64
}

func newHistory() *history { return &history{start: time.Now()} }

func (h *history) now() int64 { return int64(time.Since(h.start)) }

// at converts an instant of this process's clock to history time.
func (h *history) at(t time.Time) int64 { return int64(t.Sub(h.start)) }

// add records an operation invoked at call that has just returned.
func (h *history) add(client int, in lockInput, call int64, out lockOutput) {
	ret := h.now()
	if out.unknown {
		ret = max(ret, call+lateWindow)
		h.unknown.Add(1)
	}
	in.ret = ret
	h.mu.Lock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
	h.mu.Unlock()
	if out.unknown || !out.ok {
		return
	}
	switch in.kind {
	case opAcquire:
		h.acquires.Add(1)
	case opRelease:
		h.releases.Add(1)
	case opWrite:
		h.writes.Add(1)
	case opRefresh:
		h.refreshes.Add(1)
	case opForce:
		h.forces.Add(1)
	}
}

func (h *history) addRead(client int, in lockInput, call int64, out lockOutput) {
	h.add(client, in, call, out)
	if in.kind == opGet {
		h.gets.Add(1)
	} else {
		h.waits.Add(1)
	}
}

// check verifies the history, failing t on a violation, and returns a
// one-line summary.
func (h *history) check(t *testing.T, name string) string {
	t.Helper()
	summary, violation := h.verify(t, name)
	if violation != "" {
		t.Errorf("%s: %s", name, violation)
	}
	return summary
}

// verify checks the history and describes a violation ("" when none).
func (h *history) verify(t *testing.T, name string) (summary, violation string) {
	t.Helper()
	h.mu.Lock()
	ops := slices.Clone(h.ops)
	h.mu.Unlock()
	// Tokens: unique per key across every grant.
	seen := map[string]map[uint64]bool{}
	for _, op := range ops {
		in, out := op.Input.(lockInput), op.Output.(lockOutput)
		if in.kind != opAcquire || !out.ok || out.unknown {
			continue
		}
		if seen[in.key] == nil {
			seen[in.key] = map[uint64]bool{}
		}
		if seen[in.key][out.token] {
			violation = fmt.Sprintf("token %d granted twice for %s; ", out.token, in.key)
		}
		seen[in.key][out.token] = true
	}
	model := lockModel.ToModel()
	res, info := porcupine.CheckOperationsVerbose(model, ops, 2*time.Minute)
	switch res {
	case porcupine.Illegal:
		dir := *faultKeep
		if dir == "" {
			dir = t.TempDir()
		}
		path := filepath.Join(dir, name+".html")
		if err := porcupine.VisualizePath(model, info, path); err == nil {
			t.Logf("visualization of the violation: %s", path)
		}
		violation += fmt.Sprintf("history of %d operations is NOT linearizable (mutual exclusion, lost update, token order, stale read or revived lease)", len(ops))
		if d := describeViolation(ops, info, dir); d != "" {
			violation += "\n" + d
		}
	case porcupine.Unknown:
		violation += fmt.Sprintf("linearizability check timed out on %d operations", len(ops))
	}
	if h.acquires.Load() == 0 {
		violation += "no lock was acquired: the workload made no progress"
	}
	return fmt.Sprintf("%d ops (%d grants, %d acknowledged releases, %d writes, %d refreshes, %d gets, %d waits, %d forces, %d unknown outcomes), linearizable: %v, stale writes rejected: %d",
		len(ops), h.acquires.Load(), h.releases.Load(), h.writes.Load(), h.refreshes.Load(), h.gets.Load(), h.waits.Load(),
		h.forces.Load(), h.unknown.Load(), res == porcupine.Ok, h.staleRejected.Load()), violation
}

// describeViolation says, for each key whose history is not linearizable,
// where the longest linearization porcupine found stops: its last
// operations, and the operations it could not place next (the earliest to
// return first). It also writes each such key's whole history, by
// invocation, next to the visualization.
func describeViolation(ops []porcupine.Operation, info porcupine.LinearizationInfo, dir string) string {
	var out string
	parts := lockModel.Partition(ops)
	for p, lins := range info.PartialLinearizationsOperations() {
		var longest []porcupine.Operation
		for _, l := range lins {
			if len(l) > len(longest) {
				longest = l
			}
		}
		part := parts[p] // porcupine partitions with the same function
		key := part[0].Input.(lockInput).key
		if porcupine.CheckOperations(lockModel.ToModel(), part) {
			continue
		}
		describe := func(op porcupine.Operation) string {
			return fmt.Sprintf("  [%8.3fs, %8.3fs] %s\n", time.Duration(op.Call).Seconds(), time.Duration(op.Return).Seconds(),
				lockModel.DescribeOperation(op.Input, op.Output))
		}
		out += fmt.Sprintf("key %s: the longest linearization places %d of %d operations; it ends with:\n", key, len(longest), len(part))
		for _, op := range longest[max(0, len(longest)-6):] {
			out += describe(op)
		}
		placed := map[porcupine.Operation]bool{}
		for _, op := range longest {
			placed[op] = true
		}
		var rest []porcupine.Operation
		for _, op := range part {
			if !placed[op] {
				rest = append(rest, op)
			}
		}
		slices.SortFunc(rest, func(a, b porcupine.Operation) int { return cmp.Compare(a.Return, b.Return) })
		out += "and cannot place next any of (by return):\n"
		for _, op := range rest[:min(len(rest), 6)] {
			out += describe(op)
		}
		slices.SortFunc(part, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
		var all strings.Builder
		for _, op := range part {
			all.WriteString(describe(op))
		}
		path := filepath.Join(dir, strings.ReplaceAll(key, "/", "_")+".txt")
		if os.WriteFile(path, []byte(all.String()), 0o644) == nil {
			out += "whole history of the key: " + path + "\n"
		}
	}
	return out
}
