package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/embedded"
)

func ExampleWithKeepAlive() {
	srv, err := embedded.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	c, err := client.New(srv.Conn())
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	// The client refreshes the 1s lease every 333ms until Release.
	l, err := c.Acquire(ctx, "reports.daily", client.WithTTL(time.Second), client.WithKeepAlive())
	if err != nil {
		log.Fatal(err)
	}
	// work is cancelled the moment the lease is lost; context.Cause says why.
	work, cancel := l.Context(ctx)
	defer cancel()
	select {
	case <-work.Done():
		fmt.Println("lease lost:", errors.Is(context.Cause(work), client.ErrNotHeld))
	case <-time.After(2500 * time.Millisecond):
		fmt.Println("held after 2.5 TTLs:", l.Err() == nil)
	}
	if err := l.Release(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("released:", errors.Is(l.Err(), client.ErrReleased))
	// Output:
	// held after 2.5 TTLs: true
	// released: true
}
