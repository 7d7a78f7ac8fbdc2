package mpcheck

import (
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// Check accepts what the msgpack encoder writes and rejects declared
// lengths that run past the payload, so decoding never allocates from them.
func TestCheck(t *testing.T) {
	big := make([]byte, 70000)
	for _, v := range []any{
		map[string]any{"ttl_ms": 5000, "wait_ms": int64(1 << 40), "lock_id": "0123456789abcdef", "owner": string(big[:300])},
		map[string]any{"lock_id": "0123456789abcdef", "value": big},
		map[string]any{"value": []byte{}},
		map[string]any{"a": []any{nil, true, false, -1, -200, 70000, -70000, 1 << 40, 1.5, float32(2.5), "s", map[string]any{}}},
		[]any{msgpack.RawMessage{0xd4, 1, 2}, msgpack.RawMessage{0xc7, 1, 5, 9}},
	} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := Check(b); err != nil {
			t.Errorf("Check(%T) = %v on the encoder's own output", v, err)
		}
	}
	for _, bad := range []string{
		"\x81\xa7lock_id\xdb\xff\xff\xff\xf0", // str32 of 4 GiB
		"\x81\xa5value\xc6\x00\x10\x00\x00x",  // bin32 of 1 MiB, 1 byte present
		"\xdf\xff\xff\xff\xff",                // map32 of 4G entries
		"\xdd\x00\x01\x00\x00\x01",            // array32 of 65536, 1 byte present
		"\x80\x00",                            // trailing byte
		"\xc1",                                // never-used code
		"\x82\xa1a\x01",                       // map ends early
	} {
		if err := Check([]byte(bad)); err == nil {
			t.Errorf("Check(%q) = nil, want an error", bad)
		}
	}
}

// Nesting deeper than MaxDepth is refused before any decoder recurses into
// it (a 60 KiB record nested 47 000 deep cost 8 MB of stack per decode).
func TestCheckDepth(t *testing.T) {
	nested := func(n int) []byte {
		b := make([]byte, 0, n+1)
		for i := 0; i < n; i++ {
			b = append(b, 0x91) // fixarray of one
		}
		return append(b, 0xc0) // nil
	}
	if err := Check(nested(MaxDepth)); err != nil {
		t.Errorf("Check(%d nested arrays) = %v, want nil", MaxDepth, err)
	}
	for _, n := range []int{MaxDepth + 1, 47000} {
		if err := Check(nested(n)); err == nil {
			t.Errorf("Check(%d nested arrays) = nil, want an error", n)
		}
	}
	// Depth comes back down: many shallow siblings are fine.
	b := []byte{0xdc, 0x01, 0x00} // array16 of 256
	for i := 0; i < 256; i++ {
		b = append(b, 0x91, 0x91, 0xc0)
	}
	if err := Check(b); err != nil {
		t.Errorf("Check(256 siblings of depth 2) = %v", err)
	}
}
