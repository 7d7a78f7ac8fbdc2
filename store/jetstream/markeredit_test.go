package jetstream_test

import (
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/jetstream"
	"github.com/lockservice/lockservice/store/storetest"
)

// TestMarkerTTLRaisedWhileRunning: docs/STORES.md tells operators to
// change a bucket deliberately with nats stream edit; raising its marker
// TTL (subject_delete_marker_ttl) lets new instances start with a longer
// --max-ttl. An instance started before the edit keeps the bucket's old
// marker TTL as its longest lease and reads every longer lease as a record
// "lockservice did not write", i.e. free: it grants a key that another
// instance holds.
func TestMarkerTTLRaisedWhileRunning(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := t.Context()
	old, err := jetstream.New(ctx, testsrv.Connect(t, srv), jetstream.Config{Bucket: "edit", MarkerTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close() })

	js, _ := natsjs.New(testsrv.Connect(t, srv))
	st, err := js.Stream(ctx, "KV_edit")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.SubjectDeleteMarkerTTL = 20 * time.Second // nats stream edit
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}

	fresh, err := jetstream.New(ctx, testsrv.Connect(t, srv), jetstream.Config{Bucket: "edit", MarkerTTL: 20 * time.Second})
	if err != nil {
		t.Fatalf("an instance with the bucket's new marker TTL: %v", err)
	}
	t.Cleanup(func() { fresh.Close() })
	g1, err := fresh.Acquire(ctx, "k", storetest.NewLockID(), store.AcquireOptions{TTL: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	g2, err := old.Acquire(ctx, "k", storetest.NewLockID(), store.AcquireOptions{TTL: time.Second})
	if err == nil {
		t.Fatalf("two grants of k: token %d (15 s lease by the new instance) and token %d by the instance started before the edit", g1.Token, g2.Token)
	}
}
