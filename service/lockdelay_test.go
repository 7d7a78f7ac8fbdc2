package service_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

type timedAnswer struct {
	body map[string]any
	code int
	msg  string
	at   time.Time
}

// ask sends a request in the background and delivers its answer with the
// time it arrived.
func ask(t *testing.T, url, subject, body string) <-chan timedAnswer {
	nc := testsrv.ConnectURL(t, url)
	c := make(chan timedAnswer, 1)
	go func() {
		m, code, msg := rawNoFatal(nc, subject, body)
		c <- timedAnswer{m, code, msg, time.Now()}
	}()
	return c
}

// rawNoFatal is raw for goroutines other than the test's.
func rawNoFatal(nc *nats.Conn, subject, body string) (map[string]any, int, string) {
	m, err := nc.Request(subject, []byte(body), 30*time.Second)
	if err != nil {
		return nil, -1, err.Error()
	}
	if c := m.Header.Get(micro.ErrorCodeHeader); c != "" {
		code, _ := strconv.Atoi(c)
		return nil, code, m.Header.Get(micro.ErrorHeader)
	}
	var out map[string]any
	if err := json.Unmarshal(m.Data, &out); err != nil {
		return nil, -1, "not JSON: " + string(m.Data)
	}
	return out, 0, ""
}

func await(t *testing.T, c <-chan timedAnswer, what string) timedAnswer {
	t.Helper()
	select {
	case a := <-c:
		return a
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no answer in 20s", what)
		return timedAnswer{}
	}
}

// TestLockDelayAfterExpiry: a lease that expires keeps its key from
// everyone for its lock-delay; the parked acquire and wait are answered
// when it ends (woken by the store's event or the service's timer, not by
// polling), and a try in between is told how long is left.
func TestLockDelayAfterExpiry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Parallel()
		srv, _ := deployment(t, b, 2, service.Config{})
		url := srv.ClientURL()
		nc := testsrv.Connect(t, srv)
		granted := time.Now() // the lease starts after this
		a, code, msg := raw(t, nc, "lock.acquire.ld", `{"ttl_ms":1000,"lock_delay_ms":2000}`)
		if code != 0 || a["acquired"] != true || a["lock_delay_ms"] != float64(2000) {
			t.Fatalf("acquire = %v %d %q, want acquired with lock_delay_ms 2000", a, code, msg)
		}
		waiter := ask(t, url, "lock.acquire.ld", `{"ttl_ms":5000,"wait_ms":15000}`)
		watcher := ask(t, url, "lock.wait.ld", `{"wait_ms":15000}`)
		// Once the lease has ended (get says unlocked), a try is refused
		// with the time left, until the delay ends.
		for {
			g, code, msg := raw(t, nc, "lock.get.ld", `{}`)
			if code != 0 {
				t.Fatalf("get = %d %q", code, msg)
			}
			if g["locked"] == false {
				if time.Since(granted) < 2*time.Second {
					if d, _ := g["delay_ms"].(float64); d <= 0 {
						t.Errorf("get in the lock-delay = %v, want delay_ms > 0", g)
					}
					if try, code, _ := raw(t, nc, "lock.acquire.ld", `{}`); code != 0 || try["acquired"] != false || try["delay_ms"] == nil || try["token"] != a["token"] {
						t.Errorf("try in the lock-delay = %v %d, want not acquired with delay_ms and the ended lease's token %v", try, code, a["token"])
					}
				}
				break
			}
			if time.Since(granted) > 10*time.Second {
				t.Fatal("lease of 1s still locked after 10s")
			}
			time.Sleep(20 * time.Millisecond)
		}
		w := await(t, waiter, "parked acquire")
		if w.code != 0 || w.body["acquired"] != true {
			t.Fatalf("parked acquire = %v %d %q", w.body, w.code, w.msg)
		}
		if got := w.at.Sub(granted); got < 3*time.Second {
			t.Errorf("parked acquire granted %v after a lease of 1s with a lock-delay of 2s", got)
		}
		if w.body["token"].(float64) <= a["token"].(float64) {
			t.Errorf("token %v after the delay, want > %v", w.body["token"], a["token"])
		}
		x := await(t, watcher, "parked wait")
		if x.code != 0 {
			t.Fatalf("parked wait = %v %d %q", x.body, x.code, x.msg)
		}
		if got := x.at.Sub(granted); got < 3*time.Second {
			t.Errorf("wait answered %v after a lease of 1s with a lock-delay of 2s, before the key could be taken", got)
		}
	})
}

// TestLockDelayAfterForceNotAfterRelease: a forced lease keeps its key
// for its delay from the force; a released one hands over at once.
func TestLockDelayAfterForceNotAfterRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		t.Parallel()
		srv, _ := deployment(t, b, 1, service.Config{LockDelay: 30 * time.Second})
		url := srv.ClientURL()
		nc := testsrv.Connect(t, srv)
		// Release: the service default delay of 30s does not apply.
		a, code, _ := raw(t, nc, "lock.acquire.rel", `{"ttl_ms":30000}`)
		if code != 0 || a["lock_delay_ms"] != float64(30000) {
			t.Fatalf("acquire = %v %d, want the default lock_delay_ms 30000", a, code)
		}
		waiter := ask(t, url, "lock.acquire.rel", `{"wait_ms":15000}`)
		if r, code, msg := raw(t, nc, "lock.release.rel", `{"lock_id":"`+a["lock_id"].(string)+`"}`); code != 0 || r["released"] != true {
			t.Fatalf("release = %v %d %q", r, code, msg)
		}
		released := time.Now()
		if w := await(t, waiter, "parked acquire after release"); w.code != 0 || w.body["acquired"] != true || w.at.Sub(released) > 10*time.Second {
			t.Fatalf("parked acquire after a release = %v %d %q after %v, want granted long before the 30s delay", w.body, w.code, w.msg, w.at.Sub(released))
		}

		// Force: the delay runs from the force.
		f, code, _ := raw(t, nc, "lock.acquire.frc", `{"ttl_ms":30000,"lock_delay_ms":2000}`)
		if code != 0 || f["acquired"] != true {
			t.Fatalf("acquire = %v %d", f, code)
		}
		waiter = ask(t, url, "lock.acquire.frc", `{"wait_ms":15000,"lock_delay_ms":0}`)
		at := time.Now() // the force happens after this
		forced, code, msg := raw(t, nc, "lock.admin.force.frc", `{"reason":"test"}`)
		if code != 0 {
			t.Fatalf("force = %v %d %q", forced, code, msg)
		}
		if try, code, _ := raw(t, nc, "lock.acquire.frc", `{}`); code != 0 || try["acquired"] != false || try["delay_ms"] == nil {
			t.Errorf("try just after the force = %v %d, want refused in the lock-delay", try, code)
		}
		w := await(t, waiter, "parked acquire after force")
		if w.code != 0 || w.body["acquired"] != true {
			t.Fatalf("parked acquire after force = %v %d %q", w.body, w.code, w.msg)
		}
		if got := w.at.Sub(at); got < 2*time.Second {
			t.Errorf("granted %v after the force, before the lock-delay of 2s ended", got)
		}
		if _, ok := w.body["lock_delay_ms"]; ok {
			t.Errorf("grant asked with lock_delay_ms 0 = %v, want no lock_delay_ms", w.body)
		}
	})
}

func TestLockDelayBadInput(t *testing.T) {
	srv, _ := deployment(t, jetstreamBackend(), 1, service.Config{})
	nc := testsrv.Connect(t, srv)
	for body, want := range map[string]string{
		`{"lock_delay_ms":-1}`:    "lock_delay_ms must not be negative",
		`{"lock_delay_ms":60001}`: "lock_delay_ms 60001 exceeds the maximum 60000",
	} {
		if _, code, msg := raw(t, nc, "lock.acquire.bad", body); code != 400 || !strings.Contains(msg, want) {
			t.Errorf("acquire %s = %d %q, want 400 %q", body, code, msg, want)
		}
	}
}
