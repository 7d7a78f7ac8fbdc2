package jetstream

import (
	"encoding/base64"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/internal/testsrv"
)

// nestedRecord is a Lockservice-Lease header value that mpcheck accepts:
// a map {"x": [[[[...nil...]]]]} nested depth deep. Every length it
// declares fits in the bytes that follow (each fixarray declares one item),
// so mpcheck.Check passes it on to msgpack, which skips the unknown key's
// value recursively: one Go stack frame chain per level.
func nestedRecord(depth int) string {
	b := make([]byte, 0, depth+4)
	b = append(b, 0x81, 0xa1, 'x')
	for range depth {
		b = append(b, 0x91)
	}
	b = append(b, 0xc0)
	return base64.RawStdEncoding.EncodeToString(b)
}

// stackGrowth runs f on n fresh goroutines at once and returns how much the
// process's stack memory in use grew by the time all of them returned from
// f (their grown stacks are still in use then: each goroutine waits until
// the measurement is taken before it exits).
func stackGrowth(n int, f func()) uint64 {
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var ran sync.WaitGroup
	release := make(chan struct{})
	ran.Add(n)
	for range n {
		go func() {
			f()
			ran.Done()
			<-release
		}()
	}
	ran.Wait()
	runtime.ReadMemStats(&after)
	close(release)
	if after.StackInuse < before.StackInuse {
		return 0
	}
	return after.StackInuse - before.StackInuse
}

// TestAdversarialNestedRecordIsCheap: a record written by a client that may
// publish to the bucket must not make the store allocate a lot. A 62 KB
// Lockservice-Lease header (under JetStream's 64 KiB header limit) of nested
// one-element arrays under an unknown map key passes mpcheck and makes
// msgpack's Skip recurse 47k levels deep: every parse of it (each store's
// watcher, every Get/Acquire/Refresh that reads the key) grows a goroutine
// stack to 8 MB, about 130 times the record's size, and concurrent reads add
// up. (Without the header limit, a 1 MiB record costs 128 MB per parse.)
func TestAdversarialNestedRecordIsCheap(t *testing.T) {
	const depth = 47_000
	const limit = 1 << 20
	rec := nestedRecord(depth)

	t.Run("parse", func(t *testing.T) {
		hdr := nats.Header{leaseHeader: {rec}, natsjs.MsgTTLHeader: {"10s"}}
		var st lockState
		grew := stackGrowth(1, func() { st = parse(20, hdr, time.Now(), 10*time.Minute) })
		if st.held {
			t.Fatalf("parsed as held: %+v", st)
		}
		if grew > limit {
			t.Errorf("parsing one %d-byte lease record grew the stack by %d MB (corrupt=%q)", len(rec), grew>>20, st.corrupt)
		}
	})

	t.Run("get", func(t *testing.T) {
		srv := testsrv.NATS(t, "")
		s := newStore(t, srv.ClientURL())
		nc := testsrv.Connect(t, srv)
		const key = "nested.k"
		m := &nats.Msg{Subject: s.lockPfx + key, Header: nats.Header{leaseHeader: {rec}, natsjs.MsgTTLHeader: {"10s"}}}
		resp, err := nc.RequestMsg(m, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("published the record: %s", resp.Data)
		waitPos(t, s, lastSeq(t, s)) // the watcher has parsed it once already
		const gets = 16
		var errs atomic.Int64
		grew := stackGrowth(gets, func() {
			if info, err := s.Get(t.Context(), key); err != nil || info.Locked {
				errs.Add(1)
			}
		})
		if errs.Load() != 0 {
			t.Fatalf("%d Gets failed or said locked", errs.Load())
		}
		if grew > gets*limit {
			t.Errorf("%d concurrent Gets of a key holding a %d-byte adversarial lease record grew the stack by %d MB", gets, len(rec), grew>>20)
		}
	})
}
