package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/internal/mpcheck"
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
	"\x82\xa6lock_id\xb00123456789abcdef\xa5value\xc4\x03abc", "\x81\xa5value\xc6\xff\xff\xff\xf0",
	"{\"value\":\"\xff\"}", "\x81\xa5value\xc4\x03\"\xff\"", "\x95\xcd\x13\x88\x00\xa0\xa0\x00",
	"\x81\xa6ttl_ms\xcf\xff\xff\xff\xff\xff\xff\xff\xff"}

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

// checkDecode decodes data into every request type. What decodes must
// encode again, in msgpack and in JSON, and its JSON must be valid JSON
// for a strict parser (UTF-8): a state written in either encoding is read
// in either. A msgpack payload that decodes is one map (or nil), and none
// of its integer fields went negative on the way from an unsigned integer.
func checkDecode(t *testing.T, data []byte, useMsgpack bool) {
	r := &request{data: data, msgpack: useMsgpack}
	for _, v := range requestTypes() {
		if err := r.decode(v); err != nil {
			continue
		}
		if _, err := msgpack.Marshal(v); err != nil {
			t.Errorf("decoded %T does not encode as msgpack: %v", v, err)
		}
		if j, err := json.Marshal(v); err != nil || !json.Valid(j) || !utf8.Valid(j) {
			t.Errorf("decoded %T encodes as JSON %q, %v: not valid JSON", v, j, err)
		}
		if !useMsgpack || len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		if c := data[0]; c != 0xc0 && (c < 0x80 || c > 0x8f) && c != 0xde && c != 0xdf {
			t.Errorf("decoded %T from a msgpack payload that is not a map (code 0x%02x)", v, c)
		}
		rv := reflect.ValueOf(v).Elem()
		for i := range rv.NumField() {
			f := rv.Field(i)
			if f.Kind() == reflect.Pointer && !f.IsNil() {
				f = f.Elem()
			}
			if !f.CanInt() || f.Int() >= 0 {
				continue
			}
			name := msgpackName(rv.Type().Field(i))
			err := mpcheck.Map(data, func(key string, val []byte) error {
				if key == name && val[0] == 0xcf { // a uint64
					return errors.New("negative from a uint64")
				}
				return nil
			})
			if err != nil {
				t.Errorf("decoded %T with %s = %d from a msgpack uint64", v, name, f.Int())
			}
		}
	}
}

// requestTypes returns a fresh value of every request payload type.
func requestTypes() []any {
	return []any{&api.AcquireRequest{}, &api.ReleaseRequest{}, &api.RefreshRequest{},
		&api.WriteRequest{}, &api.DeleteRequest{}, &api.WaitRequest{}, &api.CancelRequest{},
		&api.AliveRequest{}, &api.ListRequest{}, &api.ForceRequest{}}
}

// msgpackName is a struct field's msgpack key.
func msgpackName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("msgpack"), ",")
	return name
}

// TestDecodeIntegerFields sends every integer field of every request type
// the unsigned integers above the int64 range, in msgpack (where they are a
// uint64) and in JSON: each is refused with an error that names the field
// and the value sent, never the negative number a signed read makes of it.
// A field of an unsigned type would need another rule: it fails the test.
func TestDecodeIntegerFields(t *testing.T) {
	n := 0
	for _, v := range requestTypes() {
		rt := reflect.TypeOf(v).Elem()
		for i := range rt.NumField() {
			f := rt.Field(i)
			ft := f.Type
			if ft.Kind() == reflect.Pointer { // an optional field: nil when absent
				ft = ft.Elem()
			}
			switch ft.Kind() {
			case reflect.Int, reflect.Int64, reflect.Int32:
			case reflect.Uint, reflect.Uint64, reflect.Uint32, reflect.Uint16, reflect.Uint8:
				t.Errorf("%s.%s is unsigned: int64Field assumes every request integer is signed", rt.Name(), f.Name)
				continue
			default:
				continue
			}
			n++
			name := msgpackName(f)
			for _, u := range []uint64{math.MaxUint64, 1 << 63, math.MaxInt64 + 2} {
				data, _ := msgpack.Marshal(map[string]uint64{name: u})
				r := &request{data: data, msgpack: true}
				want := fmt.Sprintf("%s %d is out of range", name, u)
				if err := r.decode(reflect.New(rt).Interface()); err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("msgpack %s{%s: %d}: decode = %v, want an error saying %q", rt.Name(), name, u, err, want)
				}
				r = &request{data: fmt.Appendf(nil, `{%q:%d}`, name, u)}
				if err := r.decode(reflect.New(rt).Interface()); err == nil || !strings.Contains(err.Error(), strconv.FormatUint(u, 10)) {
					t.Errorf("JSON %s{%s: %d}: decode = %v, want an error naming %d", rt.Name(), name, u, err, u)
				}
			}
			// The largest signed value still decodes (its range is checked
			// later, against the field's own limit).
			data, _ := msgpack.Marshal(map[string]uint64{name: math.MaxInt64})
			r := &request{data: data, msgpack: true}
			pv := reflect.New(rt)
			fv := pv.Elem().Field(i)
			if err := r.decode(pv.Interface()); err != nil || reflect.Indirect(fv).Int() != math.MaxInt64 {
				t.Errorf("msgpack %s{%s: MaxInt64}: decode = %v, field %v", rt.Name(), name, err, reflect.Indirect(fv))
			}
		}
	}
	if n < 8 { // ttl_ms, wait_ms, alive_ms, lock_delay_ms (acquire), ttl_ms (refresh), wait_ms, alive_ms (wait), limit (list)
		t.Errorf("found %d integer request fields, want at least 8", n)
	}
}

// TestDecodeRefuses: payloads the decoder would take but the protocol
// does not, each refused with an error that says what to fix.
func TestDecodeRefuses(t *testing.T) {
	for _, c := range []struct {
		name    string
		msgpack bool
		data    string
		into    any
		says    string
	}{
		{"msgpack array-encoded acquire", true, "\x95\xcd\x13\x88\x00\xb00123456789abcdef\xa0\x00", &api.AcquireRequest{},
			"malformed msgpack payload: a request is one msgpack map of field names to values, got an array"},
		{"msgpack empty array", true, "\x90", &api.AcquireRequest{}, "got an array"},
		{"msgpack array16", true, "\xdc\x00\x01\xa0", &api.ReleaseRequest{}, "got an array"},
		{"msgpack str", true, "\xa2{}", &api.AcquireRequest{}, "got a str"},
		{"msgpack integer key", true, "\x81\x01\x02", &api.AcquireRequest{}, "map keys must be msgpack strings"},
		{"JSON value with invalid UTF-8", false, "{\"lock_id\":\"0123456789abcdef\",\"value\":\"a\xffb\"}", &api.WriteRequest{},
			"value is not valid UTF-8 (byte 0xff at offset 2 of the value)"},
		{"JSON release with invalid UTF-8", false, "{\"lock_id\":\"0123456789abcdef\",\"value\":{\"k\xc3\":1}}", &api.ReleaseRequest{},
			"JSON text must be UTF-8"},
		{"JSON truncated UTF-8 sequence", false, "{\"value\":\"\xe2\x82\"}", &api.WriteRequest{}, "not valid UTF-8"},
		{"JSON UTF-16 surrogate as UTF-8", false, "{\"value\":\"\xed\xa0\x80\"}", &api.WriteRequest{}, "not valid UTF-8"},
	} {
		r := &request{data: []byte(c.data), msgpack: c.msgpack}
		if err := r.decode(c.into); err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: decode = %v, want an error saying %q", c.name, err, c.says)
		}
	}
	// What the protocol allows still decodes.
	for _, c := range []struct {
		name    string
		msgpack bool
		data    string
		into    any
	}{
		{"msgpack nil", true, "\xc0", &api.AcquireRequest{}},
		{"msgpack empty map", true, "\x80", &api.AcquireRequest{}},
		{"msgpack map16", true, "\xde\x00\x01\xa6ttl_ms\xcd\x13\x88", &api.AcquireRequest{}},
		{"msgpack bin value not UTF-8", true, "\x82\xa7lock_id\xb00123456789abcdef\xa5value\xc4\x03\"\xff\"", &api.WriteRequest{}},
		{"JSON multi-byte UTF-8", false, "{\"value\":\"\\u00fc \xc3\xbc \xe2\x82\xac \xf0\x9d\x84\x9e\"}", &api.WriteRequest{}},
		{"JSON escaped lone surrogate", false, `{"value":"\ud800"}`, &api.WriteRequest{}},
	} {
		r := &request{data: []byte(c.data), msgpack: c.msgpack}
		if err := r.decode(c.into); err != nil {
			t.Errorf("%s: decode = %v, want nil", c.name, err)
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
