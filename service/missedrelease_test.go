package service_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// cutProxy is a TCP proxy that can drop its connections and refuse new ones.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			cut := p.cut
			p.mu.Unlock()
			if cut {
				c.Close()
				continue
			}
			go p.pipe(c)
		}
	}()
	t.Cleanup(func() { ln.Close(); p.Cut() })
	return p
}

func (p *cutProxy) pipe(c net.Conn) {
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	go func() { io.Copy(u, c); c.Close(); u.Close() }()
	io.Copy(c, u)
	c.Close()
	u.Close()
}

func (p *cutProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
}

func (p *cutProxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// TestParkedWaitWokenAfterReleaseMissedInDisconnect: a wait parked
// on instance B must be answered once the key is released, even when B's
// connection to NATS was down at the moment of the release (so the
// lock.released event, core NATS, never reached it). B's store watcher is
// rebuilt on reconnect and sees the release marker (it reports it as a
// store.Released event), but the service ignores every store event but
// Expired (onStoreEvent), and no other path re-checks parked keys: the wait
// stays parked until its wait_ms, although the key has been free since the
// release.
func TestParkedWaitWokenAfterReleaseMissedInDisconnect(t *testing.T) {
	srv := testsrv.NATS(t, "")
	url := srv.ClientURL()
	px := newCutProxy(t, srv.Addr().String())

	// Instance B, on a connection through the proxy.
	ncB, err := nats.Connect("nats://"+px.ln.Addr().String(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncB.Close)
	stB, err := jsstore.New(t.Context(), ncB, jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stB.Close() })
	svcB, err := service.New(ncB, stB, service.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svcB.Stop() })

	cl := testsrv.ConnectURL(t, url)
	key := "missed.release"
	got, code, msg := raw(t, cl, "lock.acquire."+key, `{"ttl_ms":60000}`)
	if code != 0 || got["acquired"] != true {
		t.Fatalf("acquire = %v %d %s", got, code, msg)
	}
	id := got["lock_id"].(string)

	// A wait parked on B (the only instance so far).
	type result struct {
		m   *nats.Msg
		err error
		at  time.Time
	}
	waitc := make(chan result, 1)
	go func() {
		m, err := cl.Request("lock.wait."+key, []byte(`{"wait_ms":20000}`), 30*time.Second)
		waitc <- result{m, err, time.Now()}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for svcB.Stats().ParkedWaiters != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("wait not parked on B: stats %v", svcB.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Instance A, directly connected.
	ncA := testsrv.ConnectURL(t, url)
	stA, err := jsstore.New(t.Context(), ncA, jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stA.Close() })
	startInstance(t, url, stA, service.Config{})

	// B loses NATS for a moment; the holder releases meanwhile (served by A).
	px.Cut()
	time.Sleep(300 * time.Millisecond)
	got, code, msg = raw(t, cl, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, id))
	if code != 0 || got["released"] != true {
		t.Fatalf("release = %v %d %s", got, code, msg)
	}
	released := time.Now()
	time.Sleep(300 * time.Millisecond)
	px.Heal()

	select {
	case r := <-waitc:
		if r.err != nil {
			t.Fatalf("wait: %v", r.err)
		}
		var body map[string]any
		_ = json.Unmarshal(r.m.Data, &body)
		t.Logf("wait answered %v after the release: %s %v", r.at.Sub(released).Round(time.Millisecond), r.m.Header, body)
		if r.m.Header.Get("Nats-Service-Error-Code") != "" {
			t.Fatalf("wait answered with an error %v after the key was released", r.m.Header)
		}
	case <-time.After(5 * time.Second):
		info, _, _ := raw(t, cl, "lock.get."+key, ``)
		t.Fatalf("wait parked on B still unanswered 5 s after the release (B reconnected 4.7 s ago); get says %v; B stats %v", info, svcB.Stats())
	}
}

// stallProxy forwards a TCP connection; while stalled, bytes from the
// server to the client are held back (and delivered, in order, on resume).
type stallProxy struct {
	ln      net.Listener
	mu      sync.Mutex
	stalled bool
	resume  chan struct{}
}

func newStallProxy(t testing.TB, target string) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln}
	var conns []net.Conn
	var cmu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		p.Resume()
		cmu.Lock()
		for _, c := range conns {
			c.Close()
		}
		cmu.Unlock()
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
			cmu.Lock()
			conns = append(conns, c, u)
			cmu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := u.Read(buf)
					if n > 0 {
						p.mu.Lock()
						ch := p.resume
						stalled := p.stalled
						p.mu.Unlock()
						if stalled {
							<-ch
						}
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	return p
}

func (p *stallProxy) Stall() {
	p.mu.Lock()
	if !p.stalled {
		p.stalled, p.resume = true, make(chan struct{})
	}
	p.mu.Unlock()
}

func (p *stallProxy) Resume() {
	p.mu.Lock()
	if p.stalled {
		p.stalled = false
		close(p.resume)
	}
	p.mu.Unlock()
}

// TestParkedWaitWokenAfterReleaseWithLostAck: the store applies a
// release but its ack arrives after the service's store timeout (a slow
// link to NATS, a busy server): the client gets 503 (outcome unknown) and
// the service publishes no lock.released event and wakes no local waiter.
// The key is free, and the instance's own store watcher sees the release
// marker (a store.Released event), but the service ignores it: a wait
// parked on this very instance stays parked until its wait_ms.
func TestParkedWaitWokenAfterReleaseWithLostAck(t *testing.T) {
	srv := testsrv.NATS(t, "")
	url := srv.ClientURL()
	px := newStallProxy(t, srv.Addr().String())
	ncStore, err := nats.Connect("nats://"+px.ln.Addr().String(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncStore.Close)
	st, err := jsstore.New(t.Context(), ncStore, jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	startInstance(t, url, st, service.Config{StoreTimeout: 500 * time.Millisecond})

	cl := testsrv.ConnectURL(t, url)
	key := "lost.ack"
	got, code, msg := raw(t, cl, "lock.acquire."+key, `{"ttl_ms":60000}`)
	if code != 0 || got["acquired"] != true {
		t.Fatalf("acquire = %v %d %s", got, code, msg)
	}
	id := got["lock_id"].(string)
	waitc := make(chan *nats.Msg, 1)
	go func() {
		m, _ := cl.Request("lock.wait."+key, []byte(`{"wait_ms":20000}`), 30*time.Second)
		waitc <- m
	}()
	time.Sleep(300 * time.Millisecond) // parked

	px.Stall()
	got, code, msg = raw(t, cl, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, id))
	t.Logf("release answered %v %d %s", got, code, msg)
	time.Sleep(200 * time.Millisecond)
	px.Resume()
	released := time.Now()

	info, _, _ := raw(t, cl, "lock.get."+key, ``)
	if info["locked"] != false {
		t.Fatalf("get after the release = %v: the release was not applied, test setup broken", info)
	}
	select {
	case m := <-waitc:
		t.Logf("wait answered %v after the release: %v %s", time.Since(released).Round(time.Millisecond), m.Header, m.Data)
	case <-time.After(5 * time.Second):
		t.Fatalf("the key is free (get: %v) but the wait parked on the instance that released it is still unanswered 5 s later", info)
	}
}
