// Package mpcheck checks msgpack payloads from untrusted sources before they
// are decoded.
package mpcheck

import (
	"errors"
	"fmt"
)

// MaxDepth is how deeply arrays and maps may nest in a checked value.
const MaxDepth = 32

// Check walks one msgpack value and checks that every length it
// declares (strings, binaries, extensions, array and map sizes) fits in the
// bytes that follow, that arrays and maps nest at most MaxDepth deep, and
// that nothing follows the value. The decoder allocates from declared
// lengths (up to 1 MiB per string in msgpack v5), so a 15-byte request could
// otherwise cost a megabyte; and it skips unknown fields recursively, so a
// 60 KiB value nested 47 000 deep grew a goroutine's stack by 8 MB.
func Check(b []byte) error {
	short := errors.New("a length runs past the end of the payload")
	size := func(k int) (int, error) { // a big-endian length of k bytes
		if len(b) < k {
			return 0, short
		}
		n := 0
		for _, c := range b[:k] {
			n = n<<8 | int(c)
			if n > len(b) {
				return 0, short
			}
		}
		b = b[k:]
		return n, nil
	}
	pending := []int{1} // values still to read in each open array or map
	for len(pending) > 0 {
		top := len(pending) - 1
		if pending[top] == 0 {
			pending = pending[:top]
			continue
		}
		if len(b) == 0 {
			return errors.New("payload ends early")
		}
		c := b[0]
		b = b[1:]
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
			return fmt.Errorf("invalid code 0x%02x", c)
		}
		if err != nil {
			return err
		}
		if c == 0xde || c == 0xdf {
			items *= 2
		}
		if skip > len(b) || items > len(b) {
			return short // each item takes at least a byte
		}
		b = b[skip:]
		if items > 0 {
			if len(pending) > MaxDepth {
				return fmt.Errorf("arrays and maps nest more than %d deep", MaxDepth)
			}
			pending = append(pending, items)
		}
	}
	if len(b) > 0 {
		return fmt.Errorf("%d bytes after the value", len(b))
	}
	return nil
}
