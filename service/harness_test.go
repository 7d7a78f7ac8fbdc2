package service

import (
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/memstore"
)

// harness runs one service instance's request handling on the in-memory
// store, without NATS: requests are handed to the handlers as the
// subscriptions would, answers and events are captured. Used inside a
// testing/synctest bubble, time is virtual and every step deterministic.
type harness struct {
	t     *testing.T
	s     *Service
	gate  *storegate.Gate
	other *memstore.Store // the same data, as another instance sees it

	mu   sync.Mutex
	n    int
	msgs map[string][]*nats.Msg
}

// plainStore hides the optional interfaces of a store: a store like Redis,
// without Notifier and Transferrer.
type plainStore struct{ store.Store }

func newHarness(t *testing.T, redisLike bool, cfg Config) *harness {
	t.Helper()
	srv, err := memstore.NewServer(memstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	var st store.Store = memstore.New(srv)
	if redisLike {
		st = plainStore{st}
	}
	gated, gate := storegate.New(t, st)
	cfg.SetDefaults()
	h := &harness{t: t, gate: gate, other: memstore.New(srv), msgs: make(map[string][]*nats.Msg)}
	h.s = newService(gated, cfg, h.capture)
	h.s.id = "harness"
	t.Cleanup(func() { h.s.Stop() })
	return h
}

func (h *harness) capture(m *nats.Msg) error {
	h.mu.Lock()
	h.msgs[m.Subject] = append(h.msgs[m.Subject], m)
	h.mu.Unlock()
	return nil
}

// send hands a request to op's handler as its subscription would and
// returns the reply subject. Inline handlers run here; the others on a
// goroutine, as on a worker.
func (h *harness) send(op, key, body string) string {
	h.mu.Lock()
	h.n++
	reply := "_INBOX.h." + strconv.Itoa(h.n)
	h.mu.Unlock()
	r := &request{key: key, reply: reply, data: []byte(body), received: time.Now(),
		stats: h.s.stats.ops[op], finish: func() {}}
	switch op {
	case "acquire":
		h.s.acquire(r)
	case "wait":
		h.s.wait(r)
	case "cancel":
		h.s.cancel(r)
	case "alive":
		h.s.alive(r)
	case "release":
		go h.s.release(r)
	case "refresh":
		go h.s.refresh(r)
	case "get":
		go h.s.get(r)
	default:
		h.t.Fatalf("harness: no op %q", op)
	}
	return reply
}

// answers returns what was sent on subject so far, once every goroutine of
// the bubble is blocked.
func (h *harness) answers(subject string) []*nats.Msg {
	synctest.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*nats.Msg(nil), h.msgs[subject]...)
}

// answer returns the one answer on reply: its JSON fields, or its error
// code and message.
func (h *harness) answer(reply string) (map[string]any, string) {
	h.t.Helper()
	ms := h.answers(reply)
	if len(ms) != 1 {
		h.t.Fatalf("%d answers on %s, want 1", len(ms), reply)
	}
	return decodeAnswer(h.t, ms[0])
}

func decodeAnswer(t *testing.T, m *nats.Msg) (map[string]any, string) {
	t.Helper()
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, code + " " + m.Header.Get(micro.ErrorHeader)
	}
	var v map[string]any
	if err := json.Unmarshal(m.Data, &v); err != nil {
		t.Fatalf("answer %q: %v", m.Data, err)
	}
	return v, ""
}

// noAnswer fails when reply got an answer.
func (h *harness) noAnswer(reply, why string) {
	h.t.Helper()
	if ms := h.answers(reply); len(ms) != 0 {
		h.t.Fatalf("%s: answered %q %v, want no answer yet", why, ms[0].Data, ms[0].Header)
	}
}

// holder takes key for a fresh lock id through the other instance.
func (h *harness) holder(key string, ttl time.Duration) string {
	h.t.Helper()
	id := newLockID()
	if _, err := h.other.Acquire(h.t.Context(), key, id, store.AcquireOptions{TTL: ttl}); err != nil {
		h.t.Fatalf("Acquire(%q) = %v", key, err)
	}
	return id
}

// info reads key as another instance would.
func (h *harness) info(key string) store.Info {
	h.t.Helper()
	info, err := h.other.Get(h.t.Context(), key)
	if err != nil {
		h.t.Fatalf("Get(%q) = %v", key, err)
	}
	return info
}

func (h *harness) parked() int { synctest.Wait(); return h.s.Stats().ParkedWaiters }

func acquireBody(id string, waitMs, ttlMs int64, extra string) string {
	b := fmt.Sprintf(`{"lock_id":%q,"wait_ms":%d,"ttl_ms":%d`, id, waitMs, ttlMs)
	if extra != "" {
		b += "," + extra
	}
	return b + "}"
}

func mustAcquired(t *testing.T, what string, v map[string]any, errAns string) uint64 {
	t.Helper()
	if errAns != "" || v["acquired"] != true {
		t.Fatalf("%s answered %v %s, want acquired", what, v, errAns)
	}
	return uint64(v["token"].(float64))
}

func mustNotAcquired(t *testing.T, what string, v map[string]any, errAns string) {
	t.Helper()
	if errAns != "" || v["acquired"] != false {
		t.Fatalf("%s answered %v %s, want acquired:false", what, v, errAns)
	}
}

func (h *harness) acquired(what, reply string) uint64 {
	h.t.Helper()
	v, e := h.answer(reply)
	return mustAcquired(h.t, what, v, e)
}

func (h *harness) notAcquired(what, reply string) {
	h.t.Helper()
	v, e := h.answer(reply)
	mustNotAcquired(h.t, what, v, e)
}
