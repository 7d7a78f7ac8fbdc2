package redis_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/redis"
	"github.com/lockservice/lockservice/store/storetest"
)

// listKeys returns the keys of every page of List(prefix).
func listKeys(t *testing.T, s *redis.Store, prefix string) []string {
	t.Helper()
	var keys []string
	for cursor, pages := "", 0; ; pages++ {
		if pages > 1000 {
			t.Fatalf("List(%q) did not end", prefix)
		}
		held, next, err := s.List(t.Context(), prefix, cursor, 2)
		if err != nil {
			t.Fatalf("List(%q) = %v", prefix, err)
		}
		for _, h := range held {
			if !slices.Contains(keys, h.Key) {
				keys = append(keys, h.Key)
			}
		}
		if next == "" {
			slices.Sort(keys)
			return keys
		}
		cursor = next
	}
}

// TestListEscapesGlob: a prefix or namespace with SCAN MATCH's glob
// characters matches itself only.
func TestListEscapesGlob(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	rdb := srv.Client(t)
	s := newStore(t, rdb, redis.Config{Namespace: "n*s?"})
	other := newStore(t, rdb, redis.Config{Namespace: "nXsY"})
	p := storetest.NewKey(t) + "."
	suffixes := []string{"g*1", "g?2", "g[3]", `g\4`, "g]5", "gx6", "g^7", "g-8"}
	for _, k := range suffixes {
		mustAcquire(t, s, p+k, storetest.NewLockID())
		mustAcquire(t, other, p+k+"-other", storetest.NewLockID())
	}
	for _, c := range []struct{ prefix, want string }{
		{"g*", "g*1"}, {"g?", "g?2"}, {"g[", "g[3]"}, {"g[3", "g[3]"}, {`g\`, `g\4`}, {"g]", "g]5"}, {"g^", "g^7"}, {"g-", "g-8"},
	} {
		if got := listKeys(t, s, p+c.prefix); !slices.Equal(got, []string{p + c.want}) {
			t.Errorf("List(%q) = %q, want [%q]", p+c.prefix, got, p+c.want)
		}
	}
	var want []string
	for _, k := range suffixes {
		want = append(want, p+k)
	}
	slices.Sort(want)
	if got := listKeys(t, s, p+"g"); !slices.Equal(got, want) {
		t.Errorf("List(%q) in namespace n*s? = %q, want %q", p+"g", got, want)
	}
}

// TestListAfterRestartAsksToStartAgain: a SCAN cursor means nothing to
// another server process, so a listing that was scanning a server that has
// restarted fails instead of going on from a meaningless position.
func TestListAfterRestartAsksToStartAgain(t *testing.T) {
	t.Parallel()
	srv := testsrv.StartRedis(t)
	s := newStore(t, srv.Client(t), redis.Config{})
	p := storetest.NewKey(t) + "."
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		mustAcquire(t, s, p+k, storetest.NewLockID())
	}
	_, cursor, err := s.List(t.Context(), p, "", 2)
	if err != nil || cursor == "" {
		t.Fatalf("first page = cursor %q, %v; want more pages", cursor, err)
	}
	srv.Restart(t)
	if _, _, err := s.List(t.Context(), p, cursor, 2); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("List after a restart with the earlier cursor = %v, want ErrInvalid (list again from the start)", err)
	}
	if held, next, err := s.List(t.Context(), p, "", 2); err != nil || len(held) != 0 || next != "" {
		t.Errorf("List from the start after a restart without persistence = %v, %q, %v; want nothing", held, next, err)
	}
}
