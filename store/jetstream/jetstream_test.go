package jetstream_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

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

// TestTokensSurviveRestart: a nats-server restart with file storage keeps
// the lease, the state and the token sequence.
func TestTokensSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	var srv *server.Server
	start := func() *jetstream.Store {
		srv = testsrv.NATS(t, dir)
		s, err := jetstream.New(t.Context(), testsrv.Connect(t, srv), jetstream.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := start()
	key, id := "restart.k", storetest.NewLockID()
	g, err := s.Acquire(t.Context(), key, id, store.AcquireOptions{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Write(t.Context(), key, id, store.Update{Op: store.Set, Value: []byte("kept")}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	srv.Shutdown()
	srv.WaitForShutdown()

	s = start()
	info, err := s.Get(t.Context(), key)
	if err != nil || !info.Locked || info.Lease.Token != g.Token || string(info.Value) != "kept" {
		t.Fatalf("after restart Get = %+v, %v, want locked with token %d and value kept", info, err, g.Token)
	}
	if err := s.Release(t.Context(), key, id, store.Update{}); err != nil {
		t.Fatalf("release after restart = %v", err)
	}
	g2, err := s.Acquire(t.Context(), key, storetest.NewLockID(), store.AcquireOptions{TTL: time.Minute})
	if err != nil || g2.Token <= g.Token {
		t.Fatalf("acquire after restart = %+v, %v, want token > %d", g2, err, g.Token)
	}
}
