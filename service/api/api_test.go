package api

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"

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

// FuzzValidateKey checks ValidateKey against the documented grammar.
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
