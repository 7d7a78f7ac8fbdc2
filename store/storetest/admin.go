package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/lockservice/lockservice/store"
)

// admin returns s as a store.Admin, or skips the test.
func admin(t *testing.T, s store.Store) store.Admin {
	t.Helper()
	a, ok := s.(store.Admin)
	if !ok {
		t.Skip("store does not implement store.Admin (List, Force)")
	}
	return a
}

// listAll pages through the live leases under prefix, limit a page, and
// returns them by key with the number of keys found again on a later page
// (which the contract allows). Each page must hold at most limit leases,
// each key at most once.
func listAll(t testing.TB, a store.Admin, prefix string, limit int) (map[string]store.Lease, int) {
	t.Helper()
	all := make(map[string]store.Lease)
	again := 0
	cursor := ""
	for page := 0; ; page++ {
		if page == 10_000 {
			t.Fatalf("List(%q) did not end after %d pages", prefix, page)
		}
		held, next, err := a.List(t.Context(), prefix, cursor, limit)
		if err != nil {
			t.Fatalf("List(%q, cursor %q, %d) = %v, want nil", prefix, cursor, limit, err)
		}
		if len(held) > limit {
			t.Errorf("List(%q, %d) page %d has %d leases, want at most %d", prefix, limit, page, len(held), limit)
		}
		onPage := make(map[string]bool)
		for _, h := range held {
			if onPage[h.Key] {
				t.Errorf("List(%q, %d) page %d has %q twice", prefix, limit, page, h.Key)
			}
			onPage[h.Key] = true
			if _, ok := all[h.Key]; ok {
				again++
			}
			all[h.Key] = h.Lease
		}
		if next == "" {
			return all, again
		}
		cursor = next
	}
}

func testListHeld(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	a := admin(t, s)
	p := NewKey(t) + "."
	start := time.Now()
	short := p + "short"
	mustAcquire(t, s, short, NewLockID(), store.AcquireOptions{TTL: time.Second})
	ga := mustAcquire(t, s, p+"a", NewLockID(), store.AcquireOptions{Owner: "owner-a"})
	gb := mustAcquire(t, s, p+"b", NewLockID(), store.AcquireOptions{TTL: 20 * time.Second, Owner: "owner-b"})
	released := NewLockID()
	mustAcquire(t, s, p+"released", released, store.AcquireOptions{})
	if err := s.Release(t.Context(), p+"released", released, store.Update{}); err != nil {
		t.Fatal(err)
	}
	end := time.Now()

	got, _ := listAll(t, a, p, 100)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, ok := got[short]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("List still returns %q 10s after its lease of 1s", short)
		}
		time.Sleep(50 * time.Millisecond) // polling the store is what is under test here
		got, _ = listAll(t, a, p, 100)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("List dropped a lease of 1s after %v, before it ended", d)
	}
	want := map[string]store.Grant{p + "a": ga, p + "b": gb}
	for key, g := range want {
		l, ok := got[key]
		if !ok {
			t.Errorf("List(%q) lacks the held key %q; got %v", p, key, got)
			continue
		}
		if l.Token != g.Token || l.Owner != g.Owner || l.TTL != g.TTL {
			t.Errorf("List(%q)[%q] = %+v, want token %d owner %s TTL %v", p, key, l, g.Token, g.Owner, g.TTL)
		}
		if l.ExpiresAt.Before(start.Add(g.TTL-time.Second)) || l.ExpiresAt.After(end.Add(g.TTL+time.Second)) {
			t.Errorf("List(%q)[%q].ExpiresAt = %v, want about %v", p, key, l.ExpiresAt, start.Add(g.TTL))
		}
	}
	for key := range got {
		if _, ok := want[key]; !ok {
			t.Errorf("List(%q) returned %q, which is not held (released or expired)", p, key)
		}
	}

	// The whole listing has them too.
	all, _ := listAll(t, a, "", 1000)
	for key := range want {
		if _, ok := all[key]; !ok {
			t.Errorf("List(\"\") lacks the held key %q", key)
		}
	}
	if _, _, err := a.List(t.Context(), p, "", 0); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("List(limit 0) = %v, want ErrInvalid", err)
	}
}

// testListPrefix checks that a prefix is a prefix of the key's bytes, not
// of its '.'-separated tokens.
func testListPrefix(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	a := admin(t, s)
	p := NewKey(t) + "."
	for _, k := range []string{"x1", "x2", "xy.z", "y1", "y"} {
		mustAcquire(t, s, p+k, NewLockID(), store.AcquireOptions{})
	}
	for _, c := range []struct {
		prefix string
		want   []string
	}{
		{"x", []string{"x1", "x2", "xy.z"}},
		{"xy", []string{"xy.z"}},
		{"xy.", []string{"xy.z"}},
		{"x1", []string{"x1"}},
		{"y", []string{"y1", "y"}},
		{"z", nil},
		{"", []string{"x1", "x2", "xy.z", "y1", "y"}},
	} {
		got, _ := listAll(t, a, p+c.prefix, 2)
		for _, k := range c.want {
			if _, ok := got[p+k]; !ok {
				t.Errorf("List(%q) lacks %q; got %d keys", p+c.prefix, p+k, len(got))
			}
		}
		if len(got) != len(c.want) {
			t.Errorf("List(%q) = %d keys %v, want %v", p+c.prefix, len(got), keysOf(got), c.want)
		}
	}
}

func keysOf(m map[string]store.Lease) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	return keys
}

func testListPages(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	a := admin(t, s)
	p := NewKey(t) + "."
	tokens := make(map[string]uint64)
	for i := 0; i < 11; i++ {
		key := p + string(rune('a'+i))
		tokens[key] = mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{}).Token
	}
	for _, limit := range []int{1, 2, 3, 10, 11, 12, 1000} {
		got, again := listAll(t, a, p, limit)
		if again > 0 {
			t.Logf("List(%q, %d) returned %d keys again on a later page", p, limit, again)
		}
		if len(got) != len(tokens) {
			t.Errorf("List(%q, %d) = %d keys %v, want the %d held", p, limit, len(got), keysOf(got), len(tokens))
		}
		for key, tok := range tokens {
			if l, ok := got[key]; !ok || l.Token != tok {
				t.Errorf("List(%q, %d)[%q] = %+v (found %v), want token %d", p, limit, key, l, ok, tok)
			}
		}
	}
}

func testForce(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	s2 := newStore(t, Config{}) // another instance of the deployment forces
	a := admin(t, s2)
	key := NewKey(t)
	id := NewLockID()
	g := mustAcquire(t, s, key, id, store.AcquireOptions{Owner: "o"})
	if err := s.Write(t.Context(), key, id, set(`"kept"`)); err != nil {
		t.Fatal(err)
	}
	l, err := a.Force(t.Context(), key)
	if err != nil {
		t.Fatalf("Force(%q) = %v, want nil", key, err)
	}
	if l.Token != g.Token || l.Owner != "o" || l.TTL != ttl {
		t.Errorf("Force(%q) = %+v, want the lease it ended: token %d owner o TTL %v", key, l, g.Token, ttl)
	}
	if _, err := s.Refresh(t.Context(), key, id, ttl); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Refresh by the forced holder = %v, want ErrNotHeld", err)
	}
	if err := s.Write(t.Context(), key, id, set(`"stale"`)); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Write by the forced holder = %v, want ErrNotHeld", err)
	}
	if err := s.Release(t.Context(), key, id, set(`"stale"`)); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Release by the forced holder = %v, want ErrNotHeld", err)
	}
	info := mustGet(t, s, key)
	if info.Locked || string(info.Value) != `"kept"` {
		t.Errorf("Get after Force = locked %v value %q, want unlocked with the value \"kept\"", info.Locked, info.Value)
	}
	if got, _ := listAll(t, a, key, 10); len(got) != 0 {
		t.Errorf("List after Force = %v, want nothing", got)
	}
	if _, err := a.Force(t.Context(), key); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Force of a forced key = %v, want ErrNotHeld", err)
	}
	if _, err := a.Force(t.Context(), NewKey(t)); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Force of a key never used = %v, want ErrNotHeld", err)
	}
	id2 := NewLockID()
	g2 := mustAcquire(t, s, key, id2, store.AcquireOptions{})
	if g2.Token <= g.Token || string(g2.Value) != `"kept"` {
		t.Errorf("Acquire after Force = token %d value %q, want token > %d and value \"kept\"", g2.Token, g2.Value, g.Token)
	}
	if err := s.Release(t.Context(), key, id2, store.Update{}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Force(t.Context(), key); !errors.Is(err, store.ErrNotHeld) {
		t.Errorf("Force of a released key = %v, want ErrNotHeld", err)
	}
}

func testForceNotifies(t *testing.T, newStore Factory) {
	s := newStore(t, Config{})
	n, ok := s.(store.Notifier)
	if !ok {
		t.Skip("store does not implement store.Notifier")
	}
	a := admin(t, newStore(t, Config{}))
	events := make(chan store.Event, 100)
	n.Notify(func(e store.Event) { events <- e })
	key := NewKey(t)
	g := mustAcquire(t, s, key, NewLockID(), store.AcquireOptions{})
	if _, err := a.Force(t.Context(), key); err != nil {
		t.Fatalf("Force(%q) = %v", key, err)
	}
	waitEvent(t, events, key, store.Released, g.Token)
}
