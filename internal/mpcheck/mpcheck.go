// Package mpcheck checks msgpack payloads from untrusted sources before they
// are decoded.
package mpcheck

import (
	"errors"
	"fmt"
)

// MaxDepth is how deeply arrays and maps may nest in a checked value.
const MaxDepth = 32

var errShort = errors.New("a length runs past the end of the payload")

// Check walks one msgpack value and checks that every length it
// declares (strings, binaries, extensions, array and map sizes) fits in the
// bytes that follow, that arrays and maps nest at most MaxDepth deep, and
// that nothing follows the value. The decoder allocates from declared
// lengths (up to 1 MiB per string in msgpack v5), so a 15-byte request could
// otherwise cost a megabyte; and it skips unknown fields recursively, so a
// 60 KiB value nested 47 000 deep grew a goroutine's stack by 8 MB.
func Check(b []byte) error {
	n, err := valueLen(b, MaxDepth)
	if err != nil {
		return err
	}
	if n < len(b) {
		return fmt.Errorf("%d bytes after the value", len(b)-n)
	}
	return nil
}

// Map checks b as Check does, and that its value is a map whose keys are
// strings, or nil (no entries): the shape of a request. It calls field for
// each entry in order, with the key and the encoded bytes of its value
// (one whole msgpack value, already checked); an error from field stops the
// walk and is returned as it is.
func Map(b []byte, field func(key string, value []byte) error) error {
	if len(b) == 0 {
		return errors.New("payload ends early")
	}
	var n, p int
	switch c := b[0]; {
	case c == 0xc0: // nil: no entries
		p = 1
	case c >= 0x80 && c <= 0x8f: // fixmap
		n, p = int(c&0x0f), 1
	case c == 0xde: // map16
		if len(b) < 3 {
			return errShort
		}
		n, p = int(b[1])<<8|int(b[2]), 3
	case c == 0xdf: // map32
		if len(b) < 5 {
			return errShort
		}
		for _, c := range b[1:5] {
			n = n<<8 | int(c)
			if n > len(b) {
				return errShort
			}
		}
		p = 5
	default:
		return fmt.Errorf("a request is one msgpack map of field names to values, got %s", kind(c))
	}
	if n > (len(b)-p)/2 {
		return errShort // each key and each value takes at least a byte
	}
	for range n {
		k, err := valueLen(b[p:], MaxDepth-1)
		if err != nil {
			return err
		}
		key, ok := str(b[p : p+k])
		if !ok {
			return fmt.Errorf("map keys must be msgpack strings (field names), got %s", kind(b[p]))
		}
		p += k
		v, err := valueLen(b[p:], MaxDepth-1)
		if err != nil {
			return err
		}
		if err := field(key, b[p:p+v]); err != nil {
			return err
		}
		p += v
	}
	if p < len(b) {
		return fmt.Errorf("%d bytes after the value", len(b)-p)
	}
	return nil
}

// str returns the string that b, one checked msgpack value, encodes, if it
// is a str.
func str(b []byte) (string, bool) {
	switch c := b[0]; {
	case c >= 0xa0 && c <= 0xbf:
		return string(b[1:]), true
	case c == 0xd9:
		return string(b[2:]), true
	case c == 0xda:
		return string(b[3:]), true
	case c == 0xdb:
		return string(b[5:]), true
	}
	return "", false
}

// kind names the type of the msgpack value that starts with code c.
func kind(c byte) string {
	switch {
	case c <= 0x7f || c >= 0xe0, c >= 0xcc && c <= 0xd3:
		return "an integer"
	case c <= 0x8f, c == 0xde, c == 0xdf:
		return "a map"
	case c <= 0x9f, c == 0xdc, c == 0xdd:
		return "an array"
	case c <= 0xbf, c >= 0xd9 && c <= 0xdb:
		return "a str"
	case c == 0xc0:
		return "nil"
	case c == 0xc2, c == 0xc3:
		return "a bool"
	case c >= 0xc4 && c <= 0xc6:
		return "a bin"
	case c == 0xca, c == 0xcb:
		return "a float"
	case c >= 0xc7 && c <= 0xc9, c >= 0xd4 && c <= 0xd8:
		return "an ext"
	}
	return fmt.Sprintf("the invalid code 0x%02x", c)
}

// valueLen walks the msgpack value at the start of b, checking its declared
// lengths and that it nests at most maxDepth deep, and returns its length
// in bytes.
func valueLen(b []byte, maxDepth int) (int, error) {
	p := 0
	size := func(k int) (int, error) { // a big-endian length of k bytes
		if len(b)-p < k {
			return 0, errShort
		}
		n := 0
		for _, c := range b[p : p+k] {
			n = n<<8 | int(c)
			if n > len(b) {
				return 0, errShort
			}
		}
		p += k
		return n, nil
	}
	pending := []int{1} // values still to read in each open array or map
	for len(pending) > 0 {
		top := len(pending) - 1
		if pending[top] == 0 {
			pending = pending[:top]
			continue
		}
		if p == len(b) {
			return 0, errors.New("payload ends early")
		}
		c := b[p]
		p++
		pending[top]--
		var skip, items int
		var err error
		switch {
		case c <= 0x7f || c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3: // fixint, nil, bool
		case c <= 0x8f: // fixmap
			items = 2 * int(c&0x0f)
		case c <= 0x9f: // fixarray
			items = int(c & 0x0f)
		case c <= 0xbf: // fixstr
			skip = int(c & 0x1f)
		case c == 0xc4, c == 0xd9: // bin8, str8
			skip, err = size(1)
		case c == 0xc5, c == 0xda: // bin16, str16
			skip, err = size(2)
		case c == 0xc6, c == 0xdb: // bin32, str32
			skip, err = size(4)
		case c == 0xc7, c == 0xc8, c == 0xc9: // ext8/16/32: length, type, data
			skip, err = size(1 << (c - 0xc7))
			skip++
		case c == 0xca, c == 0xce, c == 0xd2: // float32, uint32, int32
			skip = 4
		case c == 0xcb, c == 0xcf, c == 0xd3: // float64, uint64, int64
			skip = 8
		case c == 0xcc, c == 0xd0: // uint8, int8
			skip = 1
		case c == 0xcd, c == 0xd1: // uint16, int16
			skip = 2
		case c >= 0xd4 && c <= 0xd8: // fixext 1-16: type + data
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc, c == 0xde: // array16, map16
			items, err = size(2)
		case c == 0xdd, c == 0xdf: // array32, map32
			items, err = size(4)
		default: // 0xc1, never used
			return 0, fmt.Errorf("invalid code 0x%02x", c)
		}
		if err != nil {
			return 0, err
		}
		if c == 0xde || c == 0xdf {
			items *= 2
		}
		if skip > len(b)-p || items > len(b)-p {
			return 0, errShort // each item takes at least a byte
		}
		p += skip
		if items > 0 {
			if len(pending) > maxDepth {
				return 0, fmt.Errorf("arrays and maps nest more than %d deep", MaxDepth)
			}
			pending = append(pending, items)
		}
	}
	return p, nil
}
