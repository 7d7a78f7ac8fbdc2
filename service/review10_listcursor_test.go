package service_test

import (
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

// Guarantee 2 (bad input answers 400; List returns only locks under the
// prefix, never misses one held throughout).
//
// Guards (Redis): the cursor is base64 JSON that store/redis/admin.go
// decodeCursor accepts whatever it says. A cursor List never returned
// ({"d":true,"p":["<key outside the prefix>"]}) is answered 200 and lists a
// lock that does not start with the requested prefix (Pending keys are
// read without a prefix check); one naming an unknown node is answered 503
// ("retry"), so a client that retries 503 loops forever on it.
func TestReview10RedisListForgedCursor(t *testing.T) {
	b := redisBackend()
	srv := testsrv.NATS(t, "")
	startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), service.Config{})
	nc := testsrv.Connect(t, srv)
	prefix := "p" + client.NewLockID()[:6] + "."
	outside := "zother" + client.NewLockID()[:6] + ".k"
	raw(t, nc, "lock.acquire."+prefix+"a", `{"ttl_ms":60000}`)
	raw(t, nc, "lock.acquire."+outside, `{"ttl_ms":60000}`)
	enc := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	for _, cur := range []string{
		enc(fmt.Sprintf(`{"d":true,"p":[%q]}`, outside)),
		enc(`{"n":"nosuchnode","c":5}`),
	} {
		r, code, msg := raw(t, nc, "lock.admin.list", fmt.Sprintf(`{"prefix":%q,"cursor":%q,"limit":5}`, prefix, cur))
		if code != 400 {
			t.Errorf("list prefix %q with a cursor List never returned (%q) answered %d %s %v, want 400", prefix, cur, code, msg, r)
		}
	}
}

// Guarantee 2 (a garbage cursor answers 400).
//
// Guards (JetStream): store/jetstream List takes any string as a cursor
// ("the last key of the previous page") and skips every key <= it. The
// garbage cursor "zzzz" is answered 200 with an empty page and cursor ""
// (the listing is "complete") while a lock under the prefix is held: a
// silent miss instead of 400.
func TestReview10JetStreamListGarbageCursor(t *testing.T) {
	b := jetstreamBackend()
	srv := testsrv.NATS(t, "")
	startInstance(t, srv.ClientURL(), b.newStore(t, srv.ClientURL()), service.Config{})
	nc := testsrv.Connect(t, srv)
	prefix := "p" + client.NewLockID()[:6] + "."
	raw(t, nc, "lock.acquire."+prefix+"a", `{"ttl_ms":60000}`)
	r, code, msg := raw(t, nc, "lock.admin.list", fmt.Sprintf(`{"prefix":%q,"cursor":"zzzz","limit":5}`, prefix))
	if code != 400 {
		t.Errorf("list with the garbage cursor \"zzzz\" answered %d %s %v, want 400", code, msg, r)
	}
}
