package client_test

import (
	"errors"
	"testing"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	redisstore "github.com/lockservice/lockservice/store/redis"
)

// TestWithLockDelayZeroTurnsOffTheDefault: the client sends msgpack;
// WithLockDelay(0) must reach the service as lock_delay_ms 0 (not absent),
// turning off the service's --lock-delay, while without the option the
// default applies. Checked with a force (the delay runs from it).
func TestWithLockDelayZeroTurnsOffTheDefault(t *testing.T) {
	srv := testsrv.NATS(t, "")
	r := testsrv.StartRedis(t)
	st, err := redisstore.New(t.Context(), r.Client(t), redisstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := service.New(testsrv.Connect(t, srv), st, service.Config{LockDelay: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	c, err := client.New(testsrv.Connect(t, srv))
	if err != nil {
		t.Fatal(err)
	}
	nc := testsrv.Connect(t, srv)
	ctx := t.Context()
	for _, tc := range []struct {
		key     string
		opts    []client.AcquireOption
		delayed bool
	}{
		{"ld.zero", []client.AcquireOption{client.WithLockDelay(0)}, false},
		{"ld.default", nil, true},
	} {
		l, err := c.Acquire(ctx, tc.key, append(tc.opts, client.WithoutKeepAlive())...)
		if err != nil {
			t.Fatal(err)
		}
		if m, err := nc.Request("lock.admin.force."+tc.key, []byte(`{"reason":"test"}`), 5*time.Second); err != nil {
			t.Fatalf("force: %v", err)
		} else if len(m.Header.Get("Nats-Service-Error-Code")) > 0 {
			t.Fatalf("force: %v", m.Header)
		}
		info, err := c.Get(ctx, tc.key)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.TryAcquire(ctx, tc.key)
		if tc.delayed {
			if info.Delay <= 0 || info.Token != l.Token() || !errors.Is(err, client.ErrLocked) {
				t.Errorf("%s: after a force, Get = %+v and TryAcquire = %v; want the default lock-delay (30s) running", tc.key, info, err)
			}
		} else if info.Delay != 0 || err != nil {
			t.Errorf("%s: WithLockDelay(0), after a force: Get = %+v and TryAcquire = %v; want no lock-delay", tc.key, info, err)
		}
	}
}
