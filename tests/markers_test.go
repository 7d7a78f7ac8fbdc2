package tests

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/client"
)

// markerTTL is the release and expiry markers' TTL in this scenario (the
// service's --marker-ttl), and so the longest lease (--max-ttl): a marker
// must outlive the leases before it on its subject (docs/STORES.md).
const markerTTL = 5 * time.Second

// expirySlack is how long after a lease's end (as the client counts it)
// the key may still be locked: the JetStream store rounds leases up to
// whole seconds (< 1 s), the server scans for expired messages every
// 250 ms, and the service then needs a store round trip; 3 s covers
// these with room for a loaded machine.
const expirySlack = 3 * time.Second

// TestFaultsKillAfterMarkerExpiry ("jetstream/kill-after-marker-expiry"):
// kill -9 nats-server once the release and expiry markers of ended leases
// have been removed by their TTL, in a stream spanning several file-store
// blocks, and check that no ended lease comes back.
//
// Each cycle: the workload runs (2 s leases, some left to expire); probe
// keys get a released lease (of the longest TTL) and an expired lease;
// the stream is filled with 24 state objects of 500 KiB on other keys
// (12 MiB: several blocks); the test polls the stream until no lease
// subject of the ended leases has a message left (every marker gone); then
// a probe takes a live lease of the longest TTL, and nats-server is killed
// and restarted on the same store directory. After
// the restart, directly: the released probe is unlocked and its old lock
// id cannot refresh; every key whose lease ended (probes and workload
// keys) is acquirable within expirySlack; the live probe is still held by
// its holder. All of it goes into the history, which is checked at the
// end with the workload's. Cycles repeat until -fault.duration has passed
// (at least one).
func TestFaultsKillAfterMarkerExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scenarios start real processes for several seconds each")
	}
	const name = "jetstream/kill-after-marker-expiry"
	d := newDeploy(t, "jetstream", 1, 2, "--marker-ttl", markerTTL.String(), "--max-ttl", markerTTL.String(), "--default-ttl", "2s")
	h := newHistory()
	w := &workload{natsURL: "nats://" + d.clientProxy.Addr(), clients: 4, keys: 3, ttl: 2 * time.Second,
		opBudget: 3 * time.Second, abandon: true}
	w.key(0)
	pr := newProber(t, d, h, w.prefix)
	end := time.Now().Add(*faultDuration)
	kills := 0
	for cycle := 0; cycle == 0 || time.Now().Before(end); cycle++ {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		w.runInto(t, ctx, h)
		cancel()
		probes := pr.setUp(cycle)
		pr.fill()
		var ended []string
		for i := 0; i < w.keys; i++ {
			ended = append(ended, w.key(i))
		}
		ended = append(ended, probes.released.Key(), probes.expired.Key())
		pr.awaitMarkersGone(ended)
		pr.takeLive(&probes, cycle)
		d.nats[0].Kill()
		kills++
		d.nats[0].Restart()
		pr.checkAfterRestart(probes, ended)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	w.runInto(t, ctx, h)
	cancel()
	summary := h.check(t, strings.ReplaceAll(name, "/", "-"))
	faults := []string{fmt.Sprintf("%d× kill -9 nats-server after the markers (TTL %v) of ended leases were removed, %d MiB of state objects written", kills, markerTTL, pr.filled>>20)}
	t.Logf("%s: %s; faults: %s", name, summary, faults[0])
	report(t, name, summary, faults)
}

// prober makes the probe leases, fills the stream and checks the keys
// after a restart, recording every operation in the history.
type prober struct {
	t      *testing.T
	d      *deploy
	h      *history
	prefix string
	cl     *client.Client
	js     natsjs.Stream
	filled int64 // bytes of state written by fill
}

const proberClient = 100 // client id of the prober's operations in the history

func newProber(t *testing.T, d *deploy, h *history, prefix string) *prober {
	nc, err := nats.Connect("nats://"+d.clientProxy.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cl, err := client.New(nc, client.WithRequestTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// The stream is read directly from nats-server (not through the proxy).
	jnc, err := nats.Connect(natsURL(d.natsAddrs), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(jnc.Close)
	js, err := natsjs.New(jnc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(t.Context(), "KV_lockservice")
	if err != nil {
		t.Fatalf("stream of the lock bucket: %v", err)
	}
	return &prober{t: t, d: d, h: h, prefix: prefix, cl: cl, js: s}
}

type probeLeases struct {
	released, expired, live *client.Lock
	// leases: the history's lease ids of the probe locks.
	releasedLease, expiredLease, liveLease int
	releasedValue                          string
}

// acquire takes key, recording it; it fails the test when not granted.
func (p *prober) acquire(key string, ttl, wait time.Duration) (*client.Lock, int, error) {
	lease := int(leaseIDs.Add(1))
	in := lockInput{kind: opAcquire, key: key, client: proberClient, lease: lease}
	call := p.h.now()
	ctx, cancel := context.WithTimeout(p.t.Context(), wait)
	l, err := p.cl.Acquire(ctx, key, client.WithTTL(ttl))
	cancel()
	if err != nil {
		p.h.add(proberClient, in, call, lockOutput{unknown: true})
		return nil, lease, err
	}
	p.h.add(proberClient, in, call, lockOutput{ok: true, token: l.Token(), value: string(l.Value()), deadline: p.h.at(l.Deadline())})
	return l, lease, nil
}

func (p *prober) release(l *client.Lock, lease int, value string) error {
	in := lockInput{kind: opRelease, key: l.Key(), client: proberClient, lease: lease, value: value}
	call := p.h.now()
	ctx, cancel := context.WithTimeout(p.t.Context(), 3*time.Second)
	var err error
	if value == "" {
		err = l.Release(ctx)
	} else {
		err = l.ReleaseWith(ctx, []byte(value))
	}
	cancel()
	p.h.add(proberClient, in, call, outcome(err))
	return err
}

func (p *prober) refresh(l *client.Lock, lease int, ttl time.Duration) error {
	in := lockInput{kind: opRefresh, key: l.Key(), client: proberClient, lease: lease}
	call := p.h.now()
	ctx, cancel := context.WithTimeout(p.t.Context(), 3*time.Second)
	err := l.Refresh(ctx, ttl)
	cancel()
	out := outcome(err)
	if out.ok {
		out.deadline = p.h.at(l.Deadline())
	}
	p.h.add(proberClient, in, call, out)
	return err
}

func (p *prober) get(key string) (*client.Info, error) {
	call := p.h.now()
	ctx, cancel := context.WithTimeout(p.t.Context(), 3*time.Second)
	info, err := p.cl.Get(ctx, key)
	cancel()
	if err == nil {
		p.h.addRead(proberClient, lockInput{kind: opGet, key: key, client: proberClient}, call,
			lockOutput{locked: info.Locked, token: info.Token, value: string(info.Value)})
	}
	return info, err
}

// setUp makes this cycle's probe leases: one released with a value, one
// left to expire (1 s).
func (p *prober) setUp(cycle int) probeLeases {
	t := p.t
	var pl probeLeases
	var err error
	key := func(s string) string { return fmt.Sprintf("%s.probe%d.%s", p.prefix, cycle, s) }
	if pl.released, pl.releasedLease, err = p.acquire(key("released"), markerTTL, 5*time.Second); err != nil {
		t.Fatalf("Acquire(%q) = %v", key("released"), err)
	}
	pl.releasedValue = fmt.Sprintf("released-%d", cycle)
	if err := p.release(pl.released, pl.releasedLease, pl.releasedValue); err != nil {
		t.Fatalf("ReleaseWith(%q) = %v", key("released"), err)
	}
	if pl.expired, pl.expiredLease, err = p.acquire(key("expired"), time.Second, 5*time.Second); err != nil {
		t.Fatalf("Acquire(%q) = %v", key("expired"), err)
	}
	return pl
}

// takeLive takes the live probe lease (the longest TTL), just before the
// kill, so that it is still live after the restart.
func (p *prober) takeLive(pl *probeLeases, cycle int) {
	var err error
	key := fmt.Sprintf("%s.probe%d.live", p.prefix, cycle)
	if pl.live, pl.liveLease, err = p.acquire(key, markerTTL, 5*time.Second); err != nil {
		p.t.Fatalf("Acquire(%q) = %v", key, err)
	}
}

// fill writes 24 state objects of 500 KiB on keys of their own, so that
// the stream spans several file-store blocks.
func (p *prober) fill() {
	value := []byte(strings.Repeat("f", 500<<10))
	for i := 0; i < 24; i++ {
		key := fmt.Sprintf("%s.fill.%d", p.prefix, i)
		ctx, cancel := context.WithTimeout(p.t.Context(), 10*time.Second)
		l, err := p.cl.Acquire(ctx, key, client.WithTTL(markerTTL))
		if err == nil {
			err = l.ReleaseWith(ctx, value)
		}
		cancel()
		if err != nil {
			p.t.Fatalf("fill %s: %v", key, err)
		}
		p.filled += int64(len(value))
	}
}

// awaitMarkersGone polls the stream until none of the keys' lease
// subjects has a message: every lease ended and its release or expiry
// marker was removed by its TTL.
func (p *prober) awaitMarkersGone(keys []string) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		for _, k := range keys {
			subj := "$KV.lockservice.l." + k
			ctx, cancel := context.WithTimeout(p.t.Context(), 2*time.Second)
			m, err := p.js.GetLastMsgForSubject(ctx, subj)
			cancel()
			switch {
			case errors.Is(err, natsjs.ErrMsgNotFound):
			case err != nil:
				left = append(left, fmt.Sprintf("%s: %v", k, err))
			default:
				left = append(left, fmt.Sprintf("%s: seq %d, %v old, headers %v", k, m.Sequence, time.Since(m.Time).Round(time.Millisecond), m.Header))
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("after 30s, lease subjects still have messages (leases not ended, or markers not removed):\n%s", strings.Join(left, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkAfterRestart checks the probes and every ended key once
// nats-server is back.
func (p *prober) checkAfterRestart(pl probeLeases, ended []string) {
	t := p.t
	// Wait until the service answers again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := p.get(pl.live.Key()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service does not answer 30s after nats-server restarted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	back := time.Now()
	// The released key is unlocked, with its value.
	if info, err := p.get(pl.released.Key()); err != nil {
		t.Errorf("Get(%q) = %v", pl.released.Key(), err)
	} else if info.Locked || string(info.Value) != pl.releasedValue {
		t.Errorf("released before the kill: Get(%q) after the restart = locked %v, token %d, value %q; want unlocked, value %q",
			pl.released.Key(), info.Locked, info.Token, info.Value, pl.releasedValue)
	}
	// Every key whose lease ended is acquirable within expirySlack
	// (their leases ended before the kill).
	for _, k := range ended {
		wait := max(time.Until(back.Add(expirySlack)), time.Second)
		l, lease, err := p.acquire(k, markerTTL, wait)
		if err != nil {
			info, gerr := p.get(k)
			t.Errorf("lease ended before the kill: Acquire(%q) within %v of the restart = %v; Get = %+v, %v", k, expirySlack, err, info, gerr)
			continue
		}
		if err := p.release(l, lease, ""); err != nil {
			t.Errorf("Release(%q) = %v", k, err)
		}
	}
	// The old lock ids hold nothing (after the checks above, which a
	// refresh would disturb when a lease came back).
	if err := p.refresh(pl.released, pl.releasedLease, time.Second); !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("released before the kill: Refresh(%q) by the old lock id after the restart and a new holder = %v, want %v", pl.released.Key(), err, client.ErrNotHeld)
	}
	if err := p.refresh(pl.expired, pl.expiredLease, time.Second); !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("expired before the kill: Refresh(%q) by the old lock id after the restart and a new holder = %v, want %v", pl.expired.Key(), err, client.ErrNotHeld)
	}
	// The live probe is still held by its holder.
	if info, err := p.get(pl.live.Key()); err != nil || !info.Locked || info.Token != pl.live.Token() {
		t.Errorf("held across the kill: Get(%q) = %+v, %v; want locked with token %d", pl.live.Key(), info, err, pl.live.Token())
	}
	if err := p.release(pl.live, pl.liveLease, ""); err != nil {
		t.Errorf("held across the kill: Release(%q) = %v", pl.live.Key(), err)
	}
}
