package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// backend makes stores for service instances of one deployment. natsURL is
// the nats-server with JetStream that the deployment uses.
type backend struct {
	name     string
	newStore func(t testing.TB, natsURL string) store.Store
}

func jetstreamBackend() backend {
	return backend{"jetstream", func(t testing.TB, natsURL string) store.Store {
		nc := testsrv.ConnectURL(t, natsURL)
		s, err := jsstore.New(t.Context(), nc, jsstore.Config{})
		if err != nil {
			t.Fatalf("jetstream.New = %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}}
}

// forEachBackend runs fn once per store backend: the service's behaviour
// must not depend on the store.
func forEachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { fn(t, b) })
	}
}

// startInstance runs a service instance on its own connection to srv.
func startInstance(t testing.TB, natsURL string, st store.Store, cfg service.Config) *service.Service {
	t.Helper()
	nc := testsrv.ConnectURL(t, natsURL)
	svc, err := service.New(nc, st, cfg)
	if err != nil {
		t.Fatalf("service.New = %v", err)
	}
	t.Cleanup(func() { svc.Stop() })
	return svc
}

// deployment is one NATS server with JetStream and n service instances.
func deployment(t testing.TB, b backend, n int, cfg service.Config) (*server.Server, []*service.Service) {
	t.Helper()
	srv := testsrv.NATS(t, "")
	var svcs []*service.Service
	for i := 0; i < n; i++ {
		svcs = append(svcs, startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), cfg))
	}
	return srv, svcs
}

func newClient(t testing.TB, srv *server.Server) *client.Client {
	t.Helper()
	c, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// raw sends a JSON request and returns the answer's body and error code.
func raw(t testing.TB, nc *nats.Conn, subject, body string) (map[string]any, int, string) {
	t.Helper()
	m, err := nc.Request(subject, []byte(body), 10*time.Second)
	if err != nil {
		t.Fatalf("request %s %s: %v", subject, body, err)
	}
	if c := m.Header.Get(micro.ErrorCodeHeader); c != "" {
		code, _ := strconv.Atoi(c)
		return nil, code, m.Header.Get(micro.ErrorHeader)
	}
	var out map[string]any
	if err := json.Unmarshal(m.Data, &out); err != nil {
		t.Fatalf("answer to %s is not JSON: %q", subject, m.Data)
	}
	return out, 0, ""
}

func TestProtocolJSON(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, _ := deployment(t, b, 1, service.Config{})
		nc := testsrv.Connect(t, srv)
		key := "orders." + client.NewLockID()

		got, code, msg := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":5000,"owner":"me"}`)
		if code != 0 || got["acquired"] != true || got["value"] != nil || got["owner"] != "me" || got["ttl_ms"] != 5000.0 {
			t.Fatalf("acquire = %v %d %s", got, code, msg)
		}
		id := got["lock_id"].(string)
		if len(id) < 22 {
			t.Errorf("generated lock_id %q is shorter than 128 bits", id)
		}
		token := got["token"].(float64)

		if got, _, _ := raw(t, nc, "lock.acquire."+key, ``); got["acquired"] != false || got["owner"] != "me" {
			t.Errorf("second acquire = %v, want acquired false with holder's owner", got)
		}
		if got, _, _ := raw(t, nc, "lock.release."+key, `{"lock_id":"forged-forged-forged-1"}`); got["released"] != false {
			t.Errorf("release with forged id = %v, want released false", got)
		}
		if got, code, _ := raw(t, nc, "lock.write."+key, fmt.Sprintf(`{"lock_id":%q,"value":{"step":1}}`, id)); code != 0 || got["written"] != true {
			t.Errorf("write = %v %d", got, code)
		}
		got, _, _ = raw(t, nc, "lock.get."+key, ``)
		if got["locked"] != true || got["token"] != token || got["has_value"] != true {
			t.Errorf("get = %v, want locked with token %v and a value", got, token)
		}
		if v, _ := json.Marshal(got["value"]); string(v) != `{"step":1}` {
			t.Errorf("get value = %s, want {\"step\":1}", v)
		}
		if got, code, _ := raw(t, nc, "lock.refresh."+key, fmt.Sprintf(`{"lock_id":%q,"ttl_ms":9000}`, id)); code != 0 || got["token"] != token || got["ttl_ms"] != 9000.0 {
			t.Errorf("refresh = %v %d, want same token, ttl 9000", got, code)
		}
		if got, _, _ := raw(t, nc, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q,"value":[1,"two",null]}`, id)); got["released"] != true {
			t.Errorf("release = %v", got)
		}
		got, code, _ = raw(t, nc, "lock.wait."+key, `{"wait_ms":1000}`)
		if v, _ := json.Marshal(got["value"]); code != 0 || string(v) != `[1,"two",null]` {
			t.Errorf("wait = %v %d, want value [1,\"two\",null]", got, code)
		}
		got, _, _ = raw(t, nc, "lock.acquire."+key, `{"lock_id":"my-own-lock-id-0001"}`)
		if got["acquired"] != true || got["lock_id"] != "my-own-lock-id-0001" || got["token"].(float64) <= token {
			t.Errorf("acquire with own id = %v, want acquired with a token > %v", got, token)
		}
		if got, code, _ := raw(t, nc, "lock.delete."+key, `{"lock_id":"my-own-lock-id-0001"}`); code != 0 || got["deleted"] != true {
			t.Errorf("delete = %v %d", got, code)
		}
		if got, _, _ := raw(t, nc, "lock.get."+key, ``); got["locked"] != false || got["has_value"] != false || got["value"] != nil {
			t.Errorf("get after delete = %v, want unlocked, no value", got)
		}

		// msgpack in, msgpack out.
		req, _ := msgpack.Marshal(api.AcquireRequest{TTLms: 1000})
		m, err := nc.RequestMsg(&nats.Msg{Subject: "lock.acquire." + key, Data: req,
			Header: nats.Header{"Content-Type": {"application/msgpack"}}}, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var ar api.AcquireResponse
		if err := msgpack.Unmarshal(m.Data, &ar); err != nil || !ar.Acquired || m.Header.Get("Content-Type") != "application/msgpack" {
			t.Errorf("msgpack acquire = %+v, %v, content type %q", ar, err, m.Header.Get("Content-Type"))
		}
	})
}

func TestBadInput(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, _ := deployment(t, b, 1, service.Config{MaxTTL: time.Minute, MaxValueBytes: 1024})
		nc := testsrv.Connect(t, srv)
		held, _, _ := raw(t, nc, "lock.acquire.bad.held", `{}`)
		heldID := held["lock_id"].(string)
		big := strings.Repeat("x", 2000)
		cases := []struct {
			subject, body string
			code          int
			says          string
		}{
			{"lock.acquire.a$b", `{}`, 400, "contains"},
			{"lock.acquire.a*b", `{}`, 400, "contains"},
			{"lock.acquire.bad.key", `{"ttl_ms":`, 400, "malformed JSON"},
			{"lock.acquire.bad.key", `{"ttl":5}`, 400, "unknown field"},
			{"lock.acquire.bad.key", `{"ttl_ms":-5}`, 400, "negative"},
			{"lock.acquire.bad.key", `{"wait_ms":-1}`, 400, "negative"},
			{"lock.acquire.bad.key", `{"ttl_ms":3600000}`, 400, "exceeds the maximum"},
			{"lock.acquire.bad.key", `{"ttl_ms":"5s"}`, 400, "malformed JSON"},
			{"lock.acquire.bad.key", `{"lock_id":"short"}`, 400, "lock_id must be"},
			{"lock.acquire.bad.key", `{"lock_id":"has spaces in it 12345"}`, 400, "lock_id may only"},
			{"lock.acquire.bad.key", `{} {}`, 400, "more than one"},
			{"lock.release.bad.key", `{}`, 400, "lock_id is required"},
			{"lock.release.bad.held", fmt.Sprintf(`{"lock_id":%q,"value":"%s"}`, heldID, big), 400, "limit is 1024"},
			{"lock.write.bad.held", fmt.Sprintf(`{"lock_id":%q}`, heldID), 400, "value is required"},
			{"lock.refresh.bad.held", `{"lock_id":"not-the-holder-00001"}`, 409, "does not hold"},
			{"lock.delete.bad.held", `{"lock_id":"not-the-holder-00001"}`, 409, "does not hold"},
			{"lock.write.bad.held", `{"lock_id":"not-the-holder-00001","value":1}`, 409, "does not hold"},
			{"lock.wait.bad.held", `{}`, 408, "locked"},
			{"lock.wait.bad.held", `{"wait_ms":50}`, 408, "still locked"},
			{"lock.get.bad.key", `{"x":1}`, 400, "unknown field"},
		}
		for _, c := range cases {
			got, code, msg := raw(t, nc, c.subject, c.body)
			if code != c.code || !strings.Contains(msg, c.says) {
				t.Errorf("%s %s = %v code %d %q, want code %d saying %q", c.subject, c.body, got, code, msg, c.code, c.says)
			}
		}
		// Rejected requests changed nothing.
		if got, _, _ := raw(t, nc, "lock.get.bad.held", ``); got["locked"] != true || got["has_value"] != false {
			t.Errorf("held lock after bad requests = %v, want still locked, no value", got)
		}
		// Malformed msgpack, including a value that declares 4 GiB in a
		// 15-byte payload (the service must not allocate what it declares).
		for _, data := range [][]byte{{0xc1, 0xff}, []byte("\x81\xa5value\xc6\xff\xff\xff\xf0")} {
			m, err := nc.RequestMsg(&nats.Msg{Subject: "lock.release.bad.key", Data: data,
				Header: nats.Header{"Content-Type": {"application/msgpack"}}}, 5*time.Second)
			if err != nil || m.Header.Get(micro.ErrorCodeHeader) != "400" || !strings.Contains(m.Header.Get(micro.ErrorHeader), "malformed msgpack") {
				t.Errorf("malformed msgpack %q answered %v %v", data, m.Header, err)
			}
		}
	})
}

// TestMutualExclusion runs clients against three instances on one NATS and
// checks the recorded history: grants in token order never overlap, tokens
// strictly increase, and no increment of the shared state is lost.
func TestMutualExclusion(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		srv, _ := deployment(t, b, 3, service.Config{})
		type hold struct {
			token             uint64
			granted, released time.Time
		}
		var (
			mu      sync.Mutex
			history []hold
		)
		const clients, rounds = 8, 8
		key := "counter." + client.NewLockID()
		var wg sync.WaitGroup
		for i := 0; i < clients; i++ {
			c := newClient(t, srv)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := 0; r < rounds; r++ {
					ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
					l, err := c.Acquire(ctx, key, client.WithTTL(20*time.Second))
					cancel()
					if err != nil {
						t.Errorf("Acquire = %v", err)
						return
					}
					h := hold{token: l.Token(), granted: time.Now()}
					n := 0
					if v := l.Value(); v != nil {
						n, _ = strconv.Atoi(string(v))
					}
					h.released = time.Now()
					if err := l.ReleaseWith(t.Context(), []byte(strconv.Itoa(n+1))); err != nil {
						t.Errorf("ReleaseWith = %v", err)
						return
					}
					mu.Lock()
					history = append(history, h)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		slices.SortFunc(history, func(a, b hold) int { return int(int64(a.token) - int64(b.token)) })
		for i := 1; i < len(history); i++ {
			if history[i].token == history[i-1].token {
				t.Errorf("token %d granted twice", history[i].token)
			}
			if history[i].granted.Before(history[i-1].released) {
				t.Errorf("grant with token %d received at %v, before the holder of token %d sent its release at %v",
					history[i].token, history[i].granted, history[i-1].token, history[i-1].released)
			}
		}
		info, err := newClient(t, srv).Get(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		if info.Locked || string(info.Value) != strconv.Itoa(clients*rounds) {
			t.Errorf("after %d locked increments: locked %v, counter %q", clients*rounds, info.Locked, info.Value)
		}
		if len(history) != clients*rounds {
			t.Errorf("history has %d grants, want %d", len(history), clients*rounds)
		}
	})
}
