package service

import (
	"encoding/json"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/service/api"
)

// FuzzDecode feeds arbitrary payloads, as JSON and as msgpack, to every
// request type: decoding must fail cleanly or yield a value that encodes
// again, never panic.
// For longer runs by hand: go test ./service -run '^$' -fuzz FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(checkDecode)
}

var decodeSeeds = []string{`{}`, `{"ttl_ms":5000,"wait_ms":100,"lock_id":"0123456789abcdef","owner":"me"}`,
	`{"lock_id":"x","value":{"a":[1,2,null]}}`, `{"value":null}`, `[]`, `null`, `{"ttl_ms":1e400}`,
	`{"ttl_ms":-1,"value":{"$binary":"AAEC"}}`, "\x81\xa6ttl_ms\xcd\x13\x88",
	"\x82\xa6lock_id\xb00123456789abcdef\xa5value\xc4\x03abc", "\x81\xa5value\xc6\xff\xff\xff\xf0"}

// TestDecodeMutations runs the FuzzDecode check on many mutations of its seeds
// (a fixed seed, so a failure reproduces): flipped, inserted, deleted and
// duplicated bytes, decoded as JSON and as msgpack.
func TestDecodeMutations(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	n := 50000
	if testing.Short() {
		n = 5000
	}
	for i := 0; i < n; i++ {
		data := []byte(decodeSeeds[rng.IntN(len(decodeSeeds))])
		for m := rng.IntN(4); m >= 0; m-- {
			pos := 0
			if len(data) > 0 {
				pos = rng.IntN(len(data))
			}
			switch rng.IntN(4) {
			case 0:
				if len(data) > 0 {
					data[pos] = byte(rng.IntN(256))
				}
			case 1:
				data = append(data[:pos], append([]byte{byte(rng.IntN(256))}, data[pos:]...)...)
			case 2:
				if len(data) > 0 {
					data = append(data[:pos], data[pos+1:]...)
				}
			case 3:
				data = append(data, data[pos:]...)
			}
		}
		checkDecode(t, data, i%2 == 0)
		if t.Failed() {
			t.Fatalf("input %q (msgpack=%v)", data, i%2 == 0)
		}
	}
}

func checkDecode(t *testing.T, data []byte, useMsgpack bool) {
	{
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
	}
}

// A msgpack request declaring a huge string is rejected before the decoder
// allocates anything from the declared length.
func TestDecodeRejectsDeclaredLengths(t *testing.T) {
	// Averaged over runs: TotalAlloc counts every goroutine's allocations.
	const runs = 20
	var ms1, ms2 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	for range runs {
		r := &request{data: []byte("\x81\xa7lock_id\xdb\xff\xff\xff\xf0"), msgpack: true}
		if err := r.decode(&api.AcquireRequest{}); err == nil {
			t.Fatal("decoded a string declaring 4 GiB in a 13-byte payload")
		}
	}
	runtime.ReadMemStats(&ms2)
	if got := (ms2.TotalAlloc - ms1.TotalAlloc) / runs; got > 256<<10 {
		t.Errorf("rejecting a 13-byte payload allocated %d bytes", got)
	}
}
