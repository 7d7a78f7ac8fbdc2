package service_test

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
)

// rawMsgpack sends a msgpack request and returns the answer's body and
// error code and message.
func rawMsgpack(t testing.TB, nc *nats.Conn, subject string, data []byte) ([]byte, int, string) {
	t.Helper()
	m, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: data,
		Header: nats.Header{api.ContentTypeHeader: {api.MsgpackContentType}}}, 10*time.Second)
	if err != nil {
		t.Fatalf("request %s %q: %v", subject, data, err)
	}
	if c := m.Header.Get(micro.ErrorCodeHeader); c != "" {
		code, _ := strconv.Atoi(c)
		return nil, code, m.Header.Get(micro.ErrorHeader)
	}
	return m.Data, 0, ""
}

// TestWireRulesOverNATS: through a real service, JSON answers are valid
// JSON for a strict parser whatever the state holds, and requests that the
// decoders would take but the protocol does not are refused with a 400
// that says what to fix, changing nothing: a JSON value with invalid
// UTF-8, a msgpack request encoded as an array (which the decoder reads
// field by field into the struct), and a msgpack uint64 above the int64
// range (which a signed read makes negative). Decoding does not depend on
// the store: one backend.
func TestWireRulesOverNATS(t *testing.T) {
	srv, _ := deployment(t, jetstreamBackend(), 1, service.Config{})
	nc := testsrv.Connect(t, srv)
	key := "wire." + client.NewLockID()
	got, code, msg := raw(t, nc, "lock.acquire."+key, `{}`)
	if code != 0 || got["acquired"] != true {
		t.Fatalf("acquire = %v %d %s", got, code, msg)
	}
	id := got["lock_id"].(string)

	// JSON values must be UTF-8.
	for _, op := range []string{"write", "release"} {
		body := fmt.Sprintf("{\"lock_id\":%q,\"value\":{\"name\":\"caf\xe9\"}}", id) // Latin-1, not UTF-8
		_, code, msg := raw(t, nc, "lock."+op+"."+key, body)
		want := op + ` "` + key + `": malformed JSON payload: value is not valid UTF-8 (byte 0xe9 at offset 12 of the value)`
		if code != 400 || !strings.HasPrefix(msg, want) {
			t.Errorf("%s with a Latin-1 value = %d %q, want 400 starting %q", op, code, msg, want)
		}
	}
	if got, _, _ := raw(t, nc, "lock.get."+key, ``); got["locked"] != true || got["has_value"] != false {
		t.Errorf("after the refused write and release: get = %v, want still locked, no state", got)
	}

	// A state written through msgpack that is JSON text but not UTF-8 reads
	// in JSON as $binary: the answer is valid UTF-8 JSON.
	data, _ := msgpack.Marshal(api.WriteRequest{LockID: id, Value: api.Value("\"\xff\"")})
	if _, code, msg := rawMsgpack(t, nc, "lock.write."+key, data); code != 0 {
		t.Fatalf("msgpack write of bytes 22 ff 22 = %d %s", code, msg)
	}
	m, err := nc.Request("lock.get."+key, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !utf8.Valid(m.Data) || !json.Valid(m.Data) || !strings.Contains(string(m.Data), `"value":{"$binary":"Iv8i"}`) {
		t.Errorf("JSON get of a state 22 ff 22 = %q, want valid UTF-8 JSON with value {\"$binary\":\"Iv8i\"}", m.Data)
	}
	body, _, _ := rawMsgpack(t, nc, "lock.get."+key, nil)
	var gr api.GetResponse
	if err := msgpack.Unmarshal(body, &gr); err != nil || string(gr.Value) != "\"\xff\"" {
		t.Errorf("msgpack get = %q, %v, want the bytes 22 ff 22", gr.Value, err)
	}

	// A msgpack request is one map: an acquire encoded as the array of
	// AcquireRequest's fields in order is refused, and takes nothing.
	free := "wire.free." + client.NewLockID()
	arr, _ := msgpack.Marshal([]any{5000, 0, client.NewLockID(), "array", 0})
	if _, code, msg := rawMsgpack(t, nc, "lock.acquire."+free, arr); code != 400 ||
		!strings.Contains(msg, "a request is one msgpack map of field names to values, got an array") {
		t.Errorf("array-encoded acquire = %d %q, want 400 saying a request is one msgpack map", code, msg)
	}
	if got, _, _ := raw(t, nc, "lock.get."+free, ``); got["locked"] != false {
		t.Errorf("after the array-encoded acquire: get = %v, want unlocked", got)
	}

	// Integers above the int64 range are reported as sent.
	for _, c := range []struct {
		subject string
		req     map[string]any
		want    string
	}{
		{"lock.acquire." + free, map[string]any{"ttl_ms": uint64(math.MaxUint64)}, `acquire "` + free + `": malformed msgpack payload: ttl_ms 18446744073709551615 is out of range`},
		{"lock.acquire." + free, map[string]any{"wait_ms": uint64(1 << 63)}, "wait_ms 9223372036854775808 is out of range"},
		{"lock.acquire." + free, map[string]any{"lock_delay_ms": uint64(math.MaxUint64)}, "lock_delay_ms 18446744073709551615 is out of range"},
		{"lock.refresh." + key, map[string]any{"lock_id": id, "ttl_ms": uint64(math.MaxUint64)}, "ttl_ms 18446744073709551615 is out of range"},
		{"lock.wait." + key, map[string]any{"alive_ms": uint64(math.MaxUint64)}, "alive_ms 18446744073709551615 is out of range"},
		{"lock.admin.list", map[string]any{"limit": uint64(math.MaxUint64)}, "limit 18446744073709551615 is out of range"},
	} {
		data, _ := msgpack.Marshal(c.req)
		if _, code, msg := rawMsgpack(t, nc, c.subject, data); code != 400 || !strings.Contains(msg, c.want) {
			t.Errorf("%s %v = %d %q, want 400 saying %q", c.subject, c.req, code, msg, c.want)
		}
	}
	if got, _, _ := raw(t, nc, "lock.get."+free, ``); got["locked"] != false {
		t.Errorf("after the refused acquires: get = %v, want unlocked", got)
	}
}
