package tests

// Reproducer for nats-server issue 8505 at the nats-server level (no
// lockservice code): on an R1 file-storage stream with MaxMsgsPerSubject 1,
// a message removed by a newer message on its subject (a purge marker, a
// server MaxAge marker, or a plain replacement) comes back after kill -9 once
// that newer message is gone (its Nats-TTL expired). See docs/UPSTREAM-REVIVE.md.
//
//	go test ./tests -run TestUpstreamRevive -upstream -v -count=1
//	go test ./tests -run TestUpstreamRevive -upstream -upstream.version v2.15.3 -v -count=1
//
// Each case logs "OBSERVED:" lines, and fails (t.Errorf "REVIVED"/"NEVER
// EXPIRED") where the server breaks what it acknowledged before the kill.

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

var (
	upstreamRun     = flag.Bool("upstream", false, "run TestUpstreamRevive (nats-server kill -9 revival reproducer)")
	upstreamVersion = flag.String("upstream.version", "", "nats-server release for TestUpstreamRevive, built from the Go module proxy (default: the go.mod version)")
)

const revStream = "REV"

// revRig is one nats-server process with one stream shaped like the
// lockservice bucket: R1, file storage, MaxMsgsPerSubject 1, AllowMsgTTL,
// SubjectDeleteMarkerTTL 1s, AllowRollup.
type revRig struct {
	t     *testing.T
	p     *proc
	store string
	url   string
	nc    *nats.Conn
	js    natsjs.JetStream
	t0    time.Time
}

// revOpts: syncAlways sets sync_interval: always; bare skips the junk
// message at seq 1 that forceIndex needs.
type revOpts struct{ syncAlways, bare bool }

func newRevRig(t *testing.T, o revOpts) *revRig {
	t.Helper()
	needBinaries(t)
	bin := bins.natsServer
	if *upstreamVersion != "" {
		bin = oldNATSServer(t, *upstreamVersion)
	}
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	store := t.TempDir()
	js := fmt.Sprintf("store_dir: %q", store)
	if o.syncAlways {
		js += ", sync_interval: always"
	}
	conf := fmt.Sprintf("server_name: rev\nlisten: %s\njetstream { %s }\n", addr, js)
	r := &revRig{t: t, store: store, url: "nats://" + addr, t0: time.Now()}
	r.p = startProc(t, "nats-rev", bin, []string{"-c", writeFile(t, "rev.conf", conf)}, dialable(addr))
	r.connect()
	_, err := r.js.CreateStream(t.Context(), natsjs.StreamConfig{
		Name: revStream, Subjects: []string{"kv.>", "fill.>"},
		Storage: natsjs.FileStorage, Replicas: 1,
		MaxMsgsPerSubject: 1, AllowMsgTTL: true, SubjectDeleteMarkerTTL: time.Second,
		AllowRollup: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !o.bare {
		r.pub("fill.head", []byte("junk"), nil) // seq 1, for forceIndex
	}
	return r
}

func (r *revRig) connect() {
	r.t.Helper()
	nc, err := nats.Connect(r.url)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(nc.Close)
	js, _ := natsjs.New(nc)
	r.nc, r.js = nc, js
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := js.Stream(r.t.Context(), revStream)
		if err == nil || err == natsjs.ErrStreamNotFound {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("JetStream not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *revRig) logf(format string, a ...any) {
	r.t.Helper()
	r.t.Logf("[t=%5.1fs] "+format, append([]any{time.Since(r.t0).Seconds()}, a...)...)
}

// pub publishes and returns the stream sequence. ttl "" = no Nats-TTL.
func (r *revRig) pub(subj string, data []byte, hdr nats.Header) uint64 {
	r.t.Helper()
	pa, err := r.js.PublishMsg(r.t.Context(), &nats.Msg{Subject: subj, Data: data, Header: hdr})
	if err != nil {
		r.t.Fatalf("publish %s: %v", subj, err)
	}
	return pa.Sequence
}

// lease: a value with a per-message TTL ("" = permanent).
func (r *revRig) lease(subj, data, ttl string) uint64 {
	r.t.Helper()
	h := nats.Header{}
	if ttl != "" {
		h.Set("Nats-TTL", ttl)
	}
	seq := r.pub(subj, []byte(data), h)
	r.logf("put %s %q Nats-TTL=%q -> seq %d", subj, data, ttl, seq)
	return seq
}

// purgeMarker: what a KV purge (and the lockservice release) publishes.
func (r *revRig) purgeMarker(subj, ttl string) uint64 {
	r.t.Helper()
	h := nats.Header{}
	h.Set("KV-Operation", "PURGE")
	h.Set("Nats-Rollup", "sub")
	if ttl != "" {
		h.Set("Nats-TTL", ttl)
	}
	seq := r.pub(subj, nil, h)
	r.logf("purge marker on %s Nats-TTL=%q -> seq %d", subj, ttl, seq)
	return seq
}

// fill writes n × 512 KiB on prefix.0..n-1 (7 fit in one 4 MiB block).
func (r *revRig) fill(prefix string, n int) { r.t.Helper(); r.fillFrom(prefix, 0, n) }

func (r *revRig) fillFrom(prefix string, from, n int) {
	r.t.Helper()
	buf := make([]byte, 512<<10)
	for i := from; i < from+n; i++ {
		r.pub(fmt.Sprintf("%s.%d", prefix, i), buf, nil)
	}
	r.logf("filled %d x 512 KiB on %s.%d..%d", n, prefix, from, from+n-1)
}

type revMsg struct {
	Seq  uint64
	Hdr  string
	Data string
	Time time.Time
}

func (m *revMsg) String() string {
	if m == nil {
		return "none (404)"
	}
	h := strings.TrimSpace(strings.ReplaceAll(strings.TrimPrefix(m.Hdr, "NATS/1.0\r\n"), "\r\n", " "))
	return fmt.Sprintf("seq %d data %q hdr [%s] stored %s", m.Seq, m.Data, h, m.Time.Format("15:04:05.000"))
}

// last is STREAM.MSG.GET last_by_subj; nil when the subject has no message.
func (r *revRig) last(subj string) *revMsg {
	r.t.Helper()
	req, _ := json.Marshal(map[string]string{"last_by_subj": subj})
	resp, err := r.nc.Request("$JS.API.STREAM.MSG.GET."+revStream, req, 5*time.Second)
	if err != nil {
		r.t.Fatalf("msg get %s: %v", subj, err)
	}
	var out struct {
		Message *struct {
			Seq  uint64    `json:"seq"`
			Hdrs []byte    `json:"hdrs"`
			Data []byte    `json:"data"`
			Time time.Time `json:"time"`
		} `json:"message"`
		Error *struct {
			Code    int    `json:"code"`
			ErrCode int    `json:"err_code"`
			Desc    string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &out); err != nil {
		r.t.Fatalf("msg get %s: %v: %s", subj, err, resp.Data)
	}
	if out.Error != nil {
		if out.Error.Code == 404 {
			return nil
		}
		r.t.Fatalf("msg get %s: %+v", subj, out.Error)
	}
	return &revMsg{Seq: out.Message.Seq, Hdr: string(out.Message.Hdrs), Data: string(out.Message.Data), Time: out.Message.Time}
}

func (r *revRig) state() string {
	r.t.Helper()
	s, err := r.js.Stream(r.t.Context(), revStream)
	if err != nil {
		r.t.Fatal(err)
	}
	st := s.CachedInfo().State
	return fmt.Sprintf("msgs=%d first=%d last=%d deleted=%d", st.Msgs, st.FirstSeq, st.LastSeq, st.NumDeleted)
}

// waitLast polls until cond holds for the subject's last message.
func (r *revRig) waitLast(subj string, within time.Duration, what string, cond func(*revMsg) bool) bool {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if cond(r.last(subj)) {
			return true
		}
		if time.Now().After(deadline) {
			r.logf("%s: not within %v (last: %v)", what, within, r.last(subj))
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func gone(m *revMsg) bool { return m == nil }

// forceIndex makes the server write msgs/index.db and thw.db now (it does so
// by itself only every 2-2.5 min, from flushStreamStateLoop, and on a clean
// shutdown). A purge request {"seq": 2} compacts away the junk message every
// rig starts with (seq 1), and fileStore.compact calls forceWriteFullState.
// (A stream snapshot no longer does in 2.15: it streams messages.) Once per rig.
func (r *revRig) forceIndex() {
	r.t.Helper()
	resp, err := r.nc.Request("$JS.API.STREAM.PURGE."+revStream, []byte(`{"seq":2}`), 5*time.Second)
	if err != nil || !strings.Contains(string(resp.Data), `"purged":1`) {
		r.t.Fatalf("purge seq 2: %v %s", err, resp.Data)
	}
	r.logf("forced index.db/thw.db write (purge up to seq 2 = compact); files: %s", r.indexFiles())
}

func (r *revRig) indexFiles() string {
	dir := filepath.Join(r.store, "jetstream", "$G", "streams", revStream, "msgs")
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return strings.Join(names, " ")
}

// crash kills the server with SIGKILL and starts it again on the same store.
func (r *revRig) crash() {
	r.t.Helper()
	r.logf("kill -9 (msgs dir: %s)", r.indexFiles())
	r.p.Kill()
	r.nc.Close()
	r.p.Restart()
	r.connect()
	r.logf("restarted; state %s", r.state())
	for _, l := range strings.Split(r.p.tail(), "\n") {
		if strings.Contains(l, "Stream state") || strings.Contains(l, "TTL state") || strings.Contains(l, "Filestore") {
			if i := strings.Index(l, "]"); i > 0 {
				l = l[i+1:]
			}
			r.logf("server log:%s", l)
		}
	}
}

// observe reports the subject's last message and fails if it is one of bad.
func (r *revRig) observe(subj, want string, bad map[uint64]string) *revMsg {
	r.t.Helper()
	m := r.last(subj)
	r.logf("OBSERVED: last(%s) = %v (correct: %s)", subj, m, want)
	if m != nil {
		if name, ok := bad[m.Seq]; ok {
			r.t.Errorf("REVIVED: %s came back as the last message of %s: %v", name, subj, m)
		}
	}
	return m
}

// checkExpires waits for a revived message with a TTL to be expired by the
// server (gone, or replaced by a MaxAge marker) and reports which.
func (r *revRig) checkExpires(subj string, m *revMsg, ttlEnd time.Time) {
	r.t.Helper()
	if m == nil {
		return
	}
	wait := time.Until(ttlEnd) + 3*time.Second
	if wait < 5*time.Second {
		wait = 5 * time.Second
	}
	r.logf("revived seq %d: TTL end %s (%+.1fs from now); waiting %v for the server to expire it", m.Seq, ttlEnd.Format("15:04:05.000"), time.Until(ttlEnd).Seconds(), wait.Round(time.Second))
	if r.waitLast(subj, wait, "expiry of revived message", func(x *revMsg) bool { return x == nil || x.Seq != m.Seq }) {
		r.logf("OBSERVED: revived seq %d was expired by the server; last now %v", m.Seq, r.last(subj))
	} else {
		r.logf("OBSERVED: revived seq %d NEVER EXPIRED (still last %v after its TTL end)", m.Seq, wait)
		r.t.Errorf("NEVER EXPIRED: revived seq %d on %s", m.Seq, subj)
	}
}

func TestUpstreamRevive(t *testing.T) {
	if !*upstreamRun {
		t.Skip("nats-server reproducer; run with -upstream")
	}
	const L = "kv.l.a"

	// (a) released: lease (600s), purge marker with Nats-TTL 1s, several blocks.
	t.Run("released/marker-then-fill", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "600s")
		r.lease("kv.s.keep", "keep", "")
		p := r.purgeMarker(L, "1s")
		r.fill("fill", 40)
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.logf("before kill: last(%s)=%v state %s", L, r.last(L), r.state())
		r.crash()
		r.observe(L, "none", map[uint64]string{a: "lease A"})
		_ = p
	})
	t.Run("released/fill-then-marker", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "600s")
		r.fill("fill", 40)
		r.purgeMarker(L, "1s")
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.crash()
		r.observe(L, "none", map[uint64]string{a: "lease A"})
	})
	// (a) expired: lease Nats-TTL 2s, the server writes a MaxAge marker (TTL = SubjectDeleteMarkerTTL 1s).
	// (c) its TTL end is already past at the restart.
	t.Run("expired", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "2s")
		start := time.Now()
		r.fill("fill", 40)
		r.waitLast(L, 10*time.Second, "MaxAge marker", func(m *revMsg) bool { return m != nil && m.Seq != a })
		r.logf("server marker: %v", r.last(L))
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.crash()
		m := r.observe(L, "none", map[uint64]string{a: "expired lease A"})
		r.checkExpires(L, m, start.Add(2*time.Second))
	})
	// (c) with thw.db/index.db written after the removal (as the server does every
	// 2-2.5 min): the revived message is not put back in the TTL wheel.
	t.Run("expired/index-written", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "2s")
		start := time.Now()
		r.fill("fill", 40)
		r.waitLast(L, 10*time.Second, "MaxAge marker", func(m *revMsg) bool { return m != nil && m.Seq != a })
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.forceIndex()
		r.lease("kv.s.other", "later write", "")
		r.crash()
		m := r.observe(L, "none", map[uint64]string{a: "expired lease A"})
		r.checkExpires(L, m, start.Add(2*time.Second))
	})
	// (c) TTL end still in the future at the restart: released lease with Nats-TTL 12s.
	for _, idx := range []bool{false, true} {
		name := "released/ttl-future"
		if idx {
			name += "/index-written"
		}
		t.Run(name, func(t *testing.T) {
			r := newRevRig(t, revOpts{})
			a := r.lease(L, "lease-A", "12s")
			start := time.Now()
			r.purgeMarker(L, "1s")
			r.fill("fill", 40)
			r.waitLast(L, 10*time.Second, "marker gone", gone)
			if idx {
				r.forceIndex()
				r.lease("kv.s.other", "later write", "")
			}
			r.crash()
			m := r.observe(L, "none", map[uint64]string{a: "lease A"})
			r.checkExpires(L, m, start.Add(12*time.Second))
		})
	}
	// Control: index.db written after the marker expired and no write since:
	// the index matches the last block, no rebuild.
	t.Run("released/index-current", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "600s")
		r.purgeMarker(L, "1s")
		r.fill("fill", 40)
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.forceIndex()
		r.crash()
		r.observe(L, "none", map[uint64]string{a: "lease A"})
	})
	// (b) lease A, refresh B replaces A (MaxMsgsPerSubject), purge marker C.
	t.Run("older/refresh", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "600s")
		r.fill("fill", 10)
		b := r.lease(L, "refresh-B", "600s")
		r.purgeMarker(L, "1s")
		r.fill("fill.x2", 30)
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.crash()
		r.observe(L, "none", map[uint64]string{a: "lease A", b: "refresh B"})
		r.logf("state after: %s", r.state())
	})
	// (b) as above, but B's block is emptied and removed (its other messages are
	// replaced), while A's block stays: the older A comes back.
	t.Run("older/refresh-block-removed", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "600s")
		r.fill("fill.keep", 7)               // block 1: junk, A, keep.0-6 (stay live)
		r.fill("fill.c", 1)                  // c.0 opens block 2
		b := r.lease(L, "refresh-B", "600s") // block 2
		r.fillFrom("fill.c", 1, 6)           // block 2: c.0-6, B
		r.purgeMarker(L, "1s")               // block 2 (removes B via MaxMsgsPerSubject)
		r.fill("fill.c", 7)                  // replaces c.0-6 (blocks 3-4): block 2 has only the marker left
		r.fill("fill", 16)
		r.waitLast(L, 10*time.Second, "marker gone", gone) // block 2 empty: removed
		r.crash()
		r.observe(L, "none", map[uint64]string{a: "lease A", b: "refresh B"})
	})
	// (d) sync_interval: always.
	t.Run("released/sync-always", func(t *testing.T) {
		r := newRevRig(t, revOpts{syncAlways: true})
		a := r.lease(L, "lease-A", "600s")
		r.lease("kv.s.keep", "keep", "")
		r.purgeMarker(L, "1s")
		r.fill("fill", 40)
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.crash()
		r.observe(L, "none", map[uint64]string{a: "lease A"})
	})
	// (d) one block, no big fill: another message keeps the block alive.
	t.Run("released/single-block", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "600s")
		r.lease("kv.s.keep", "keep", "")
		r.purgeMarker(L, "1s")
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.crash()
		r.observe(L, "none", map[uint64]string{a: "lease A"})
	})
	// (d) one block holding only the lease and the marker.
	t.Run("released/single-block-alone", func(t *testing.T) {
		r := newRevRig(t, revOpts{bare: true})
		a := r.lease(L, "lease-A", "600s")
		r.purgeMarker(L, "1s")
		r.waitLast(L, 10*time.Second, "marker gone", gone)
		r.lease("kv.s.other", "later write", "")
		r.crash()
		r.observe(L, "none", map[uint64]string{a: "lease A"})
	})
	// (e) the release marker without Nats-TTL (permanent).
	t.Run("released/permanent-marker", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "600s")
		p := r.purgeMarker(L, "")
		r.fill("fill", 40)
		time.Sleep(2 * time.Second)
		r.crash()
		m := r.observe(L, fmt.Sprintf("the marker, seq %d", p), map[uint64]string{a: "lease A"})
		if m == nil || m.Seq != p {
			t.Errorf("permanent marker seq %d not the last message: %v", p, m)
		}
	})
	// (f) a permanent value replaces the lease; its block is compacted, the lease's block stays.
	t.Run("permanent-value-protects", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		a := r.lease(L, "lease-A", "600s")
		r.fill("fill.keep", 7) // block 1: junk, A, keep.0-6
		r.fill("fill.c", 1)    // block 2
		v := r.lease(L, "value-V", "")
		r.fillFrom("fill.c", 1, 6)
		r.fill("fill.c", 7) // block 2 holds only V live: compacted
		r.fill("fill", 16)
		time.Sleep(2 * time.Second)
		r.crash()
		m := r.observe(L, fmt.Sprintf("value V, seq %d", v), map[uint64]string{a: "lease A"})
		if m == nil || m.Seq != v {
			t.Errorf("permanent value seq %d not the last message: %v", v, m)
		}
	})
	// (g) a state object (no TTL) deleted with a purge marker + TTL.
	t.Run("state-object", func(t *testing.T) {
		r := newRevRig(t, revOpts{})
		const S = "kv.s.obj"
		s := r.lease(S, "state-S", "")
		r.lease("kv.s.keep", "keep", "")
		r.purgeMarker(S, "1s")
		r.fill("fill", 40)
		r.waitLast(S, 10*time.Second, "marker gone", gone)
		r.crash()
		r.observe(S, "none", map[uint64]string{s: "state object S"})
	})
}

// TestUpstreamReviveR3: the same released-lease case on an R3 stream (3
// nats-server processes, sync_interval: always), then kill -9 of every node
// (the whole cluster crashes) or of one node, and a restart.
func TestUpstreamReviveR3(t *testing.T) {
	if !*upstreamRun {
		t.Skip("nats-server reproducer; run with -upstream")
	}
	const L = "kv.l.a"
	for _, all := range []bool{true, false} {
		name := "kill-all"
		if !all {
			name = "kill-leader"
		}
		t.Run(name, func(t *testing.T) {
			needBinaries(t)
			procs, addrs := startNATS(t, 3)
			r := &revRig{t: t, url: natsURL(addrs), t0: time.Now()}
			r.connect()
			_, err := r.js.CreateStream(t.Context(), natsjs.StreamConfig{
				Name: revStream, Subjects: []string{"kv.>", "fill.>"},
				Storage: natsjs.FileStorage, Replicas: 3,
				MaxMsgsPerSubject: 1, AllowMsgTTL: true, SubjectDeleteMarkerTTL: time.Second,
				AllowRollup: true,
			})
			if err != nil {
				t.Fatal(err)
			}
			a := r.lease(L, "lease-A", "600s")
			r.lease("kv.s.keep", "keep", "")
			r.purgeMarker(L, "1s")
			r.fill("fill", 40)
			r.waitLast(L, 10*time.Second, "marker gone", gone)
			s, _ := r.js.Stream(t.Context(), revStream)
			leader := s.CachedInfo().Cluster.Leader
			r.logf("before kill: last(%s)=%v state %s leader %s", L, r.last(L), r.state(), leader)
			r.nc.Close()
			for i, p := range procs {
				if all || fmt.Sprintf("n%d", i) == leader {
					r.logf("kill -9 n%d", i)
					p.Kill()
				}
			}
			time.Sleep(500 * time.Millisecond)
			for i, p := range procs {
				if all || fmt.Sprintf("n%d", i) == leader {
					p.Restart()
					r.logf("restarted n%d", i)
					defer func(i int, p *proc) {
						b, _ := os.ReadFile(p.log.Name())
						for _, l := range strings.Split(string(b), "\n") {
							if strings.Contains(l, "REV") && (strings.Contains(l, "WRN") || strings.Contains(l, "snapshot") || strings.Contains(l, "atchup")) {
								r.logf("n%d log: %s", i, l)
							}
						}
					}(i, p)
				}
			}
			r.connect()
			deadline := time.Now().Add(30 * time.Second)
			for {
				s, err := r.js.Stream(t.Context(), revStream)
				if err == nil && s.CachedInfo().Cluster != nil && s.CachedInfo().Cluster.Leader != "" {
					r.logf("stream leader %s state %s", s.CachedInfo().Cluster.Leader, r.state())
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no stream leader: %v", err)
				}
				time.Sleep(200 * time.Millisecond)
			}
			r.observe(L, "none", map[uint64]string{a: "lease A"})
			if !all {
				// Make the restarted node the leader and read through it.
				for i := 0; i < 6; i++ {
					s, _ := r.js.Stream(t.Context(), revStream)
					if s.CachedInfo().Cluster.Leader == leader {
						break
					}
					r.nc.Request("$JS.API.STREAM.LEADER.STEPDOWN."+revStream, nil, 5*time.Second)
					time.Sleep(2 * time.Second)
				}
				s, _ := r.js.Stream(t.Context(), revStream)
				r.logf("leader now %s (restarted node %s) state %s", s.CachedInfo().Cluster.Leader, leader, r.state())
				r.observe(L, "none", map[uint64]string{a: "lease A"})
			}
		})
	}
}
