package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
)

func TestValidateKey(t *testing.T) {
	valid := []string{"a", "orders.42", "orders/42", "a=b", "a_b-c", "A.b.C.1", strings.Repeat("k", MaxKeyLen)}
	invalid := []string{"", ".", "a.", ".a", "a..b", "a b", "a*", "*", ">", "a.>", "a:b", "ä", "a\x00", "a\n", strings.Repeat("k", MaxKeyLen+1)}
	for _, k := range valid {
		if err := ValidateKey(k); err != nil {
			t.Errorf("ValidateKey(%q) = %v, want nil", k, err)
		}
	}
	for _, k := range invalid {
		if err := ValidateKey(k); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ValidateKey(%q) = %v, want ErrInvalidKey", k, err)
		}
	}
}

var keyRe = regexp.MustCompile(`^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$`)

// TestValidateKeyRandom checks ValidateKey against the documented grammar on
// many generated keys (a fixed seed, so a failure reproduces). Biased towards
// the interesting bytes: valid characters, '.', and a few invalid ones.
func TestValidateKeyRandom(t *testing.T) {
	const alphabet = "aZ09-/_=..........*> \x00\xff:ä"
	rng := rand.New(rand.NewPCG(1, 2))
	n := 200000
	if testing.Short() {
		n = 20000
	}
	for i := 0; i < n; i++ {
		size := rng.IntN(12)
		long := i%1000 == 0
		if long {
			size = MaxKeyLen - 2 + rng.IntN(5)
		}
		b := make([]byte, size)
		for j := range b {
			switch {
			case long: // around the length limit: valid tokens, now and then a '.'
				b[j] = alphabet[rng.IntN(8)]
				if j > 0 && j < size-1 && b[j-1] != '.' && rng.IntN(50) == 0 {
					b[j] = '.'
				}
			case rng.IntN(4) == 0:
				b[j] = alphabet[rng.IntN(len(alphabet))]
			default:
				b[j] = alphabet[rng.IntN(8)]
			}
		}
		key := string(b)
		err := ValidateKey(key)
		want := keyRe.MatchString(key) && len(key) <= MaxKeyLen
		if (err == nil) != want {
			t.Fatalf("ValidateKey(%q) = %v, grammar says valid=%v", key, err, want)
		}
		if err != nil && !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("ValidateKey(%q) = %v, not ErrInvalidKey", key, err)
		}
	}
}

// FuzzValidateKey checks ValidateKey against the documented grammar
// (for longer runs by hand: go test ./service/api -run '^$' -fuzz FuzzValidateKey).
func FuzzValidateKey(f *testing.F) {
	for _, s := range []string{"a", "a.b", "a..b", ".", "a*b", "orders/42", "x=y_z-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := ValidateKey(key)
		want := keyRe.MatchString(key) && len(key) <= MaxKeyLen
		if (err == nil) != want {
			t.Errorf("ValidateKey(%q) = %v, grammar says valid=%v", key, err, want)
		}
	})
}

func TestValidateLockID(t *testing.T) {
	for _, id := range []string{"0123456789abcdef", "AAAAAAAAAAAAAAAAAAAAAA", strings.Repeat("-", 128)} {
		if err := ValidateLockID(id); err != nil {
			t.Errorf("ValidateLockID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", "short", strings.Repeat("a", 129), "0123456789abcdef!", "0123456789 abcdef"} {
		if err := ValidateLockID(id); err == nil {
			t.Errorf("ValidateLockID(%q) = nil, want an error", id)
		}
	}
}

func TestValueEncoding(t *testing.T) {
	// JSON: raw JSON kept byte for byte, null for none, $binary otherwise.
	for _, c := range []struct {
		v    Value
		want string
	}{
		{nil, `{"key":"k","value":null}`},
		{Value(`{"a": [1, 2]}`), `{"key":"k","value":{"a":[1,2]}}`}, // stored as sent; JSON answers are compacted
		{Value("null"), `{"key":"k","value":null}`},
		{Value{0xff, 0x00}, `{"key":"k","value":{"$binary":"/wA="}}`},
	} {
		b, err := json.Marshal(WaitResponse{Key: "k", Value: c.v})
		if err != nil || string(b) != c.want {
			t.Errorf("json(%q) = %s, %v, want %s", c.v, b, err, c.want)
		}
	}
	// A present null is a value; an absent field is none.
	var r ReleaseRequest
	if err := json.Unmarshal([]byte(`{"lock_id":"x","value":null}`), &r); err != nil || string(r.Value) != "null" {
		t.Errorf("value null decoded as %q, %v", r.Value, err)
	}
	r = ReleaseRequest{}
	if err := json.Unmarshal([]byte(`{"lock_id":"x"}`), &r); err != nil || r.Value != nil {
		t.Errorf("absent value decoded as %q, %v", r.Value, err)
	}
	// msgpack: bin, byte for byte.
	b, _ := msgpack.Marshal(WaitResponse{Key: "k", Value: Value{0, 1, 2}})
	var w WaitResponse
	if err := msgpack.Unmarshal(b, &w); err != nil || string(w.Value) != "\x00\x01\x02" {
		t.Errorf("msgpack round trip = %q, %v", w.Value, err)
	}
}

// A msgpack value is allocated as its bytes arrive: a tiny payload declaring
// a huge bin fails without allocating the declared size.
func TestValueMsgpackDeclaredLength(t *testing.T) {
	payload := []byte("\x81\xa5value\xc6\xff\xff\xff\xf0")
	var ms1, ms2 runtime.MemStats
	runtime.ReadMemStats(&ms1)
	var r ReleaseRequest
	if err := msgpack.Unmarshal(payload, &r); err == nil {
		t.Fatal("a bin declaring 4 GiB in a 15-byte payload decoded without error")
	}
	runtime.ReadMemStats(&ms2)
	if got := ms2.TotalAlloc - ms1.TotalAlloc; got > 1<<20 {
		t.Fatalf("decoding a 15-byte payload allocated %d bytes", got)
	}

	big := bytes.Repeat([]byte("x"), 3*valueChunk+5)
	for _, c := range []struct {
		name string
		in   any
		want Value
	}{
		{"nil", map[string]any{"value": nil}, nil},
		{"empty bin", map[string]any{"value": []byte{}}, Value{}},
		{"bin", map[string]any{"value": []byte("abc")}, Value("abc")},
		{"str", map[string]any{"value": "abc"}, Value("abc")},
		{"big bin", map[string]any{"value": big}, Value(big)},
	} {
		b, err := msgpack.Marshal(c.in)
		if err != nil {
			t.Fatal(err)
		}
		var r ReleaseRequest
		if err := msgpack.Unmarshal(b, &r); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if (r.Value == nil) != (c.want == nil) || !bytes.Equal(r.Value, c.want) {
			t.Fatalf("%s: got %q, want %q", c.name, r.Value, c.want)
		}
	}
	b, _ := msgpack.Marshal(map[string]any{"value": 42})
	var r2 ReleaseRequest
	if err := msgpack.Unmarshal(b, &r2); err == nil || !strings.Contains(err.Error(), "bin, str or nil") {
		t.Fatalf("value 42: err = %v, want a message naming bin, str or nil", err)
	}
}

// A JSON answer is valid JSON whatever the state holds: bytes that are JSON
// text but not UTF-8 (written through msgpack) read as {"$binary":...},
// and a JSON request cannot store them.
func TestValueJSONIsUTF8(t *testing.T) {
	for _, c := range []struct {
		v    Value
		want string
	}{
		{Value("\"\xff\""), `{"$binary":"Iv8i"}`},
		{Value("{\"k\xc3\":1}"), `{"$binary":"eyJrwyI6MX0="}`},
		{Value(`"ü€"`), `"ü€"`},
		{Value{}, `{"$binary":""}`},
	} {
		b, err := json.Marshal(c.v)
		if err != nil || string(b) != c.want || !utf8.Valid(b) {
			t.Errorf("json(%q) = %s, %v, want %s", c.v, b, err, c.want)
		}
	}
	var r WriteRequest
	err := json.Unmarshal([]byte("{\"lock_id\":\"x\",\"value\":[\"ok\",\"\xe2\x82\"]}"), &r)
	if err == nil || !strings.Contains(err.Error(), "value is not valid UTF-8 (byte 0xe2 at offset 7 of the value)") {
		t.Errorf("value with invalid UTF-8: %v, want an error naming the byte", err)
	}
}

// In a release, a nil Value is absent (the state is kept) and an empty one
// is present (an empty state is written), in both encodings.
func TestReleaseValueNilVersusEmpty(t *testing.T) {
	for _, c := range []struct {
		v       Value
		present bool
	}{{nil, false}, {Value{}, true}, {Value("x"), true}} {
		b, err := msgpack.Marshal(ReleaseRequest{LockID: "0123456789abcdef", Value: c.v})
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := msgpack.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if _, ok := m["value"]; ok != c.present {
			t.Errorf("msgpack release with value %#v: value present = %v, want %v", c.v, ok, c.present)
		}
		var back ReleaseRequest
		if err := msgpack.Unmarshal(b, &back); err != nil || (back.Value == nil) != (c.v == nil) || !bytes.Equal(back.Value, c.v) {
			t.Errorf("msgpack release with value %#v decodes as %#v, %v", c.v, back.Value, err)
		}
		j, _ := json.Marshal(ReleaseRequest{LockID: "0123456789abcdef", Value: c.v})
		if got := strings.Contains(string(j), `"value"`); got != c.present {
			t.Errorf("JSON release with value %#v = %s, want value present %v", c.v, j, c.present)
		}
	}
}
