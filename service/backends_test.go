package service_test

import (
	"strings"
	"testing"
	"time"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store"
	redisstore "github.com/lockservice/lockservice/store/redis"
)

// backends lists the stores every service test runs on. Redis tests start
// a real redis-server; they fail (never skip) when it is missing.
func backends(testing.TB) []backend {
	return []backend{jetstreamBackend(), redisBackend()}
}

// redisBackend starts one redis-server per test deployment on first use;
// every store made for the deployment shares it.
func redisBackend() backend {
	servers := map[testing.TB]*testsrv.Redis{}
	return backend{"redis", func(t testing.TB, _ string) store.Store {
		r := servers[t]
		if r == nil {
			r = testsrv.StartRedis(t)
			servers[t] = r
			t.Cleanup(func() { delete(servers, t) })
		}
		s, err := redisstore.New(t.Context(), r.Client(t), redisstore.Config{Namespace: "svc"})
		if err != nil {
			t.Fatalf("redis.New = %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}}
}

// TestRedisConnectionLoss: with Redis down, requests get 503 saying the
// store is unavailable; the service keeps running and serves again once
// Redis is back.
func TestRedisConnectionLoss(t *testing.T) {
	r := testsrv.StartRedis(t)
	st, err := redisstore.New(t.Context(), r.Client(t), redisstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv := testsrv.NATS(t, "")
	startInstance(t, srv.ClientURL(), st, service.Config{StoreTimeout: time.Second})
	nc := testsrv.Connect(t, srv)
	if got, code, _ := raw(t, nc, "lock.acquire.loss", `{}`); code != 0 || got["acquired"] != true {
		t.Fatalf("acquire = %v %d", got, code)
	}
	r.Kill()
	for _, subj := range []string{"lock.acquire.loss2", "lock.get.loss", "lock.wait.loss"} {
		_, code, msg := raw(t, nc, subj, `{}`)
		if code != 503 || !strings.Contains(msg, "store unavailable") {
			t.Errorf("%s with Redis down = %d %q, want 503 store unavailable", subj, code, msg)
		}
	}
	r.Restart(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, code, msg := raw(t, nc, "lock.acquire.loss3", `{}`)
		if code == 0 && got["acquired"] == true {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service did not recover after Redis came back: %d %q", code, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
