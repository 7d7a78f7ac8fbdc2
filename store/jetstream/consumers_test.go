package jetstream

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
)

// TestCloseDuringRebuilds: Close while watcher rebuilds and store
// operations are in flight. No panic, no goroutine of the store left, and
// no consumer of the store left on the server.
func TestCloseDuringRebuilds(t *testing.T) {
	srv := testsrv.NATS(t, "")
	nc := testsrv.Connect(t, srv)
	ctx := t.Context()
	first, err := New(ctx, nc, Config{Bucket: "r5close"})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	time.Sleep(200 * time.Millisecond)
	base := runtime.NumGoroutine()
	for round := 0; round < 10; round++ {
		s, err := New(ctx, nc, Config{Bucket: "r5close"})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 5; i++ {
			acquire(t, s, fmt.Sprintf("r%d.k%d", round, i))
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				s.suspect(0)
				time.Sleep(time.Millisecond)
			}
		}()
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, cancel := context.WithTimeout(ctx, time.Second)
				_, _ = s.Get(c, fmt.Sprintf("k%d", i%5))
				_, _ = s.Acquire(c, fmt.Sprintf("f%d", i%50), "x", store.AcquireOptions{TTL: time.Second})
				cancel()
			}
		}()
		time.Sleep(time.Duration(50+round*30) * time.Millisecond)
		s.Close()
		close(stop)
		wg.Wait()
	}
	// Goroutines of this process outside the in-process nats-server.
	client := func() []string {
		buf := make([]byte, 8<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var out []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "nats-server/v2/server") || strings.Contains(g, "testing.tRunner") || strings.Contains(g, "runtime.Stack") {
				continue
			}
			out = append(out, g)
		}
		return out
	}
	_ = base
	deadline := time.Now().Add(5 * time.Second)
	var left []string
	for {
		left = client()
		if len(left) <= 8 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var ours []string
	for _, g := range left {
		if strings.Contains(g, "lockservice/store/jetstream") || strings.Contains(g, "nats.go/jetstream") {
			ours = append(ours, g)
		}
	}
	t.Logf("%d client-side goroutines 5 s after 10 stores were closed; %d in the store or nats.go/jetstream", len(left), len(ours))
	if len(ours) > 0 {
		t.Errorf("goroutines left by closed stores, e.g.:\n%s", strings.Join(ours[:min(3, len(ours))], "\n\n"))
	}
}

// TestCloseDeletesTheWatcherConsumers: each watcher rebuild (any
// connection blip) and Close stop an ordered consumer without deleting it;
// the server keeps it (memory, plus its pending pull request delivering the
// bucket's replay to an inbox nobody reads) until its 5-minute inactive
// threshold. Three blips and a Close leave four consumers behind.
func TestCloseDeletesTheWatcherConsumers(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := t.Context()
	s, err := New(ctx, testsrv.Connect(t, srv), Config{Bucket: "r5cons"})
	if err != nil {
		t.Fatal(err)
	}
	acquire(t, s, "k")
	for i := 0; i < 3; i++ {
		s.suspect(0)
		deadline := time.Now().Add(5 * time.Second)
		for {
			s.mu.Lock()
			ok := !s.w.broken && s.w.caughtUp
			s.mu.Unlock()
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no rebuild")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	js := s.js
	s.Close()
	time.Sleep(time.Second)
	st, err := js.Stream(ctx, "KV_r5cons")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for ci := range st.ListConsumers(ctx).Info() {
		names = append(names, ci.Name)
	}
	if len(names) > 0 {
		t.Errorf("the only store is closed, yet %d consumers remain on the bucket's stream: %v", len(names), names)
	}
}
