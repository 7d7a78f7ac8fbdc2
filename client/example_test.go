package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/embedded"
)

func Example() {
	// An in-process nats-server with the lock service; in production,
	// nats.Connect to your NATS where lockservice runs.
	srv, err := embedded.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c, err := client.New(srv.Conn())
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Read-modify-write the state attached to the lock, atomically.
	for i := 0; i < 3; i++ {
		n, err := client.WithLockJSON(ctx, c, "counters.visits", func(ctx context.Context, n *int) (int, error) {
			if n == nil {
				return 1, nil
			}
			return *n + 1, nil
		})
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("visits:", n)
	}

	// Hold a lock by hand; the token fences writes downstream.
	l, err := c.Acquire(ctx, "orders.42", client.WithTTL(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.TryAcquire(ctx, "orders.42")
	fmt.Println("second holder:", err != nil)
	fmt.Println("token > 0:", l.Token() > 0)
	if err := l.ReleaseWith(ctx, []byte(`{"status":"shipped"}`)); err != nil {
		log.Fatal(err)
	}
	state, err := c.Wait(ctx, "orders.42")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("state:", string(state))
	// Output:
	// visits: 1
	// visits: 2
	// visits: 3
	// second holder: true
	// token > 0: true
	// state: {"status":"shipped"}
}
