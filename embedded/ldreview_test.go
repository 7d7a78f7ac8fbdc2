package embedded_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/embedded"
	"github.com/lockservice/lockservice/service"
)

// TestDefaultLockDelayWithTheLongestLease: with a service-wide lock-delay
// (service.Config.LockDelay, --lock-delay) every acquire that gives no
// lock_delay_ms gets it. The JetStream bucket's marker TTL defaults to the
// longest lease (max TTL), and a lease plus its lock-delay must fit in it:
// an acquire of ttl_ms up to the max TTL, which the service accepts and
// which never asked for a delay, is refused (400 "raise --marker-ttl") as
// soon as the operator turns the default lock-delay on.
func TestDefaultLockDelayWithTheLongestLease(t *testing.T) {
	srv, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithoutListener(),
		embedded.WithServiceConfig(service.Config{LockDelay: 5 * time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	m, err := srv.Conn().Request("lock.acquire.long", []byte(`{"ttl_ms":600000}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		t.Fatalf("acquire of the max TTL (10m) under --lock-delay 5s = %s %s, want granted", code, m.Header.Get(micro.ErrorHeader))
	}
	var got struct {
		Acquired    bool  `json:"acquired"`
		LockDelayMs int64 `json:"lock_delay_ms"`
	}
	if err := json.Unmarshal(m.Data, &got); err != nil || !got.Acquired || got.LockDelayMs != 5000 {
		t.Fatalf("acquire = %s, want acquired with lock_delay_ms 5000", m.Data)
	}
}
