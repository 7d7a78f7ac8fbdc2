package testsrv

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP proxy on loopback for fault tests. It can cut every
// connection through it and refuse new ones (a partition) until Heal,
// switch its target (a failover), hold back what the server sends (Stall,
// Resume: a reply that arrives late), and delay what the client sends
// (UpstreamDelay: a slow link or a paused process).
type Proxy struct {
	ln     net.Listener
	delay  time.Duration
	mu     sync.Mutex
	target string
	cut    bool
	conns  map[net.Conn]struct{}
	resume chan struct{} // non-nil while stalled
}

// ProxyOption configures NewProxy.
type ProxyOption func(*Proxy)

// UpstreamDelay delays every byte from the client to the server by d,
// keeping their order.
func UpstreamDelay(d time.Duration) ProxyOption { return func(p *Proxy) { p.delay = d } }

// NewProxy listens on a free loopback port and forwards to target; it is
// closed with the test.
func NewProxy(t testing.TB, target string, opts ...ProxyOption) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	for _, o := range opts {
		o(p)
	}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.Resume(); p.Cut() })
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		cut, target := p.cut, p.target
		p.mu.Unlock()
		if cut {
			c.Close()
			continue
		}
		go p.pipe(c, target)
	}
}

func (p *Proxy) pipe(c net.Conn, target string) {
	u, err := net.DialTimeout("tcp", target, time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := func() {
		c.Close()
		u.Close()
		p.mu.Lock()
		delete(p.conns, c)
		delete(p.conns, u)
		p.mu.Unlock()
	}
	go func() { p.upstream(u, c); done() }()
	p.downstream(c, u)
	done()
}

// upstream copies client bytes to the server, each delay after it came.
func (p *Proxy) upstream(u, c net.Conn) {
	if p.delay == 0 {
		io.Copy(u, c)
		return
	}
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
	for ch := range q {
		time.Sleep(time.Until(ch.at.Add(p.delay)))
		if _, err := u.Write(ch.b); err != nil {
			return
		}
	}
}

// downstream copies server bytes to the client, holding them while stalled.
func (p *Proxy) downstream(c, u net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := u.Read(buf)
		if n > 0 {
			p.mu.Lock()
			resume := p.resume
			p.mu.Unlock()
			if resume != nil {
				<-resume
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Cut drops every connection and refuses new ones until Heal.
func (p *Proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Heal accepts connections again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// SetTarget points new connections at addr and drops the current ones.
func (p *Proxy) SetTarget(addr string) {
	p.mu.Lock()
	p.target = addr
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Stall holds back what the server sends until Resume.
func (p *Proxy) Stall() {
	p.mu.Lock()
	if p.resume == nil {
		p.resume = make(chan struct{})
	}
	p.mu.Unlock()
}

// Resume delivers what Stall held back, in order, and lets the rest flow.
func (p *Proxy) Resume() {
	p.mu.Lock()
	if p.resume != nil {
		close(p.resume)
		p.resume = nil
	}
	p.mu.Unlock()
}
