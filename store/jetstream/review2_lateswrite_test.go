package jetstream

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/storetest"
)

// slowProxy forwards a TCP connection, delaying every byte from the client
// to the server by delay (order kept); the way back is not delayed. It
// stands for a slow network, or a GC or scheduling pause of the service
// process between two requests.
func slowProxy(t testing.TB, target string, delay time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			type chunk struct {
				at time.Time
				b  []byte
			}
			q := make(chan chunk, 1<<16)
			go func() {
				defer close(q)
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						q <- chunk{time.Now(), append([]byte(nil), buf[:n]...)}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer u.Close()
				for ch := range q {
					time.Sleep(time.Until(ch.at.Add(delay)))
					if _, err := u.Write(ch.b); err != nil {
						return
					}
				}
			}()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return "nats://" + ln.Addr().String()
}

// TestReview2WriteLandsAfterLeaseEnd: a lock id whose lease has ended by
// the server's clock must never write. Write checks that the lease is live
// by the server's clock (STREAM.INFO) and then publishes the object guarded
// only by the lease subject's sequence. The lease message stays in the
// stream after its end until nats-server's expiry pass removes it, which
// runs at most every 250 ms (here 150 ms after the end, as in any bucket
// where another lease expired just before). A write decided just before the
// end whose publish reaches the server after it (100 ms on the way: a slow
// link or a pause of the process) is accepted: the object changes after the
// lease ended, when a get or an acquire on another instance already takes
// the key as free.
func TestReview2WriteLandsAfterLeaseEnd(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := context.Background()
	ncB := testsrv.Connect(t, srv)
	b, err := New(ctx, ncB, Config{Bucket: "late"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	const delay = 100 * time.Millisecond
	ncA, err := nats.Connect(slowProxy(t, srv.Addr().String(), delay), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncA.Close)
	a, err := New(ctx, ncA, Config{Bucket: "late"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })

	key, idA := "k", storetest.NewLockID()
	// Another lease that ends 100 ms before k's: the server's expiry pass
	// for it sets the next one 250 ms later.
	if _, err := b.Acquire(ctx, "other", storetest.NewLockID(), store.AcquireOptions{TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if _, err := b.Acquire(ctx, key, idA, store.AcquireOptions{TTL: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := b.Write(ctx, key, idA, store.Update{Op: store.Set, Value: []byte("v0")}); err != nil {
		t.Fatal(err)
	}
	lease, err := b.readLock(ctx, key)
	if err != nil || !lease.held {
		t.Fatalf("lease = %+v, %v", lease, err)
	}
	end := lease.end()
	now, err := b.serverNow(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Local time at which the server's clock reads end.
	localEnd := time.Now().Add(end.Sub(now))

	// A writes v1, v2, ... every 10 ms from 350 ms before the end to 50 ms
	// after it (by the server's clock).
	var wg sync.WaitGroup
	type res struct {
		v   string
		err error
	}
	results := make(chan res, 100)
	for i := 1; ; i++ {
		at := localEnd.Add(-350*time.Millisecond + time.Duration(i)*10*time.Millisecond)
		if at.After(localEnd.Add(50 * time.Millisecond)) {
			break
		}
		v := fmt.Sprintf("v%d", i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Until(at))
			results <- res{v, a.Write(ctx, key, idA, store.Update{Op: store.Set, Value: []byte(v)})}
		}()
	}
	wg.Wait()
	close(results)
	var ok []string
	for r := range results {
		if r.err == nil {
			ok = append(ok, r.v)
		}
	}
	obj, err := b.getLast(ctx, b.objPfx+key)
	if err != nil {
		t.Fatal(err)
	}
	marker, _ := b.getLast(ctx, b.lockPfx+key)
	t.Logf("lease end %s; writes acknowledged: %v; last object %q stored %v after the end; lease subject now seq %d %v, stored %v after the end",
		end.Format("15:04:05.000"), ok, obj.Data, obj.Time.Sub(end), marker.Sequence, marker.Header, marker.Time.Sub(end))
	if !obj.Time.Before(end) {
		t.Errorf("lock id %s wrote %q %v after its lease ended by the server's clock (the write was acknowledged)", idA, obj.Data, obj.Time.Sub(end))
	}
}
