package service_test

import (
	"testing"

	"github.com/lockservice/lockservice/internal/testsrv"
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
