// Package api holds the lock service's wire protocol: subjects, payloads,
// error codes and key rules. It has no dependencies on the service or the
// stores, so clients (ours in package client, or anyone's) can import it.
//
// The protocol is documented for other languages in docs/PROTOCOL.md.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"
)

// ServiceName is the name of the micro service (nats micro ls).
const ServiceName = "lockservice"

// DefaultPrefix is the first subject token of every endpoint and event.
const DefaultPrefix = "lock"

// Endpoint operations: the second subject token, <prefix>.<op>.<key>.
const (
	OpAcquire = "acquire"
	OpRelease = "release"
	OpRefresh = "refresh"
	OpWrite   = "write"
	OpGet     = "get"
	OpWait    = "wait"
	OpDelete  = "delete"
	OpCancel  = "cancel"
	OpAlive   = "alive"
)

// Event kinds, published on <prefix>.<event>.<key>.
const (
	EventReleased = "released"
	EventExpired  = "expired"
	EventForced   = "forced"
)

// The admin plane lives under <prefix>.admin, so that NATS permissions can
// give it to operators only: <prefix>.admin.list and
// <prefix>.admin.force.<key>.
const (
	AdminToken   = "admin"
	OpList       = "list"
	OpForce      = "force"
	OpAdminList  = AdminToken + "." + OpList
	OpAdminForce = AdminToken + "." + OpForce
)

// ListRequest is the payload of <prefix>.admin.list.
type ListRequest struct {
	// Prefix keeps the keys that start with it ("" for all).
	Prefix string `json:"prefix,omitempty" msgpack:"prefix,omitempty"`
	// Cursor is the previous answer's cursor ("" for the first page).
	Cursor string `json:"cursor,omitempty" msgpack:"cursor,omitempty"`
	// Limit is the page size: 0 for the default (100), at most 1000.
	Limit int `json:"limit,omitempty" msgpack:"limit,omitempty"`
}

// HeldLock is one held lock in a ListResponse.
type HeldLock struct {
	Key       string `json:"key" msgpack:"key"`
	Owner     string `json:"owner,omitempty" msgpack:"owner,omitempty"`
	Token     uint64 `json:"token" msgpack:"token"`
	TTLms     int64  `json:"ttl_ms" msgpack:"ttl_ms"`
	ExpiresAt string `json:"expires_at,omitempty" msgpack:"expires_at,omitempty"`
	// Parked counts the requests parked for the key on the answering
	// instance.
	Parked int `json:"parked" msgpack:"parked"`
}

// ListResponse answers <prefix>.admin.list. Cursor is "" on the last page.
type ListResponse struct {
	Locks  []HeldLock `json:"locks" msgpack:"locks"`
	Cursor string     `json:"cursor" msgpack:"cursor"`
}

// ForceRequest is the payload of <prefix>.admin.force.<key>.
type ForceRequest struct {
	// Reason is recorded in the forced event (at most 256 bytes).
	Reason string `json:"reason,omitempty" msgpack:"reason,omitempty"`
}

// ForceResponse answers a force. Forced is false when no lease was live.
type ForceResponse struct {
	Key    string `json:"key" msgpack:"key"`
	Forced bool   `json:"forced" msgpack:"forced"`
	Token  uint64 `json:"token,omitempty" msgpack:"token,omitempty"`
	Owner  string `json:"owner,omitempty" msgpack:"owner,omitempty"`
}

// ForcedEvent is the payload of <prefix>.forced.<key> (JSON): the audit
// record of a lease ended by an operator.
type ForcedEvent struct {
	Key      string `json:"key"`
	Token    uint64 `json:"token"`
	Owner    string `json:"owner,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Instance string `json:"instance"`
}

// Subject returns the subject of op (or event) for key under prefix.
func Subject(prefix, op, key string) string { return prefix + "." + op + "." + key }

// ContentTypeHeader and MsgpackContentType select msgpack encoding; any other
// (or no) content type means JSON.
const (
	ContentTypeHeader  = "Content-Type"
	MsgpackContentType = "application/msgpack"
	JSONContentType    = "application/json"
)

// Error codes sent in the Nats-Service-Error-Code header.
const (
	CodeBadRequest  = 400 // the request is malformed or out of range; fix it
	CodeTimeout     = 408 // wait ran out before the key was unlocked
	CodeConflict    = 409 // the lock id does not hold the lock
	CodeInternal    = 500 // a bug or an unexpected store answer
	CodeUnavailable = 503 // store unreachable, too many waiters, shutting down
)

// MaxKeyLen is the longest key accepted, in bytes.
const MaxKeyLen = 512

// MinLockIDLen and MaxLockIDLen bound caller-chosen lock ids. A lock id is
// the only secret that authorizes release, refresh, write and delete, so it
// must be unguessable: use at least 128 random bits.
const (
	MinLockIDLen = 16
	MaxLockIDLen = 128
)

// ErrInvalidKey is wrapped by ValidateKey's errors.
var ErrInvalidKey = errors.New("invalid key")

// ValidateKey reports whether key is a valid lock key: one or more
// '.'-separated tokens of [-/_=a-zA-Z0-9], at most MaxKeyLen bytes.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty; a key is one or more '.'-separated tokens of [-/_=a-zA-Z0-9]", ErrInvalidKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrInvalidKey, len(key), MaxKeyLen)
	}
	tokenStart := 0
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c == '.':
			if i == tokenStart {
				return fmt.Errorf("%w: %q has an empty token; remove the extra '.'", ErrInvalidKey, key)
			}
			tokenStart = i + 1
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '/', c == '_', c == '=':
		default:
			return fmt.Errorf("%w: %q contains %q at byte %d; allowed are [-/_=a-zA-Z0-9] and '.' between tokens", ErrInvalidKey, key, rune(c), i)
		}
	}
	if tokenStart == len(key) {
		return fmt.Errorf("%w: %q ends with '.'", ErrInvalidKey, key)
	}
	return nil
}

// ValidateKeyPrefix reports whether p can start a valid key: the key rules,
// except that it may end with '.'.
func ValidateKeyPrefix(p string) error {
	if strings.HasSuffix(p, ".") {
		p = strings.TrimSuffix(p, ".")
		if p == "" {
			return fmt.Errorf("%w: prefix %q is only a '.'", ErrInvalidKey, ".")
		}
	}
	return ValidateKey(p)
}

// ValidateLockID reports whether id is acceptable as a caller-chosen lock id:
// MinLockIDLen to MaxLockIDLen characters of [-_a-zA-Z0-9].
func ValidateLockID(id string) error {
	if len(id) < MinLockIDLen || len(id) > MaxLockIDLen {
		return fmt.Errorf("lock_id must be %d to %d characters (use at least 128 random bits), got %d", MinLockIDLen, MaxLockIDLen, len(id))
	}
	if i := strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}); i >= 0 {
		return fmt.Errorf("lock_id may only contain [-_a-zA-Z0-9], found %q at byte %d", id[i], i)
	}
	return nil
}

// Value is a state object on the wire. nil means "no value" (or, in a
// request, "leave the state unchanged"); an empty non-nil Value is an empty
// state. In JSON it is any JSON value, kept byte for byte, and must be valid
// UTF-8; in msgpack it is a bin. A state that is not valid JSON or not valid
// UTF-8 (written through msgpack) reads in JSON as {"$binary":"<base64>"},
// so that a JSON answer is always valid JSON.
type Value []byte

// IsZero reports whether v is no value (nil). An empty state is not zero:
// a request field tagged omitempty (msgpack) or omitzero (JSON) is left
// out only when it is nil.
func (v Value) IsZero() bool { return v == nil }

// MarshalJSON writes the value as raw JSON, or null when there is none.
func (v Value) MarshalJSON() ([]byte, error) {
	if v == nil {
		return []byte("null"), nil
	}
	if !utf8.Valid(v) || !json.Valid(v) {
		// Bytes stored through msgpack that are not JSON (encoding/json
		// accepts invalid UTF-8 inside strings; JSON text is UTF-8).
		return json.Marshal(map[string][]byte{"$binary": v})
	}
	return v, nil
}

// UnmarshalJSON keeps the raw JSON (including a literal null). It refuses
// invalid UTF-8, which encoding/json lets through inside strings: stored
// as sent, it would make every answer carrying the state invalid JSON.
func (v *Value) UnmarshalJSON(b []byte) error {
	if !utf8.Valid(b) {
		i := 0
		for i < len(b) {
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				break
			}
			i += n
		}
		return fmt.Errorf("value is not valid UTF-8 (byte 0x%02x at offset %d of the value): JSON text must be UTF-8; send bytes as a base64 JSON string, or as a msgpack bin", b[i], i)
	}
	*v = append(Value{}, b...)
	return nil
}

// valueChunk bounds what DecodeMsgpack allocates ahead of the bytes it has
// actually read.
const valueChunk = 64 << 10

// DecodeMsgpack reads a bin (or str) or nil. It allocates as the bytes
// arrive, never from the declared length alone: msgpack's own []byte decoding
// allocates the declared length up front, so a 15-byte request declaring a
// 4 GiB bin would cost 4 GiB.
func (v *Value) DecodeMsgpack(dec *msgpack.Decoder) error {
	code, err := dec.PeekCode()
	if err != nil {
		return err
	}
	if code == msgpcode.Nil {
		*v = nil
		return dec.DecodeNil()
	}
	if !msgpcode.IsBin(code) && !msgpcode.IsString(code) {
		return fmt.Errorf("value must be a msgpack bin, str or nil, got code 0x%02x", code)
	}
	n, err := dec.DecodeBytesLen()
	if err != nil {
		return err
	}
	if n < 0 { // a 32-bit length past MaxInt on a 32-bit platform
		return fmt.Errorf("value: declared length out of range")
	}
	b := make([]byte, 0, min(n, valueChunk))
	for len(b) < n {
		k := min(n-len(b), valueChunk)
		b = append(b, make([]byte, k)...)
		if err := dec.ReadFull(b[len(b)-k:]); err != nil {
			return fmt.Errorf("value: declared %d bytes, payload ends early: %w", n, err)
		}
	}
	*v = b
	return nil
}

// AcquireRequest is the payload of <prefix>.acquire.<key>.
type AcquireRequest struct {
	// TTLms is the lease length; 0 means the service default.
	TTLms int64 `json:"ttl_ms,omitempty" msgpack:"ttl_ms,omitempty"`
	// WaitMs is how long to wait for the lock; 0 tries once. The service
	// starts no store attempt for the request after this much time has
	// passed since it received it; an attempt in flight then is answered
	// with its outcome.
	WaitMs int64 `json:"wait_ms,omitempty" msgpack:"wait_ms,omitempty"`
	// LockID is the caller-chosen lock id; empty lets the service pick one.
	// Retrying an acquire with the same lock id returns the same grant.
	LockID string `json:"lock_id,omitempty" msgpack:"lock_id,omitempty"`
	// Owner is a label shown by get; it authorizes nothing.
	Owner string `json:"owner,omitempty" msgpack:"owner,omitempty"`
	// AliveMs opts a blocking request in to the liveness window: it stays
	// parked only while the caller renews it on <prefix>.alive.<key> at
	// least every AliveMs (MinAlive to MaxAlive). A request not renewed in
	// time is dropped without an answer and its lock id retired: the
	// service never grants it after that, and gives back a grant for it
	// that completes later. Its grant is also given back when the answer
	// finds nobody subscribed to the reply subject, so keep that
	// subscription until the answer arrives or the lock id is given up.
	// 0: no window (the request waits its whole wait_ms).
	AliveMs int64 `json:"alive_ms,omitempty" msgpack:"alive_ms,omitempty"`
	// LockDelayMs is the lease's lock-delay: if the lease expires or is
	// forced, nobody is granted the key for this long after its end (a
	// release hands it over at once). Absent: the service's default
	// (--lock-delay); 0: none.
	LockDelayMs *int64 `json:"lock_delay_ms,omitempty" msgpack:"lock_delay_ms,omitempty"`
}

// MinAlive and MaxAlive bound the liveness window (alive_ms).
const (
	MinAlive = time.Second
	MaxAlive = time.Minute
)

// AliveRequest is the payload of <prefix>.alive.<key>: renew the liveness
// window of a parked acquire (ID is its lock_id) or wait (ID is its
// wait_id). Every instance receives it; only the one that has the request
// in progress answers.
type AliveRequest struct {
	ID string `json:"id" msgpack:"id"`
}

// AliveResponse is the answer of the instance that has the request. No
// answer means no instance has it in progress: it was answered (and the
// answer may have been lost), dropped, or its instance is gone.
type AliveResponse struct {
	Key   string `json:"key" msgpack:"key"`
	Alive bool   `json:"alive" msgpack:"alive"`
}

// AcquireResponse answers an acquire.
type AcquireResponse struct {
	Acquired bool   `json:"acquired" msgpack:"acquired"`
	Key      string `json:"key" msgpack:"key"`
	LockID   string `json:"lock_id,omitempty" msgpack:"lock_id,omitempty"`
	Token    uint64 `json:"token,omitempty" msgpack:"token,omitempty"`
	TTLms    int64  `json:"ttl_ms,omitempty" msgpack:"ttl_ms,omitempty"`
	// ExpiresAt is the lease end by the service's clock (RFC 3339),
	// informational. Clients should count TTLms from when they sent the
	// request instead.
	ExpiresAt string `json:"expires_at,omitempty" msgpack:"expires_at,omitempty"`
	// Owner of the lease: the caller's own when acquired, else the holder's.
	Owner string `json:"owner,omitempty" msgpack:"owner,omitempty"`
	// Value is the state object (acquired only).
	Value Value `json:"value" msgpack:"value"`
	// LockDelayMs is the lock-delay of the lease granted (acquired only;
	// absent for none).
	LockDelayMs int64 `json:"lock_delay_ms,omitempty" msgpack:"lock_delay_ms,omitempty"`
	// DelayMs, when not acquired, is set while the key is in the
	// lock-delay of a lease that expired or was forced (Token and Owner
	// are that lease's): how long until it can be taken, by the store's
	// clock (at least 1). Absent when the key is held.
	DelayMs int64 `json:"delay_ms,omitempty" msgpack:"delay_ms,omitempty"`
}

// ReleaseRequest is the payload of <prefix>.release.<key>.
type ReleaseRequest struct {
	LockID string `json:"lock_id" msgpack:"lock_id"`
	// Value, when present (not nil), is written as the new state in the
	// same atomic step as the release; an empty Value writes an empty
	// state.
	Value Value `json:"value,omitzero" msgpack:"value,omitempty"`
}

// ReleaseResponse answers a release. Released is false, and nothing was
// written, when the lock id did not hold the lock.
type ReleaseResponse struct {
	Released bool   `json:"released" msgpack:"released"`
	Key      string `json:"key" msgpack:"key"`
}

// RefreshRequest is the payload of <prefix>.refresh.<key>.
type RefreshRequest struct {
	LockID string `json:"lock_id" msgpack:"lock_id"`
	TTLms  int64  `json:"ttl_ms,omitempty" msgpack:"ttl_ms,omitempty"`
}

// RefreshResponse answers a refresh.
type RefreshResponse struct {
	Key       string `json:"key" msgpack:"key"`
	Token     uint64 `json:"token" msgpack:"token"`
	TTLms     int64  `json:"ttl_ms" msgpack:"ttl_ms"`
	ExpiresAt string `json:"expires_at" msgpack:"expires_at"`
}

// WriteRequest is the payload of <prefix>.write.<key>: set the state while
// holding the lock.
type WriteRequest struct {
	LockID string `json:"lock_id" msgpack:"lock_id"`
	Value  Value  `json:"value" msgpack:"value"`
}

// WriteResponse answers a write.
type WriteResponse struct {
	Key     string `json:"key" msgpack:"key"`
	Written bool   `json:"written" msgpack:"written"`
}

// DeleteRequest is the payload of <prefix>.delete.<key>: delete the state
// object and release the lock, atomically.
type DeleteRequest struct {
	LockID string `json:"lock_id" msgpack:"lock_id"`
}

// DeleteResponse answers a delete.
type DeleteResponse struct {
	Key     string `json:"key" msgpack:"key"`
	Deleted bool   `json:"deleted" msgpack:"deleted"`
}

// GetResponse answers <prefix>.get.<key> (empty request).
type GetResponse struct {
	Key       string `json:"key" msgpack:"key"`
	Locked    bool   `json:"locked" msgpack:"locked"`
	Token     uint64 `json:"token,omitempty" msgpack:"token,omitempty"`
	TTLms     int64  `json:"ttl_ms,omitempty" msgpack:"ttl_ms,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty" msgpack:"expires_at,omitempty"`
	Owner     string `json:"owner,omitempty" msgpack:"owner,omitempty"`
	HasValue  bool   `json:"has_value" msgpack:"has_value"`
	Value     Value  `json:"value" msgpack:"value"`
	// DelayMs, when not locked, is how long the lock-delay of the lease
	// that expired or was forced (Token) still keeps everyone from taking
	// the key; absent when it can be taken now.
	DelayMs int64 `json:"delay_ms,omitempty" msgpack:"delay_ms,omitempty"`
}

// WaitRequest is the payload of <prefix>.wait.<key>.
type WaitRequest struct {
	// WaitMs is how long to wait for the key to be unlocked; 0 answers at
	// once (408 if locked).
	WaitMs int64 `json:"wait_ms,omitempty" msgpack:"wait_ms,omitempty"`
	// WaitID names the request for <prefix>.alive.<key> renewals (rules
	// of a lock id); required with AliveMs.
	WaitID string `json:"wait_id,omitempty" msgpack:"wait_id,omitempty"`
	// AliveMs: the liveness window, as for AcquireRequest.
	AliveMs int64 `json:"alive_ms,omitempty" msgpack:"alive_ms,omitempty"`
}

// WaitResponse answers a wait once the key is unlocked.
type WaitResponse struct {
	Key   string `json:"key" msgpack:"key"`
	Value Value  `json:"value" msgpack:"value"`
}

// CancelResponse is sent by the instance that had the acquire parked.
type CancelResponse struct {
	Key       string `json:"key" msgpack:"key"`
	Cancelled bool   `json:"cancelled" msgpack:"cancelled"`
}

// InstanceHeader names the service instance that published an event, so
// instances can ignore their own.
const InstanceHeader = "Lockservice-Instance"

// CancelRequest is the payload of <prefix>.cancel.<key>: withdraw a blocking
// acquire the caller gave up on. Every instance receives it.
type CancelRequest struct {
	LockID string `json:"lock_id" msgpack:"lock_id"`
}

// Event is the payload of <prefix>.released.<key> and <prefix>.expired.<key>
// (always JSON).
type Event struct {
	Key   string `json:"key"`
	Token uint64 `json:"token,omitempty"`
	// HandedOff is set on a release whose lock went straight to a request
	// waiting for it: the key is locked again, so waiters need not wake.
	HandedOff bool `json:"handed_off,omitempty"`
}

// HandedOffHeader is set ("true") on release events with HandedOff.
const HandedOffHeader = "Lockservice-Handed-Off"

// FormatTime renders an instant as the protocol does (RFC 3339, UTC, ms).
func FormatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
