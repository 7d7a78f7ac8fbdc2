package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/embedded"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// TestBucketFullAnswers503: when the bucket is at its message limit
// (--bucket-max-msgs), an acquire of a new key is answered 503 with a
// message saying the bucket is full and which limit to raise; the locks
// already there can still be released, and their keys taken again.
func TestBucketFullAnswers503(t *testing.T) {
	srv, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithStoreConfig(jsstore.Config{MaxMsgs: 2}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	nc := srv.Conn()
	req := func(subject, data string) (code, msg string, body []byte) {
		t.Helper()
		m, err := nc.Request(subject, []byte(data), 10*time.Second)
		if err != nil {
			t.Fatalf("request %s = %v", subject, err)
		}
		return m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader), m.Data
	}
	for _, key := range []string{"full.a", "full.b"} {
		if code, msg, body := req("lock.acquire."+key, `{"lock_id":"lockid-`+key[5:]+`-0123456789abcdef"}`); code != "" || !strings.Contains(string(body), `"acquired":true`) {
			t.Fatalf("acquire %s below the limit = %s %s %s", key, code, msg, body)
		}
	}
	code, msg, _ := req("lock.acquire.full.c", `{}`)
	if code != "503" {
		t.Fatalf("acquire of a new key in a full bucket = code %q (%s), want 503", code, msg)
	}
	for _, want := range []string{"store full, nothing was written", "bucket lockservice is full", "max_msgs 2", "nats stream edit KV_lockservice --max-msgs"} {
		if !strings.Contains(msg, want) {
			t.Errorf("503 message %q does not say %q", msg, want)
		}
	}
	if code, msg, body := req("lock.release.full.a", `{"lock_id":"lockid-a-0123456789abcdef"}`); code != "" || !strings.Contains(string(body), `"released":true`) {
		t.Errorf("release in a full bucket = %s %s %s, want released", code, msg, body)
	}
	if code, msg, body := req("lock.acquire.full.a", `{}`); code != "" || !strings.Contains(string(body), `"acquired":true`) {
		t.Errorf("acquire of a released key in a full bucket = %s %s %s, want acquired", code, msg, body)
	}
}

// TestServerStorageFullAnswers503: when the embedded server's JetStream
// storage (--max-store) is used up, writes are answered 503 with a message
// naming that limit.
func TestServerStorageFullAnswers503(t *testing.T) {
	srv, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithMaxStore(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	for i := range 10_000 {
		m, err := srv.Conn().Request(fmt.Sprintf("lock.acquire.store.%d", i), []byte(`{}`), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		code, msg := m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader)
		if code == "" {
			continue
		}
		if code != "503" || !strings.Contains(msg, "the server's JetStream storage is used up") || !strings.Contains(msg, "--max-store") {
			t.Fatalf("acquire %d when the storage is full = %s %q, want 503 naming the storage and --max-store", i, code, msg)
		}
		return
	}
	t.Fatal("10000 acquires fit in 64 KiB of JetStream storage")
}
