package jetstream_test

import (
	"testing"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/jetstream"
	"github.com/lockservice/lockservice/store/storetest"
)

func TestConformance(t *testing.T) {
	srv := testsrv.NATS(t, "")
	storetest.Run(t, func(t testing.TB, cfg storetest.Config) store.Store {
		nc := testsrv.Connect(t, srv)
		bucket := "conformance"
		if cfg.ObjectTTL > 0 {
			bucket = "conformance-objttl" // a bucket's object TTL is fixed per store
		}
		s, err := jetstream.New(t.Context(), nc, jetstream.Config{Bucket: bucket, ObjectTTL: cfg.ObjectTTL})
		if err != nil {
			t.Fatalf("jetstream.New = %v", err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
