package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/service"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// TestGrantDeliveryAcrossACluster: a grant to a request with a liveness
// window is given back when the server reports "no responders" for its
// answer. On a 3-node cluster, with the service on one server and the
// waiting clients on another, a live client's reply subscription must
// always be known where the grant is published: no live waiter's grant is
// taken for undelivered.
func TestGrantDeliveryAcrossACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node nats-server cluster")
	}
	needBinaries(t)
	_, addrs := startNATS(t, 3)
	connect := func(addr string) *nats.Conn {
		nc, err := nats.Connect("nats://"+addr, nats.MaxReconnects(-1))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	ctx := t.Context()
	svcNC := connect(addrs[0])
	st, err := jsstore.New(ctx, svcNC, jsstore.Config{Bucket: "delivery"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	svc, err := service.New(svcNC, st, service.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop() })
	holderC, _ := client.New(connect(addrs[1]))

	const rounds, waiters = 10, 4
	for r := 0; r < rounds; r++ {
		key := fmt.Sprintf("delivery.%d", r)
		holder, err := holderC.TryAcquire(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan error, waiters)
		for i := 0; i < waiters; i++ {
			// a new connection per waiter: its inbox subscription is new
			// to the cluster
			c, _ := client.New(connect(addrs[2]), client.WithAliveWindow(2*time.Second))
			go func() {
				actx, cancel := context.WithTimeout(ctx, 20*time.Second)
				defer cancel()
				l, err := c.Acquire(actx, key, client.WithTTL(time.Minute))
				if err == nil {
					err = l.Release(ctx)
				}
				got <- err
			}()
		}
		for svc.Stats().ParkedWaiters < waiters {
			time.Sleep(5 * time.Millisecond)
		}
		if err := holder.Release(ctx); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < waiters; i++ {
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("round %d: Acquire = %v", r, err)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("round %d: a waiter was not granted; stats %+v", r, svc.Stats())
			}
		}
	}
	if n := svc.Stats().Undelivered; n != 0 {
		t.Fatalf("%d grants to live waiters taken for undelivered", n)
	}
}
