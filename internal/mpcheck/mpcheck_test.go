package mpcheck

import (
	"errors"
	"strings"
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

// Map accepts one map with string keys, or nil, and hands each entry to
// its callback; anything else is refused with an error naming what came.
func TestMap(t *testing.T) {
	type entry struct{ key, value string }
	big := make([]byte, 300)
	for _, c := range []struct {
		name string
		in   any
		want []entry
	}{
		{"nil", nil, nil},
		{"empty map", map[string]any{}, nil},
		{"uint64", map[string]any{"ttl_ms": uint64(5000)}, []entry{{"ttl_ms", "\xcf\x00\x00\x00\x00\x00\x00\x13\x88"}}},
		{"str8 key and bin value", map[string]any{string(big[:40]): []byte("ab")}, []entry{{string(big[:40]), "\xc4\x02ab"}}},
		{"nested value", map[string]any{"a": []any{1, map[string]any{"b": nil}}}, []entry{{"a", "\x92\x01\x81\xa1b\xc0"}}},
	} {
		b, err := msgpack.Marshal(c.in)
		if err != nil {
			t.Fatal(err)
		}
		var got []entry
		if err := Map(b, func(k string, v []byte) error { got = append(got, entry{k, string(v)}); return nil }); err != nil {
			t.Errorf("Map(%s) = %v, want nil", c.name, err)
			continue
		}
		if len(got) != len(c.want) || len(got) > 0 && got[0] != c.want[0] {
			t.Errorf("Map(%s) called back with %q, want %q", c.name, got, c.want)
		}
	}
	// map16 and map32 headers.
	for _, b := range []string{"\xde\x00\x01\xa1a\x01", "\xdf\x00\x00\x00\x01\xa1a\x01"} {
		n := 0
		if err := Map([]byte(b), func(k string, v []byte) error { n++; return nil }); err != nil || n != 1 {
			t.Errorf("Map(%q) = %v after %d entries, want nil after 1", b, err, n)
		}
	}

	for _, c := range []struct {
		in, says string
	}{
		{"", "ends early"},
		{"\x90", "got an array"},
		{"\x95\xcd\x13\x88\x00\xa0\xa0\x00", "got an array"},
		{"\xdc\x00\x00", "got an array"},
		{"\xa3abc", "got a str"},
		{"\x05", "got an integer"},
		{"\xcb\x00\x00\x00\x00\x00\x00\x00\x00", "got a float"},
		{"\xc4\x00", "got a bin"},
		{"\xc3", "got a bool"},
		{"\xc1", "invalid code 0xc1"},
		{"\x81\x01\x02", "keys must be msgpack strings (field names), got an integer"},
		{"\x81\xc4\x01a\x02", "keys must be msgpack strings (field names), got a bin"},
		{"\x81\xc0\x02", "keys must be msgpack strings (field names), got nil"},
		{"\x81\xa1a", "ends early"},
		{"\x82\xa1a\x01", "runs past the end"},
		{"\xdf\xff\xff\xff\xff", "runs past the end"},
		{"\xde\x00", "runs past the end"},
		{"\x81\xa7lock_id\xdb\xff\xff\xff\xf0", "runs past the end"},
		{"\x80\x00", "1 bytes after the value"},
		{"\xc0\x00", "1 bytes after the value"},
	} {
		err := Map([]byte(c.in), func(string, []byte) error { return nil })
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("Map(%q) = %v, want an error saying %q", c.in, err, c.says)
		}
	}

	// The callback's error stops the walk and comes back as it is.
	stop := errors.New("stop")
	n := 0
	b, _ := msgpack.Marshal(map[string]any{"a": 1, "b": 2})
	if err := Map(b, func(string, []byte) error { n++; return stop }); err != stop || n != 1 {
		t.Errorf("Map with a failing callback = %v after %d calls, want stop after 1", err, n)
	}

	// Depth counts the map itself: MaxDepth levels in all, as for Check.
	nested := func(n int) []byte {
		b := []byte("\x81\xa1a")
		for i := 0; i < n; i++ {
			b = append(b, 0x91)
		}
		return append(b, 0xc0)
	}
	if err := Map(nested(MaxDepth-1), func(string, []byte) error { return nil }); err != nil {
		t.Errorf("Map(a map holding %d nested arrays) = %v, want nil", MaxDepth-1, err)
	}
	if err := Map(nested(MaxDepth), func(string, []byte) error { return nil }); err == nil {
		t.Errorf("Map(a map holding %d nested arrays) = nil, want an error", MaxDepth)
	}
	if err := Check(nested(MaxDepth)); err == nil {
		t.Errorf("Check(a map holding %d nested arrays) = nil, want an error", MaxDepth)
	}
}
