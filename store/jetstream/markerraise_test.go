package jetstream_test

import (
	"fmt"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/jetstream"
	"github.com/lockservice/lockservice/store/storetest"
)

// TestGetAfterMarkerTTLRaised: TestMarkerTTLRaisedWhileRunning for
// get. f597c89 made Acquire and held() re-read the bucket's marker TTL
// before treating an "overlong" lease as a record lockservice did not
// write, but Get does not: an instance started before the operator raised
// the marker TTL answers get with "unlocked" for a live lease that a newer
// instance granted, until its reaper's next clock sample (every second).
// A wait parked on that instance is answered "free" by the same Get.
//
// Each round raises the marker TTL again, so the old instance cannot have
// sampled the latest value before its Get.
func TestGetAfterMarkerTTLRaised(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := t.Context()
	old, err := jetstream.New(ctx, testsrv.Connect(t, srv), jetstream.Config{Bucket: "edit", MarkerTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close() })
	js, _ := natsjs.New(testsrv.Connect(t, srv))
	wrong := 0
	for i := 0; i < 3; i++ {
		marker := time.Duration(20+10*i) * time.Second
		st, err := js.Stream(ctx, "KV_edit")
		if err != nil {
			t.Fatal(err)
		}
		cfg := st.CachedInfo().Config
		cfg.SubjectDeleteMarkerTTL = marker // nats stream edit
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		fresh, err := jetstream.New(ctx, testsrv.Connect(t, srv), jetstream.Config{Bucket: "edit", MarkerTTL: marker})
		if err != nil {
			t.Fatal(err)
		}
		key := fmt.Sprintf("k%d", i)
		g, err := fresh.Acquire(ctx, key, storetest.NewLockID(), store.AcquireOptions{TTL: marker - 5*time.Second})
		if err != nil {
			t.Fatal(err)
		}
		info, err := old.Get(ctx, key)
		fresh.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !info.Locked {
			wrong++
			t.Errorf("round %d: get on the instance started before the edit = unlocked; %s is held (token %d, %v lease, marker TTL now %v)", i, key, g.Token, marker-5*time.Second, marker)
		}
	}
	t.Logf("%d of 3 gets wrong", wrong)
}

// TestRefreshPastOldMarkerTTLIsNoRelease: after an operator raised
// the bucket's marker TTL, a holder refreshes its lease (through a newer
// instance) to a TTL above the marker TTL an older instance started with.
// The older instance's watcher parses the refreshed lease as a record
// lockservice did not write, i.e. free, and reports a store.Released event
// for a key nobody released. Since f597c89 the service wakes parked
// requests on that event, and a parked wait is then answered by Get (see
// TestGetAfterMarkerTTLRaised), which also says "unlocked".
func TestRefreshPastOldMarkerTTLIsNoRelease(t *testing.T) {
	srv := testsrv.NATS(t, "")
	ctx := t.Context()
	old, err := jetstream.New(ctx, testsrv.Connect(t, srv), jetstream.Config{Bucket: "edit", MarkerTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { old.Close() })
	events := make(chan store.Event, 16)
	old.Notify(func(e store.Event) {
		select {
		case events <- e:
		default:
		}
	})
	js, _ := natsjs.New(testsrv.Connect(t, srv))
	st, err := js.Stream(ctx, "KV_edit")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.SubjectDeleteMarkerTTL = 20 * time.Second
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	fresh, err := jetstream.New(ctx, testsrv.Connect(t, srv), jetstream.Config{Bucket: "edit", MarkerTTL: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fresh.Close() })
	id := storetest.NewLockID()
	if _, err := fresh.Acquire(ctx, "k", id, store.AcquireOptions{TTL: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Refresh(ctx, "k", id, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(300 * time.Millisecond)
	for {
		select {
		case e := <-events:
			if e.Key == "k" {
				t.Fatalf("old instance's store reported %v (kind %d: 1 is Released) for k, which its holder only refreshed", e, e.Kind)
			}
		case <-deadline:
			return
		}
	}
}
