package storegate_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/memstore"
)

var opts = store.AcquireOptions{TTL: time.Minute}

func newMem(t testing.TB) *memstore.Store {
	t.Helper()
	srv, err := memstore.NewServer(memstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	s := memstore.New(srv)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestHoldUntilOpen: a held call waits at the gate, unapplied, until it is
// opened; other calls go straight through meanwhile.
func TestHoldUntilOpen(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st, g := storegate.New(t, newMem(t))
		h := g.Hold(storegate.Acquire, "a")
		errc := make(chan error, 1)
		go func() {
			_, err := st.Acquire(t.Context(), "k", "a", opts)
			errc <- err
		}()
		h.WaitEntered(t, 10*time.Second)
		synctest.Wait()
		if isClosed(h.Done()) {
			t.Fatal("held call returned before Open")
		}
		if info, err := st.Get(t.Context(), "k"); err != nil || info.Locked {
			t.Fatalf("Get while held = %+v, %v, want unlocked (the acquire not applied yet)", info, err)
		}
		if _, err := st.Acquire(t.Context(), "other", "a", opts); err != nil {
			t.Fatalf("a second Acquire for a = %v, want it not held (one call per Hold)", err)
		}
		h.Open()
		if err := <-errc; err != nil {
			t.Fatalf("held Acquire = %v", err)
		}
		<-h.Done()
		if info, _ := st.Get(t.Context(), "k"); !info.Locked {
			t.Errorf("Get after Open = %+v, want locked", info)
		}
	})
}

// TestFailModes: Fail answers without applying, FailAfter applies and
// answers with the error; an opened Hold does not block.
func TestFailModes(t *testing.T) {
	injected := fmt.Errorf("%w: injected", store.ErrUnavailable)
	for _, tc := range []struct {
		name    string
		after   bool
		applied bool
	}{
		{"Fail", false, false},
		{"FailAfter", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, g := storegate.New(t, newMem(t))
			h := g.Hold(storegate.Acquire, "k")
			if tc.after {
				h.FailAfter(injected)
			} else {
				h.Fail(injected)
			}
			h.Open()
			gr, err := st.Acquire(t.Context(), "k", "a", opts)
			if !errors.Is(err, injected) || gr.Token != 0 {
				t.Errorf("Acquire = %+v, %v, want the zero grant and the injected error", gr, err)
			}
			info, err := st.Get(t.Context(), "k")
			if err != nil || info.Locked != tc.applied {
				t.Errorf("Get = %+v, %v, want locked %v", info, err, tc.applied)
			}
		})
	}
}

// TestContextEndsTheWait: a held call whose context ends returns the
// context's error without reaching the store.
func TestContextEndsTheWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st, g := storegate.New(t, newMem(t))
		g.Hold(storegate.Write, "a")
		if _, err := st.Acquire(t.Context(), "k", "a", opts); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		err := st.Write(ctx, "k", "a", store.Update{Op: store.Set, Value: []byte("v")})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Write = %v, want DeadlineExceeded", err)
		}
		if info, _ := st.Get(t.Context(), "k"); info.Value != nil {
			t.Errorf("value = %q, want none (the write never reached the store)", info.Value)
		}
	})
}

// TestMatching: holds match by key or lock id (either of Transfer's), an
// empty id matches any call, and holds are used in the order of Hold.
func TestMatching(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st, g := storegate.New(t, newMem(t))
		tr := st.(store.Transferrer)
		if _, err := st.Acquire(t.Context(), "k", "a", opts); err != nil {
			t.Fatal(err)
		}
		byTo := g.Hold(storegate.Transfer, "b")
		anyGet1, anyGet2 := g.Hold(storegate.Get, ""), g.Hold(storegate.Get, "")
		anyGet2.Fail(errors.New("second"))
		anyGet1.Open()
		anyGet2.Open()
		if _, err := st.Get(t.Context(), "k"); err != nil {
			t.Errorf("first Get = %v, want the first hold (open, no failure)", err)
		}
		if _, err := st.Get(t.Context(), "x"); err == nil || err.Error() != "second" {
			t.Errorf("second Get = %v, want the second hold's failure", err)
		}
		if _, err := st.Get(t.Context(), "k"); err != nil {
			t.Errorf("third Get = %v, want no hold left", err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := tr.Transfer(t.Context(), "k", "a", store.Update{}, "b", opts)
			done <- err
		}()
		<-byTo.Entered()
		byTo.Open()
		if err := <-done; err != nil {
			t.Fatalf("Transfer = %v", err)
		}
		byFrom := g.Hold(storegate.Transfer, "b")
		byFrom.FailAfter(errors.New("lost reply"))
		byFrom.Open()
		if _, err := tr.Transfer(t.Context(), "k", "b", store.Update{}, "c", opts); err == nil {
			t.Errorf("Transfer from b = nil, want the injected error")
		}
		if err := st.Release(t.Context(), "k", "c", store.Update{}); err != nil {
			t.Errorf("Release by c = %v, want the transfer applied", err)
		}
	})
}

// TestInterfacesPreserved: the wrapper implements Notifier and
// Transferrer exactly when the wrapped store does.
func TestInterfacesPreserved(t *testing.T) {
	mem := newMem(t)
	type (
		plain struct{ store.Store }
		withN struct {
			store.Store
			store.Notifier
		}
		withT struct {
			store.Store
			store.Transferrer
		}
	)
	for _, tc := range []struct {
		st                  store.Store
		notifies, transfers bool
	}{
		{plain{mem}, false, false},
		{withN{mem, mem}, true, false},
		{withT{mem, mem}, false, true},
		{mem, true, true},
	} {
		st, _ := storegate.New(t, tc.st)
		_, n := st.(store.Notifier)
		_, tr := st.(store.Transferrer)
		if n != tc.notifies || tr != tc.transfers {
			t.Errorf("wrapper of %T: Notifier %v Transferrer %v, want %v %v", tc.st, n, tr, tc.notifies, tc.transfers)
		}
	}
}

// TestNotifyForwarded: events of the wrapped store reach the wrapper's
// Notify function.
func TestNotifyForwarded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		st, _ := storegate.New(t, newMem(t))
		evs := make(chan store.Event, 1)
		st.(store.Notifier).Notify(func(e store.Event) { evs <- e })
		g, _ := st.Acquire(t.Context(), "k", "a", opts)
		_ = st.Release(t.Context(), "k", "a", store.Update{})
		synctest.Wait()
		if e := <-evs; e.Kind != store.Released || e.Token != g.Token {
			t.Errorf("event = %+v, want Released with token %d", e, g.Token)
		}
	})
}
