package jetstream

import (
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/internal/mpcheck"
	"github.com/lockservice/lockservice/store"
)

// leaseHeader carries a lease record: base64 (std, unpadded) of msgpack. The
// record travels only in this header, so the headers-only watcher sees it.
const leaseHeader = "Lockservice-Lease"

// reasonHeader says why a store wrote a release message other than for its
// holder: "expired" when the lease had ended by the server's clock but was
// still in the stream (see reap), which watchers report as an expiry;
// "forced" when an operator ended it (Force), reported as a release. On a
// blocker (see below) it says what ended the lease: "forced" (reported as
// a release) or "expired" (nothing reported until the blocker's own end).
const (
	reasonHeader  = "Lockservice-Reason"
	reasonExpired = "expired"
	reasonForced  = "forced"
)

// endedHeader on a lease message names the token of the lease (or
// blocker) it took over after that had ended by the server's clock: an
// acquire at the end, before the server's expiry scan removed it. The
// watchers report that as the expiry of that token: the server never
// removes the replaced message, so no marker will. A hand-over (Transfer)
// or a refresh never carries it.
const endedHeader = "Lockservice-Ended"

// endedToken reads endedHeader of a lease message at seq: a token below
// seq, or false.
func endedToken(hdr nats.Header, seq uint64) (uint64, bool) {
	v := hdr.Get(endedHeader)
	if v == "" {
		return 0, false
	}
	tok, err := strconv.ParseUint(v, 10, 64)
	return tok, err == nil && tok > 0 && tok < seq
}

// Lock-delay. A lease with a delay (record.Dms) is one message whose
// Nats-TTL is the lease's (whole seconds) plus the delay (whole seconds):
// its holder's operations end at stored + the lease's part (by the
// server's clock, as always), and nobody is granted the key until the
// server removes the message, whose removal marker the watchers report as
// the expiry. A blocker is a lease message held by nobody (holder
// nobodyHash): it keeps the key from everyone until its Nats-TTL, and is
// written in place of a lease that ended with time left in its delay, by
// Force (the delay from then) and by Get (the rest of the delay), so that
// no write of the old holder in flight lands after the lease was seen
// ended.
var nobodyHash = make([]byte, 16)

// record is the lease record of a lease message (and of a release marker).
type record struct {
	Holder []byte `msgpack:"h"`           // sha256(lock id)[:16]
	Owner  string `msgpack:"o,omitempty"` // label
	Token  uint64 `msgpack:"t,omitempty"` // 0: this message's own sequence
	TTLms  int64  `msgpack:"l"`           // lease length granted
	Dms    int64  `msgpack:"d,omitempty"` // lock-delay after the lease, ms
}

// lockState is what a lease subject's last message says.
type lockState struct {
	seq   uint64 // last sequence of the subject; 0 = no message
	held  bool   // a lease message, not a removal (it may still have ended: see live)
	rec   record
	token uint64
	// stored is the server's time when the message was stored: exact
	// when read from the server (exact), a lower bound when the store set
	// it from its own publish (the server's time before sending, by the
	// clock estimate; zero without one). Only an exact time can show that
	// a lease has ended.
	stored  time.Time
	exact   bool
	ttl     time.Duration // the message's Nats-TTL: the server ends the lease at stored+ttl
	expires time.Time     // informational end for callers (Lease.ExpiresAt)
	// corrupt: a lease message whose record cannot be a lease this store
	// wrote (no TTL, unreadable record, token beyond its own sequence). It
	// is never treated as a live lease: an acquire replaces it.
	corrupt  string
	overlong bool // corrupt only for a TTL beyond the longest lease known
	// watched: the watcher applied this very message (not only the
	// store's own publish or read), so it applied every earlier one.
	watched bool
	// watchedLease is the token of the last message the watcher applied
	// on the subject when that was a lease (or blocker), 0 otherwise:
	// kept when the store's own publish or read sets a newer hint, so
	// that a server's marker, which carries no record, is reported for
	// the lease it removed (setHintLocked).
	watchedLease uint64
}

// end is when the server removes the lease message, by the server's clock:
// the lease's end plus its lock-delay.
func (st lockState) end() time.Time { return st.stored.Add(st.ttl) }

// blocker reports a lease message held by nobody: a lock-delay running
// after its lease ended.
func (st lockState) blocker() bool { return st.held && string(st.rec.Holder) == string(nobodyHash) }

// holderEnd is when the holder's lease ends, by the server's clock: end
// without the lock-delay (stored, for a blocker).
func (st lockState) holderEnd() time.Time {
	if st.blocker() {
		return st.stored
	}
	return st.stored.Add(max(st.ttl-delaySeconds(time.Duration(st.rec.Dms)*time.Millisecond), 0))
}

// delaySeconds is a lock-delay rounded up to whole seconds (0 for none):
// the part of a lease message's Nats-TTL after the lease.
func delaySeconds(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return ttlSeconds(d)
}

// msgTTL is the Nats-TTL of a lease message: the lease and its delay.
func msgTTL(ttl time.Duration, rec record) time.Duration {
	return ttlSeconds(ttl) + delaySeconds(time.Duration(rec.Dms)*time.Millisecond)
}

func holderHash(lockID string) []byte {
	h := sha256.Sum256([]byte(lockID))
	return h[:16]
}

func sameHolder(a, b []byte) bool { return len(a) == 16 && string(a) == string(b) }

// ttlHeader renders d for Nats-TTL, rounded up to whole seconds, so the
// server never expires anything before d has passed.
func ttlHeader(d time.Duration) string {
	return strconv.FormatInt(int64(ttlSeconds(d)/time.Second), 10) + "s"
}

// ttlSeconds is d rounded up to whole seconds, at least one: the TTL the
// server applies.
func ttlSeconds(d time.Duration) time.Duration {
	secs := (d + time.Second - 1) / time.Second
	if secs < 1 {
		secs = 1
	}
	return secs * time.Second
}

// parseTTL reads a Nats-TTL header as the server does ("30s", "1m", or bare
// seconds). "never", a missing header and anything unreadable are not a
// lease TTL.
func parseTTL(v string) (time.Duration, bool) {
	if v == "" || strings.EqualFold(v, "never") {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Duration(n) * time.Second, n > 0 && n < 1<<33
	}
	d, err := time.ParseDuration(v)
	return d, err == nil && d >= time.Second
}

func (st lockState) lease() store.Lease {
	l := store.Lease{Token: st.token, TTL: time.Duration(st.rec.TTLms) * time.Millisecond, Owner: st.rec.Owner}
	if st.held && !st.blocker() {
		l.ExpiresAt = st.expires
		l.Delay = time.Duration(st.rec.Dms) * time.Millisecond
	}
	return l
}

// ended is the lease of st once it has ended (no ExpiresAt).
func (st lockState) ended() store.Lease {
	l := st.lease()
	l.ExpiresAt = time.Time{}
	return l
}

// recordOf reads the lease record of the Lockservice-Lease header.
//
// The stream is writable by anyone allowed to publish to the bucket, so the
// record is checked first: msgpack allocates a []byte of whatever length it
// declares.
func recordOf(hdr nats.Header) (record, bool) {
	var rec record
	v := hdr.Get(leaseHeader)
	if v == "" {
		return rec, false
	}
	b, err := base64.RawStdEncoding.DecodeString(v)
	return rec, err == nil && mpcheck.Check(b) == nil && msgpack.Unmarshal(b, &rec) == nil
}

// removal reports whether a message removes its subject's value: a delete,
// a purge or a server marker (TTL expiry, max age, purge).
func removal(hdr nats.Header) bool {
	op := hdr.Get("KV-Operation")
	return op == "DEL" || op == "PURGE" || hdr.Get(natsjs.MarkerReasonHeader) != ""
}

// expiredMarker reports whether a removal says the lease ran out (the
// server's limit marker, or a store's reap) rather than a release.
func expiredMarker(hdr nats.Header) bool {
	return hdr.Get(natsjs.MarkerReasonHeader) != "" || hdr.Get(reasonHeader) == reasonExpired
}

// parse interprets the last message of a lease subject at sequence seq,
// stored by the server at stored.
//
// A lease message is held only if its record is one this store could have
// written: a 16-byte holder, a token below the message's own sequence (a
// refresh carries an earlier one forward) or 0 (the sequence itself), and a
// server TTL no longer than the bucket's longest lease.
// Anything else is corrupt, never a live lease: a client that can publish to
// the bucket could otherwise lock a key forever or push tokens to 2^64-1.
func parse(seq uint64, hdr nats.Header, stored time.Time, maxTTL time.Duration) lockState {
	st := lockState{seq: seq, stored: stored, exact: !stored.IsZero()}
	if removal(hdr) {
		// Free. A release marker carries the last lease for get.
		if rec, ok := recordOf(hdr); ok && rec.Token <= seq {
			st.rec = rec
			st.token = rec.Token
		}
		return st
	}
	rec, ok := recordOf(hdr)
	ttl, tok := parseTTL(hdr.Get(natsjs.MsgTTLHeader))
	switch {
	case !ok:
		st.corrupt = "no readable lease record"
	case len(rec.Holder) != 16:
		st.corrupt = "lease record without a 16-byte holder"
	case rec.Token >= seq && rec.Token != 0:
		st.corrupt = "lease record with token " + strconv.FormatUint(rec.Token, 10) + " not below its own sequence"
	case !tok:
		st.corrupt = "lease message without a server TTL (Nats-TTL " + strconv.Quote(hdr.Get(natsjs.MsgTTLHeader)) + ")"
	case ttl > maxTTL:
		st.corrupt = "lease TTL " + ttl.String() + " beyond the bucket's longest lease " + maxTTL.String()
		st.overlong = true
		st.ttl = ttl
	case stored.IsZero():
		st.corrupt = "lease message without a stored time"
	}
	if st.corrupt != "" {
		return st
	}
	st.rec, st.held, st.ttl = rec, true, ttl
	st.expires = stored.Add(time.Duration(rec.TTLms) * time.Millisecond)
	st.token = rec.Token
	if st.token == 0 {
		st.token = seq
	}
	return st
}
