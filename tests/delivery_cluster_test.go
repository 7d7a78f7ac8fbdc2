package tests

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store/memstore"
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
	addrs := startCoreCluster(t, 3)
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
	// The routes carry interest, not JetStream: an in-memory store keeps
	// the test to what it checks.
	mem, err := memstore.NewServer(memstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	st := memstore.New(mem)
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

// startCoreCluster starts n clustered nats-server processes without
// JetStream and returns their client addresses once a message published on
// the first reaches a subscriber on the last (routes are up).
func startCoreCluster(t *testing.T, n int) []string {
	var ports, cports []int
	for i := 0; i < n; i++ {
		ports = append(ports, freePort(t))
		cports = append(cports, freePort(t))
	}
	var routes []string
	for _, p := range cports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	var addrs []string
	for i := 0; i < n; i++ {
		conf := fmt.Sprintf("server_name: c%d\nlisten: 127.0.0.1:%d\ncluster { name: core, listen: 127.0.0.1:%d, routes: [%s] }\n",
			i, ports[i], cports[i], strings.Join(routes, ", "))
		addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
		startProc(t, fmt.Sprintf("core%d", i), bins.natsServer, []string{"-c", writeFile(t, fmt.Sprintf("c%d.conf", i), conf)}, dialable(addr))
		addrs = append(addrs, addr)
	}
	first, err := nats.Connect("nats://" + addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	last, err := nats.Connect("nats://" + addrs[n-1])
	if err != nil {
		t.Fatal(err)
	}
	defer last.Close()
	sub, _ := last.SubscribeSync("routes.up")
	last.Flush()
	deadline := time.Now().Add(30 * time.Second)
	for {
		first.Publish("routes.up", nil)
		if _, err := sub.NextMsg(100 * time.Millisecond); err == nil {
			return addrs
		}
		if time.Now().After(deadline) {
			t.Fatal("the cluster's routes did not come up in 30 s")
		}
	}
}
