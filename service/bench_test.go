package service_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store/storetest"
)

// BenchmarkAcquireRelease measures an uncontended acquire+release pair
// through NATS, the service and the store, one client:
//
//	go test ./service -run '^$' -bench AcquireRelease -count 10 | tee new.txt; benchstat new.txt
func BenchmarkAcquireRelease(b *testing.B) {
	for _, be := range backends(nil) {
		b.Run(be.name, func(b *testing.B) {
			srv, _ := deployment(b, be, 1, service.Config{})
			c := newClient(b, srv)
			ctx := context.Background()
			key := "bench." + storetest.NewLockID()
			for b.Loop() {
				l, err := c.TryAcquire(ctx, key)
				if err != nil {
					b.Fatal(err)
				}
				if err := l.Release(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParallelKeys: 64 clients on 64 distinct keys (pairs/s is
// b.N / elapsed).
func BenchmarkParallelKeys(b *testing.B) {
	for _, be := range backends(nil) {
		b.Run(be.name, func(b *testing.B) {
			srv, _ := deployment(b, be, 1, service.Config{})
			clients := make([]*client.Client, 8)
			for i := range clients {
				clients[i] = newClient(b, srv)
			}
			b.SetParallelism(32) // 32 x GOMAXPROCS(2) = 64 goroutines
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				i := int(n.Add(1))
				c := clients[i%len(clients)]
				key := fmt.Sprintf("bench.par.%d.%s", i, storetest.NewLockID())
				ctx := context.Background()
				for pb.Next() {
					l, err := c.TryAcquire(ctx, key)
					if err != nil {
						b.Error(err)
						return
					}
					if err := l.Release(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkGet(b *testing.B) {
	for _, be := range backends(nil) {
		b.Run(be.name, func(b *testing.B) {
			srv, _ := deployment(b, be, 1, service.Config{})
			c := newClient(b, srv)
			ctx := context.Background()
			key := "bench." + storetest.NewLockID()
			for b.Loop() {
				if _, err := c.Get(ctx, key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
