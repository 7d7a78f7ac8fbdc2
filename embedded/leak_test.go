package embedded_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/embedded"
)

func ourGoroutines() []string {
	buf := make([]byte, 1<<22)
	n := runtime.Stack(buf, true)
	var out []string
	for _, g := range strings.Split(string(buf[:n]), "\n\n") {
		if strings.Contains(g, "lockservice/") || strings.Contains(g, "nats-io/") {
			if strings.Contains(g, "ourGoroutines") {
				continue
			}
			out = append(out, g)
		}
	}
	return out
}

// TestNoGoroutineLeakAfterClose: after Close of an embedded server
// that served locks (with a parked wait, a reap of nothing, a watcher), no
// goroutine of lockservice, nats.go or nats-server is left.
func TestNoGoroutineLeakAfterClose(t *testing.T) {
	base := len(ourGoroutines())
	for round := 0; round < 3; round++ {
		srv, err := embedded.Start()
		if err != nil {
			t.Fatal(err)
		}
		c, err := client.New(srv.Conn())
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		l, err := c.Acquire(ctx, "leak.k", client.WithTTL(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		_ = l
		done := make(chan struct{})
		go func() {
			defer close(done)
			wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			c.Wait(wctx, "leak.k")
		}()
		time.Sleep(1500 * time.Millisecond) // the lease expires, the reaper runs
		<-done
		srv.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		gs := ourGoroutines()
		if len(gs) <= base {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left after Close (baseline %d):\n%s", len(gs), base, strings.Join(gs, "\n\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
