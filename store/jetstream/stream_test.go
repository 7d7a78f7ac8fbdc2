package jetstream_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/store"
	"github.com/lockservice/lockservice/store/jetstream"
	"github.com/lockservice/lockservice/store/storetest"
)

// lockserviceStream is the stream New creates for bucket (as of this test).
func lockserviceStream(bucket string) natsjs.StreamConfig {
	return natsjs.StreamConfig{
		Name:                   "KV_" + bucket,
		Subjects:               []string{"$KV." + bucket + ".>"},
		Storage:                natsjs.FileStorage,
		Replicas:               1,
		MaxMsgsPerSubject:      1,
		Discard:                natsjs.DiscardNew,
		AllowRollup:            true,
		DenyDelete:             true,
		AllowMsgTTL:            true,
		SubjectDeleteMarkerTTL: time.Minute,
		AllowAtomicPublish:     true,
	}
}

// TestNewRefusesABucketWithOtherSettings: every instance used to push its
// own settings over the bucket's stream (an instance without --replicas
// turned an R3 bucket into R1). New now refuses, names both values, and
// leaves the stream as it was.
func TestNewRefusesABucketWithOtherSettings(t *testing.T) {
	srv := testsrv.NATS(t, "")
	nc := testsrv.Connect(t, srv)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		bucket  func(*natsjs.StreamConfig)
		cfg     jetstream.Config
		setting string
		want    []string // in the message
	}{
		{"replicas", nil, jetstream.Config{Replicas: 3}, "replicas",
			[]string{"has 1 replica", "asks for 3", "--replicas 1", "never changes"}},
		{"memory storage", func(c *natsjs.StreamConfig) { c.Storage = natsjs.MemoryStorage }, jetstream.Config{}, "storage",
			[]string{"memory storage", "file storage"}},
		{"history", func(c *natsjs.StreamConfig) { c.MaxMsgsPerSubject = 5 }, jetstream.Config{}, "max_msgs_per_subject",
			[]string{"keeps 5 messages per key", "needs 1"}},
		{"marker TTL shorter than the longest lease", func(c *natsjs.StreamConfig) { c.SubjectDeleteMarkerTTL = 2 * time.Minute }, jetstream.Config{}, "subject_delete_marker_ttl",
			[]string{"2m0s", "asks for 10m0s", "--max-ttl 2m0s", "Config.MarkerTTL"}},
		{"explicit marker TTL", nil, jetstream.Config{MarkerTTL: 90 * time.Second}, "subject_delete_marker_ttl",
			[]string{"1m0s", "asks for 1m30s"}},
		{"max age", func(c *natsjs.StreamConfig) { c.MaxAge = time.Hour }, jetstream.Config{}, "max_age",
			[]string{"max_age 1h0m0s", "before their TTL"}},
		{"discard old with a limit", func(c *natsjs.StreamConfig) { c.Discard, c.MaxBytes = natsjs.DiscardOld, 1<<20 }, jetstream.Config{}, "discard",
			[]string{"discard old"}},
		{"other subjects", func(c *natsjs.StreamConfig) { c.Subjects = []string{"elsewhere.>"} }, jetstream.Config{}, "subjects",
			[]string{"elsewhere.>", "writes to $KV."}},
		{"subject transform", func(c *natsjs.StreamConfig) {
			c.SubjectTransform = &natsjs.SubjectTransformConfig{Source: ">", Destination: "moved.>"}
		}, jetstream.Config{}, "subject_transform", []string{"transforms subjects"}},
		{"deny purge", func(c *natsjs.StreamConfig) {
			c.DenyPurge, c.AllowRollup, c.SubjectDeleteMarkerTTL = true, false, 0
		}, jetstream.Config{}, "deny_purge", []string{"denies purges"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bucket := "mismatch" + string(rune('a'+i))
			sc := lockserviceStream(bucket)
			if tt.bucket != nil {
				tt.bucket(&sc)
			}
			st, err := js.CreateStream(t.Context(), sc)
			if err != nil {
				t.Fatalf("CreateStream(%+v) = %v", sc, err)
			}
			before := st.CachedInfo().Config
			cfg := tt.cfg
			cfg.Bucket = bucket
			s, err := jetstream.New(t.Context(), nc, cfg)
			if err == nil {
				s.Close()
				t.Fatalf("New(%+v) on a bucket with other %s = nil error, want ErrBucketMismatch", cfg, tt.setting)
			}
			var mm *jetstream.BucketMismatchError
			if !errors.Is(err, jetstream.ErrBucketMismatch) || !errors.As(err, &mm) || mm.Setting != tt.setting || mm.Bucket != bucket {
				t.Fatalf("New(%+v) = %v, want a BucketMismatchError on %s", cfg, err, tt.setting)
			}
			t.Log(err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			info, err := st.Info(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(info.Config, before) {
				t.Errorf("stream changed by a refused New:\nbefore %+v\nafter  %+v", before, info.Config)
			}
		})
	}
}

// TestNewSwitchesOnMissingFeaturesOnly: a bucket created by other means
// (nats kv add: no TTLs, no markers, no atomic publish) gets those features
// switched on, and nothing else of its config changes.
func TestNewSwitchesOnMissingFeaturesOnly(t *testing.T) {
	srv := testsrv.NATS(t, "")
	nc := testsrv.Connect(t, srv)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateKeyValue(t.Context(), natsjs.KeyValueConfig{Bucket: "plainkv", Description: "made by hand"}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), "KV_plainkv")
	if err != nil {
		t.Fatal(err)
	}
	before := st.CachedInfo().Config
	if before.AllowAtomicPublish || before.AllowMsgTTL || !before.AllowDirect {
		t.Fatalf("a plain KV bucket has allow_atomic=%v allow_msg_ttl=%v allow_direct=%v; the test needs false, false, true",
			before.AllowAtomicPublish, before.AllowMsgTTL, before.AllowDirect)
	}
	s, err := jetstream.New(t.Context(), nc, jetstream.Config{Bucket: "plainkv"})
	if err != nil {
		t.Fatalf("New on a plain KV bucket = %v, want success", err)
	}
	s.Close()
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := before
	want.AllowMsgTTL, want.AllowAtomicPublish, want.SubjectDeleteMarkerTTL = true, true, 10*time.Minute
	got := info.Config
	got.Metadata, want.Metadata = nil, nil // the server stamps its feature level
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stream after New:\n got %+v\nwant %+v", got, want)
	}

	// A second New finds nothing to change.
	s, err = jetstream.New(t.Context(), nc, jetstream.Config{Bucket: "plainkv"})
	if err != nil {
		t.Fatalf("second New = %v", err)
	}
	s.Close()
}

// An instance asking for shorter markers than the bucket keeps adopts the
// bucket's (its leases are shorter still); the bucket is not changed, and
// its own release markers carry the bucket's TTL.
func TestNewAdoptsALongerMarkerTTL(t *testing.T) {
	srv := testsrv.NATS(t, "")
	nc := testsrv.Connect(t, srv)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	sc := lockserviceStream("adopt") // markers kept 1 minute
	if _, err := js.CreateStream(t.Context(), sc); err != nil {
		t.Fatal(err)
	}
	s, err := jetstream.New(t.Context(), nc, jetstream.Config{Bucket: "adopt", MarkerTTL: 5 * time.Second})
	if err != nil {
		t.Fatalf("New with a shorter marker TTL than the bucket's = %v", err)
	}
	defer s.Close()
	id := storetest.NewLockID()
	if _, err := s.Acquire(t.Context(), "k", id, store.AcquireOptions{TTL: 30 * time.Second}); err != nil {
		t.Fatalf("a 30 s lease under the bucket's 1 minute markers: %v", err)
	}
	if err := s.Release(t.Context(), "k", id, store.Update{}); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(t.Context(), "KV_adopt")
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.SubjectDeleteMarkerTTL; got != time.Minute {
		t.Errorf("bucket's marker TTL changed to %v", got)
	}
	m, err := st.GetLastMsgForSubject(t.Context(), "$KV.adopt.l.k")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get("Nats-TTL"); got != "60s" {
		t.Errorf("release marker Nats-TTL = %q, want the bucket's 60s", got)
	}
	if _, err := s.Acquire(t.Context(), "k2", storetest.NewLockID(), store.AcquireOptions{TTL: 2 * time.Minute}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("a lease longer than the bucket's markers = %v, want ErrInvalid", err)
	}
}
