package service

import (
	"encoding/json"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/service/api"
)

// FuzzDecode feeds arbitrary payloads, as JSON and as msgpack, to every
// request type: decoding must fail cleanly or yield a value that encodes
// again, never panic.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{}`, `{"ttl_ms":5000,"wait_ms":100,"lock_id":"0123456789abcdef","owner":"me"}`,
		`{"lock_id":"x","value":{"a":[1,2,null]}}`, `{"value":null}`, `[]`, `null`, `{"ttl_ms":1e400}`, "\x81\xa6ttl_ms\xcd\x13\x88"} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, useMsgpack bool) {
		r := &request{data: data, msgpack: useMsgpack}
		for _, v := range []any{&api.AcquireRequest{}, &api.ReleaseRequest{}, &api.RefreshRequest{},
			&api.WriteRequest{}, &api.DeleteRequest{}, &api.WaitRequest{}, &api.CancelRequest{}} {
			if err := r.decode(v); err != nil {
				continue
			}
			if _, err := msgpack.Marshal(v); err != nil {
				t.Errorf("decoded %T does not encode as msgpack: %v", v, err)
			}
			if !useMsgpack {
				if _, err := json.Marshal(v); err != nil {
					t.Errorf("decoded %T does not encode as JSON: %v", v, err)
				}
			}
		}
	})
}
