package service_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	redisstore "github.com/lockservice/lockservice/store/redis"
)

// jsonLog collects the JSON lines of a slog.Logger.
type jsonLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *jsonLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *jsonLog) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// lines returns the lines with message msg.
func (l *jsonLog) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	dec := json.NewDecoder(bytes.NewReader(l.b.Bytes()))
	for dec.More() {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("log line: %v", err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// traffic sends try-acquires on fresh keys from n goroutines until stop is
// called, counting the 503 answers and the grants.
type traffic struct {
	unavailable, granted atomic.Int64
	stop                 func()
}

func startTraffic(t *testing.T, nc *nats.Conn, n int) *traffic {
	tr := &traffic{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				m, err := nc.Request(fmt.Sprintf("lock.acquire.traffic.%d.%d", g, i), []byte(`{"ttl_ms":60000}`), 10*time.Second)
				switch {
				case err != nil:
					t.Errorf("request: %v", err)
					return
				case m.Header.Get("Nats-Service-Error-Code") == "503":
					tr.unavailable.Add(1)
				case m.Header.Get("Nats-Service-Error-Code") == "":
					tr.granted.Add(1)
				}
			}
		})
	}
	tr.stop = sync.OnceFunc(func() { close(done); wg.Wait() })
	t.Cleanup(tr.stop)
	return tr
}

// eventually polls cond until it holds, failing the test after 30 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStoreOutageLoggedOncePerCauseAndItsRecovery: kill redis-server under
// traffic. Every request fails while it is down, but the log has one line
// per cause of failure (the interval is an hour: no cause may repeat), not
// one per request; Ready says the store fails; after the restart one line
// says the store recovered, and Ready is nil again.
func TestStoreOutageLoggedOncePerCauseAndItsRecovery(t *testing.T) {
	r := testsrv.StartRedis(t)
	st, err := redisstore.New(t.Context(), r.Client(t), redisstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := testsrv.NATS(t, "")
	var logs jsonLog
	svc := startInstance(t, srv.ClientURL(), st, service.Config{StoreTimeout: time.Second, HealthInterval: time.Hour, Logger: logs.logger()})
	if err := svc.Ready(t.Context()); err != nil {
		t.Fatalf("Ready before the outage = %v", err)
	}
	tr := startTraffic(t, testsrv.Connect(t, srv), 4)
	eventually(t, "grants before the outage", func() bool { return tr.granted.Load() >= 20 })

	r.Kill()
	eventually(t, "50 requests answered 503 with Redis down", func() bool { return tr.unavailable.Load() >= 50 })
	if err := svc.Ready(t.Context()); !errors.Is(err, service.ErrNotReady) {
		t.Errorf("Ready with Redis down = %v, want ErrNotReady", err)
	}
	r.Restart(t)
	eventually(t, "Ready after the restart", func() bool { return svc.Ready(t.Context()) == nil })
	tr.stop()

	failures := logs.lines(t, "store call failed")
	if len(failures) == 0 {
		t.Fatal("no store call failed line for the outage")
	}
	seen := map[string]bool{}
	for _, l := range failures {
		cause := fmt.Sprint(l["outcome"], " ", l["cause"])
		if seen[cause] {
			t.Errorf("cause %q logged twice within the interval: %v", cause, failures)
		}
		seen[cause] = true
		if l["level"] != "ERROR" || l["err"] == nil || l["op"] == nil {
			t.Errorf("failure line %v, want level ERROR with op and err", l)
		}
	}
	if n := tr.unavailable.Load(); int64(len(failures)) >= n/2 {
		t.Errorf("%d failure lines for %d failed requests: not rate-limited", len(failures), n)
	}
	rec := logs.lines(t, "store recovered")
	if len(rec) != 1 {
		t.Fatalf("recovery lines = %v, want one", rec)
	}
	if n, _ := rec[0]["failed_calls"].(float64); n < 1 || rec[0]["failed_for"] == nil || rec[0]["last_err"] == nil {
		t.Errorf("recovery line %v, want failed_calls, failed_for and last_err", rec[0])
	}
	t.Logf("%d requests answered 503; logged: %d failure lines (%v), %v", tr.unavailable.Load(), len(failures), seen, rec)
}

// TestReadyProbesAnIdleStore: without traffic, Ready reads the store once
// HealthInterval has passed since its last answer, so an idle instance
// whose store went away turns unready, and ready again when it is back.
func TestReadyProbesAnIdleStore(t *testing.T) {
	r := testsrv.StartRedis(t)
	st, err := redisstore.New(t.Context(), r.Client(t), redisstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := testsrv.NATS(t, "")
	svc := startInstance(t, srv.ClientURL(), st, service.Config{StoreTimeout: time.Second, HealthInterval: 50 * time.Millisecond})
	if err := svc.Ready(t.Context()); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	r.Kill()
	eventually(t, "Ready fails with Redis down", func() bool { return errors.Is(svc.Ready(t.Context()), service.ErrNotReady) })
	r.Restart(t)
	eventually(t, "Ready after the restart", func() bool { return svc.Ready(t.Context()) == nil })
}
