// Package jetstream is the JetStream KV backend of the lock service: the CP
// choice, replicated by Raft when the bucket has 3 or more replicas.
//
// Layout: one KV bucket (stream KV_<bucket>, History 1, file storage) holds
// two subjects per lock key: $KV.<bucket>.l.<key> for the lease and
// $KV.<bucket>.o.<key> for the state object.
//
//   - A lease is a message with a per-message TTL (Nats-TTL, whole seconds,
//     rounded up) written with an expected last subject sequence, so taking
//     or renewing a lock is one compare-and-set publish. The server expires
//     it by its own clock and writes a limit marker, which watchers see.
//   - The fencing token is the stream sequence of the grant: strictly
//     increasing for the whole bucket, kept across restarts and failovers as
//     long as the bucket is not deleted. Refreshes carry the token forward.
//   - Release, release-with-write and delete are one atomic batch (server
//     2.12+): the object change and the lease purge, both checked against the
//     lease's sequence, so a holder whose lease expired writes nothing.
//   - Write-while-holding is one publish to the object subject guarded by the
//     lease subject's last sequence.
//
// Each Store watches the bucket (one ordered consumer, headers only, so state
// objects are never copied to it) to learn of releases and expiries made
// anywhere. It keeps the last sequence it saw per lease subject as a hint, so
// the usual operation is a single round trip; a stale hint only costs a
// re-read, never correctness. It also keeps the set of keys that have a state
// object, which lets Acquire skip reading the object of a key that has none
// (see noObject for why that is safe).
//
// A lease record (holder hash, owner label, token, TTL) travels in the
// Lockservice-Lease header (base64 of msgpack) so that the headers-only
// watcher sees it; records in the body, as written by earlier versions, are
// still read.
package jetstream

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/internal/mpcheck"
	"github.com/lockservice/lockservice/store"
)

// Config configures the JetStream store.
type Config struct {
	// Bucket is the KV bucket name ([a-zA-Z0-9_-]); default "lockservice".
	// Deleting the bucket resets fencing tokens: never recreate it while
	// anyone relies on tokens issued from it.
	Bucket string
	// Replicas is the stream's replica count (1, 3 or 5); default 1.
	Replicas int
	// ObjectTTL is how long a state object lives after its last write;
	// 0 keeps objects forever. Rounded up to whole seconds.
	ObjectTTL time.Duration
	// MarkerTTL is how long release and expiry markers stay (they let get
	// report the last token of an unlocked key); default 1 minute.
	MarkerTTL time.Duration
	// MaxValueBytes is the largest state object accepted; default 1 MiB
	// less room for headers, capped by the server's max_payload.
	MaxValueBytes int
}

const (
	defaultBucket    = "lockservice"
	defaultMarkerTTL = time.Minute
	hintLimit        = 200_000
	// objLimit bounds the set of keys with a state object; past it the
	// store stops tracking them and always reads the object on acquire.
	objLimit = 1_000_000
	// leaseHeader carries a lease record: base64 (std, unpadded) of msgpack.
	leaseHeader = "Lockservice-Lease"
)

// Store is the JetStream KV store. Create it with New.
type Store struct {
	nc       *nats.Conn
	js       natsjs.JetStream
	cfg      Config
	stream   string
	lockPfx  string // $KV.<bucket>.l.
	objPfx   string // $KV.<bucket>.o.
	objTTL   string // Nats-TTL for objects, "" for none
	markTTL  string // Nats-TTL for release markers
	consumer natsjs.ConsumeContext

	mu       sync.Mutex
	hints    map[string]lockState // last state seen per key: a hint only
	notify   func(store.Event)
	startSeq uint64              // the stream's last sequence when the watcher started
	pos      uint64              // last stream sequence the watcher has applied
	objs     map[string]struct{} // keys whose state object existed at pos
	objsFull bool                // objs outgrew objLimit, or the stream went back: not kept
	watcher  string              // the watcher's current consumer (its name changes on a reset)
	trustAt  time.Time           // no skipping of object reads before this (after a reset)

	acquires  atomic.Int64  // grants attempted (compare-and-set publishes on a free lease)
	skipped   atomic.Int64  // of those, made without reading the state object
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

// Stats are counters of one Store since New.
type Stats struct {
	// Acquires counts compare-and-set publishes on a free lease; Skipped
	// those made without reading the state object (the key had none).
	Acquires, Skipped int64
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{Acquires: s.acquires.Load(), Skipped: s.skipped.Load()}
}

var (
	_ store.Store    = (*Store)(nil)
	_ store.Notifier = (*Store)(nil)
)

// ErrServerTooOld is returned by New when the server lacks per-message TTLs
// or atomic batch publish (nats-server before 2.12, JetStream API level < 2).
var ErrServerTooOld = errors.New("jetstream: nats-server too old")

// ErrAtomicPublishUnsupported is returned by New when the stream does not
// accept atomic batch publish after it was asked to.
var ErrAtomicPublishUnsupported = errors.New("jetstream: stream does not allow atomic publish")

// New checks that the server can run the lock service (JetStream enabled,
// API level >= 2), creates the bucket's stream or checks the existing one
// (it never changes an existing bucket's settings; see stream.go) and
// starts watching it. It returns ErrServerTooOld or
// ErrAtomicPublishUnsupported when the server cannot give the guarantees,
// and an error matching ErrBucketMismatch when the bucket exists with other
// settings. nc stays the caller's.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = defaultBucket
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	if cfg.MarkerTTL == 0 {
		cfg.MarkerTTL = defaultMarkerTTL
	}
	if cfg.Replicas < 1 || cfg.Replicas > 5 {
		return nil, fmt.Errorf("jetstream: replicas must be 1 to 5, got %d", cfg.Replicas)
	}
	if cfg.ObjectTTL < 0 || cfg.MarkerTTL < time.Second {
		return nil, fmt.Errorf("jetstream: object TTL must be >= 0 and marker TTL >= 1s")
	}
	maxPayload := int(nc.MaxPayload())
	if cfg.MaxValueBytes == 0 || cfg.MaxValueBytes > maxPayload-4096 {
		cfg.MaxValueBytes = maxPayload - 4096
	}
	js, err := natsjs.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	ai, err := js.AccountInfo(ctx)
	if err != nil {
		if errors.Is(err, natsjs.ErrJetStreamNotEnabled) || errors.Is(err, natsjs.ErrJetStreamNotEnabledForAccount) {
			return nil, fmt.Errorf("jetstream: JetStream is not enabled on nats-server %s at %s; start it with -js (or a jetstream{} block)", nc.ConnectedServerVersion(), nc.ConnectedUrlRedacted())
		}
		return nil, fmt.Errorf("jetstream: account info: %w", err)
	}
	if ai.API.Level < 2 {
		return nil, fmt.Errorf("%w: nats-server %s at %s has JetStream API level %d; lockservice needs nats-server 2.12 or newer (API level 2) for per-key TTLs and atomic batch publish",
			ErrServerTooOld, nc.ConnectedServerVersion(), nc.ConnectedUrlRedacted(), ai.API.Level)
	}
	s := &Store{
		nc: nc, js: js, cfg: cfg,
		stream:  "KV_" + cfg.Bucket,
		lockPfx: "$KV." + cfg.Bucket + ".l.",
		objPfx:  "$KV." + cfg.Bucket + ".o.",
		markTTL: ttlHeader(cfg.MarkerTTL),
		hints:   make(map[string]lockState),
		objs:    make(map[string]struct{}),
		done:    make(chan struct{}),
	}
	if cfg.ObjectTTL > 0 {
		s.objTTL = ttlHeader(cfg.ObjectTTL)
	}
	st, err := ensureStream(ctx, js, streamConfig(cfg, maxPayload), nc.ConnectedServerVersion())
	if err != nil {
		return nil, err
	}
	// The watcher starts with the last message of every subject (the
	// current leases and objects), then follows every new one in stream
	// order. Headers only: objects are never copied to it. Events are
	// reported only for messages newer than startSeq.
	s.startSeq = st.CachedInfo().State.LastSeq
	cons, err := js.OrderedConsumer(ctx, s.stream, natsjs.OrderedConsumerConfig{
		FilterSubjects: []string{s.lockPfx + ">", s.objPfx + ">"},
		DeliverPolicy:  natsjs.DeliverLastPerSubjectPolicy,
		HeadersOnly:    true,
	})
	if err != nil {
		return nil, fmt.Errorf("jetstream: watch %s: %w", s.stream, err)
	}
	cc, err := cons.Consume(s.observe)
	if err != nil {
		return nil, fmt.Errorf("jetstream: watch %s: %w", s.stream, err)
	}
	s.consumer = cc
	return s, nil
}

// Close stops watching the bucket. It does not close the connection.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { close(s.done) })
	s.consumer.Stop()
	return nil
}

// Notify registers fn for releases and expiries seen on the bucket.
func (s *Store) Notify(fn func(store.Event)) {
	s.mu.Lock()
	s.notify = fn
	s.mu.Unlock()
}

// record is the body of a lease message (and of a release marker).
type record struct {
	Holder []byte `msgpack:"h"`           // sha256(lock id)[:16]
	Owner  string `msgpack:"o,omitempty"` // label
	Token  uint64 `msgpack:"t,omitempty"` // 0: this message's own sequence
	TTLms  int64  `msgpack:"l"`           // lease length granted
}

// lockState is what a lease subject's last message says.
type lockState struct {
	seq    uint64 // last sequence of the subject; 0 = no message
	held   bool
	rec    record
	token  uint64
	stored time.Time // server time of the message
	// watched: the watcher applied this very message (not only the
	// store's own publish or read), so it applied every earlier one.
	watched bool
}

func holderHash(lockID string) []byte {
	h := sha256.Sum256([]byte(lockID))
	return h[:16]
}

func sameHolder(a, b []byte) bool { return len(a) == 16 && string(a) == string(b) }

// ttlHeader renders d for Nats-TTL, rounded up to whole seconds, so the
// server never expires anything before d has passed.
func ttlHeader(d time.Duration) string {
	secs := (d + time.Second - 1) / time.Second
	if secs < 1 {
		secs = 1
	}
	return strconv.FormatInt(int64(secs), 10) + "s"
}

func (st lockState) lease() store.Lease {
	l := store.Lease{Token: st.token, TTL: time.Duration(st.rec.TTLms) * time.Millisecond, Owner: st.rec.Owner}
	if st.held && !st.stored.IsZero() {
		l.ExpiresAt = st.stored.Add(l.TTL)
	}
	return l
}

// recordOf reads a lease record from the Lockservice-Lease header or, as
// earlier versions wrote it, from the body.
//
// The stream is writable by anyone allowed to publish to the bucket, so the
// record is checked first: msgpack allocates a []byte of whatever length it
// declares.
func recordOf(hdr nats.Header, data []byte) (record, bool) {
	var rec record
	if v := hdr.Get(leaseHeader); v != "" {
		b, err := base64.RawStdEncoding.DecodeString(v)
		return rec, err == nil && mpcheck.Check(b) == nil && msgpack.Unmarshal(b, &rec) == nil
	}
	return rec, len(data) > 0 && mpcheck.Check(data) == nil && msgpack.Unmarshal(data, &rec) == nil
}

// removal reports whether a message removes its subject's value: a delete,
// a purge or a server marker (TTL expiry, max age, purge).
func removal(hdr nats.Header) bool {
	op := hdr.Get("KV-Operation")
	return op == "DEL" || op == "PURGE" || hdr.Get(natsjs.MarkerReasonHeader) != ""
}

// parse interprets the last message of a lease subject.
func parse(seq uint64, hdr nats.Header, data []byte, stored time.Time) lockState {
	st := lockState{seq: seq, stored: stored}
	if removal(hdr) {
		// Free. A release marker carries the last lease for get.
		if rec, ok := recordOf(hdr, data); ok {
			st.rec = rec
			st.token = rec.Token
		}
		return st
	}
	rec, ok := recordOf(hdr, data)
	st.rec = rec
	if !ok || len(st.rec.Holder) != 16 {
		// Not ours (someone wrote the bucket by hand): treat as held by
		// nobody we know, so only a release can clear it.
		st.held = true
		st.token = seq
		return st
	}
	st.held = true
	st.token = st.rec.Token
	if st.token == 0 {
		st.token = seq
	}
	return st
}

// observe is the watcher's callback: it keeps hints and the set of keys with
// a state object, and reports releases and expiries. Messages arrive in
// stream order, headers only.
func (s *Store) observe(m natsjs.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	s.mu.Lock()
	if md.Consumer != s.watcher {
		// The ordered consumer was recreated (after a server restart or a
		// gap). A message of the old one may still be on its way in a
		// stalled callback, and the stream may have lost its tail (an R1
		// server that crashed within its sync interval): trust nothing
		// for a while, and check the stream.
		first := s.watcher == ""
		s.watcher = md.Consumer
		if !first {
			s.trustAt = time.Now().Add(resetDistrust)
			go s.checkStreamWentBack()
		}
	}
	ev, report := s.applyLocked(md.Sequence.Stream, m.Subject(), m.Headers(), md.Timestamp)
	if md.Sequence.Stream > s.pos {
		s.pos = md.Sequence.Stream
	}
	fn := s.notify
	s.mu.Unlock()
	if report && fn != nil {
		fn(ev)
	}
}

// resetDistrust is how long after a watcher reset the store reads every
// state object again.
const resetDistrust = 5 * time.Second

// checkStreamWentBack stops skipping object reads for good when the stream's
// last sequence is below what the watcher applied: sequences are being
// reused, and the watcher, which resumes after its last sequence, would miss
// their messages.
// A server that is still starting gets a few tries; if the stream cannot be
// read at all, skipping is turned off too.
func (s *Store) checkStreamWentBack() {
	var last uint64
	var err error
	for try := 0; try < 5; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var st natsjs.Stream
		if st, err = s.js.Stream(ctx, s.stream); err == nil {
			last = st.CachedInfo().State.LastSeq
		}
		cancel()
		if err == nil || errors.Is(err, natsjs.ErrStreamNotFound) {
			break
		}
		select {
		case <-s.done:
			return
		case <-time.After(time.Duration(try+1) * time.Second):
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil || last < s.pos {
		s.objsFull, s.objs = true, nil
	}
}

// applyLocked applies one watched message and returns the event it means,
// if any.
func (s *Store) applyLocked(seq uint64, subj string, hdr nats.Header, stored time.Time) (store.Event, bool) {
	switch {
	case strings.HasPrefix(subj, s.objPfx):
		key := subj[len(s.objPfx):]
		switch {
		case removal(hdr) && seq > s.pos:
			// Only in order: a removal older than what was applied may
			// be followed by a newer write already applied.
			delete(s.objs, key)
		case s.objsFull:
		case len(s.objs) >= objLimit:
			s.objsFull, s.objs = true, nil
		default:
			s.objs[key] = struct{}{}
		}
		return store.Event{}, false
	case !strings.HasPrefix(subj, s.lockPfx):
		return store.Event{}, false
	}
	key := subj[len(s.lockPfx):]
	if hdr.Get(leaseHeader) == "" && !removal(hdr) {
		// A lease record only in the body (an earlier version wrote it):
		// the watcher does not get bodies, so forget an older hint.
		if prev, ok := s.hints[key]; ok && prev.seq <= seq {
			delete(s.hints, key)
		}
		return store.Event{}, false
	}
	st := parse(seq, hdr, nil, stored)
	st.watched = true
	prev, had := s.hints[key]
	s.setHintLocked(key, st)
	if st.held || seq <= s.startSeq {
		return store.Event{}, false
	}
	ev := store.Event{Key: key, Kind: store.Released, Token: st.token}
	if hdr.Get(natsjs.MarkerReasonHeader) != "" {
		ev.Kind = store.Expired
		if had && prev.held {
			ev.Token = prev.token
		}
	}
	return ev, true
}

// noObject reports whether key certainly has no state object, given that
// the lease subject is free at sequence leaseSeq (a release or expiry marker)
// and an acquire is about to compare-and-set against it.
//
// Any state object that exists when that compare-and-set succeeds was written
// before leaseSeq: objects are written only by a holder (guarded by the lease
// subject being at the holder's sequence) or in one atomic batch before a
// release or transfer message, and the lease subject has moved on to the free
// message at leaseSeq since. The watcher applies messages in stream order, so
// once it has applied leaseSeq it has seen that write, and the key would be
// in objs. leaseSeq 0 (no lease message; release markers expire) proves
// nothing, and neither does a watcher that has not reached leaseSeq.
//
// The hint for key must be the watcher's own view of that free message
// (watched), not one the store set from its own publish or read: that also
// guards against sequences reused after the stream lost its tail. For a
// while after a watcher reset nothing is trusted (see observe).
func (s *Store) noObject(key string, leaseSeq uint64) bool {
	if leaseSeq == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.hints[key]
	if s.objsFull || s.pos < leaseSeq || !ok || h.seq != leaseSeq || !h.watched || h.held || time.Now().Before(s.trustAt) {
		return false
	}
	_, has := s.objs[key]
	return !has
}

func (s *Store) setHintLocked(key string, st lockState) {
	if prev, ok := s.hints[key]; ok {
		if prev.seq > st.seq {
			return
		}
		if prev.seq == st.seq && prev.watched {
			st.watched = true // the same message, seen by the watcher too
		}
	}
	if len(s.hints) >= hintLimit {
		for k := range s.hints { // drop an arbitrary entry; hints are only hints
			delete(s.hints, k)
			break
		}
	}
	s.hints[key] = st
}

func (s *Store) setHint(key string, st lockState) {
	s.mu.Lock()
	s.setHintLocked(key, st)
	s.mu.Unlock()
}

func (s *Store) getHint(key string) (lockState, bool) {
	s.mu.Lock()
	h, ok := s.hints[key]
	s.mu.Unlock()
	return h, ok
}

// readLock reads the lease subject's last message from the stream leader.
func (s *Store) readLock(ctx context.Context, key string) (lockState, error) {
	m, err := s.getLast(ctx, s.lockPfx+key)
	if err != nil {
		return lockState{}, err
	}
	if m == nil {
		return lockState{}, nil
	}
	st := parse(m.Sequence, m.Header, m.Data, m.Time)
	s.setHint(key, st)
	return st, nil
}

// readObject returns the state object of key, nil when there is none.
func (s *Store) readObject(ctx context.Context, key string) ([]byte, error) {
	m, err := s.getLast(ctx, s.objPfx+key)
	if err != nil || m == nil {
		return nil, err
	}
	if removal(m.Header) {
		return nil, nil
	}
	if m.Data == nil {
		return []byte{}, nil
	}
	return m.Data, nil
}

type msgGetResponse struct {
	Message *struct {
		Subject  string    `json:"subject"`
		Sequence uint64    `json:"seq"`
		Header   []byte    `json:"hdrs,omitempty"`
		Data     []byte    `json:"data,omitempty"`
		Time     time.Time `json:"time"`
	} `json:"message"`
	Error *apiError `json:"error"`
}

type rawMsg struct {
	Sequence uint64
	Header   nats.Header
	Data     []byte
	Time     time.Time
}

// getLast is STREAM.MSG.GET last_by_subj, answered by the stream leader.
// It returns nil, nil when the subject has no message.
func (s *Store) getLast(ctx context.Context, subject string) (*rawMsg, error) {
	req, _ := json.Marshal(map[string]string{"last_by_subj": subject})
	resp, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+s.stream, req)
	if err != nil {
		return nil, unavailable(err)
	}
	var r msgGetResponse
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return nil, fmt.Errorf("jetstream: get %s: bad response: %w", subject, err)
	}
	if r.Error != nil {
		if r.Error.ErrCode == 10037 { // no message found
			return nil, nil
		}
		return nil, r.Error
	}
	if r.Message == nil {
		return nil, fmt.Errorf("jetstream: get %s: empty response", subject)
	}
	m := &rawMsg{Sequence: r.Message.Sequence, Data: r.Message.Data, Time: r.Message.Time}
	if len(r.Message.Header) > 0 {
		if m.Header, err = nats.DecodeHeadersMsg(r.Message.Header); err != nil {
			return nil, fmt.Errorf("jetstream: get %s: %w", subject, err)
		}
	} else {
		m.Header = nats.Header{}
	}
	return m, nil
}

type apiError struct {
	Code        int    `json:"code"`
	ErrCode     int    `json:"err_code"`
	Description string `json:"description"`
}

func (e *apiError) Error() string {
	return fmt.Sprintf("jetstream: %s (code %d, err_code %d)", e.Description, e.Code, e.ErrCode)
}

// errWrongSeq marks a failed compare-and-set.
var errWrongSeq = errors.New("jetstream: wrong last sequence")

type pubAck struct {
	Stream   string    `json:"stream"`
	Sequence uint64    `json:"seq"`
	Batch    string    `json:"batch"`
	Count    int       `json:"count"`
	Error    *apiError `json:"error"`
}

// publish sends m as a request and decodes the JetStream ack.
func (s *Store) publish(ctx context.Context, m *nats.Msg) (pubAck, error) {
	resp, err := s.nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		return pubAck{}, unavailable(err)
	}
	var ack pubAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return pubAck{}, fmt.Errorf("jetstream: publish %s: bad ack %q: %w", m.Subject, resp.Data, err)
	}
	if ack.Error != nil {
		switch ack.Error.ErrCode {
		case 10071, 10164: // wrong last sequence; concurrent in-flight write
			return ack, errWrongSeq
		case 10054: // message size exceeds maximum allowed
			return ack, fmt.Errorf("%w: %s", store.ErrInvalid, ack.Error.Description)
		}
		return ack, ack.Error
	}
	return ack, nil
}

// batch publishes msgs as one atomic batch: all applied or none.
func (s *Store) batch(ctx context.Context, msgs ...*nats.Msg) (pubAck, error) {
	id := nuid.Next()
	for i, m := range msgs {
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := s.nc.PublishMsg(m); err != nil {
				return pubAck{}, unavailable(err)
			}
		}
	}
	last := msgs[len(msgs)-1]
	last.Header.Set("Nats-Batch-Commit", "1")
	ack, err := s.publish(ctx, last)
	if err != nil {
		return ack, err
	}
	if ack.Batch != id || ack.Count != len(msgs) {
		// The server applied the messages one by one: the guarantee is gone.
		return ack, fmt.Errorf("%w: batch ack %+v", ErrAtomicPublishUnsupported, ack)
	}
	return ack, nil
}

func unavailable(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// recordMsg is a message on key's lease subject carrying rec in the
// Lockservice-Lease header (for the headers-only watcher) and in the body
// (for instances of earlier versions during a rolling upgrade).
func (s *Store) recordMsg(key string, rec record, hdr nats.Header) *nats.Msg {
	body, _ := msgpack.Marshal(rec)
	hdr.Set(leaseHeader, base64.RawStdEncoding.EncodeToString(body))
	return &nats.Msg{Subject: s.lockPfx + key, Data: body, Header: hdr}
}

func (s *Store) leaseMsg(key string, rec record, ttl time.Duration, expect uint64) *nats.Msg {
	return s.recordMsg(key, rec, nats.Header{
		natsjs.MsgTTLHeader:              {ttlHeader(ttl)},
		natsjs.ExpectedLastSubjSeqHeader: {strconv.FormatUint(expect, 10)},
	})
}

// releaseMsg purges the lease, keeping the last lease in the marker.
func (s *Store) releaseMsg(key string, st lockState) *nats.Msg {
	rec := st.rec
	rec.Token = st.token
	return s.recordMsg(key, rec, nats.Header{
		"KV-Operation":                   {"PURGE"},
		"Nats-Rollup":                    {"sub"},
		natsjs.MsgTTLHeader:              {s.markTTL},
		natsjs.ExpectedLastSubjSeqHeader: {strconv.FormatUint(st.seq, 10)},
	})
}

func (s *Store) objectMsg(key string, u store.Update) *nats.Msg {
	m := &nats.Msg{Subject: s.objPfx + key, Header: nats.Header{}}
	if u.Op == store.Delete {
		m.Header.Set("KV-Operation", "PURGE")
		m.Header.Set("Nats-Rollup", "sub")
		m.Header.Set(natsjs.MsgTTLHeader, s.markTTL)
		return m
	}
	m.Data = u.Value
	if s.objTTL != "" {
		m.Header.Set(natsjs.MsgTTLHeader, s.objTTL)
	}
	return m
}

func (s *Store) checkValue(u store.Update) error {
	if u.Op == store.Set && u.Value == nil {
		return fmt.Errorf("%w: Set needs a non-nil value", store.ErrInvalid)
	}
	if len(u.Value) > s.cfg.MaxValueBytes {
		return fmt.Errorf("%w: value is %d bytes, the limit is %d", store.ErrInvalid, len(u.Value), s.cfg.MaxValueBytes)
	}
	return nil
}

type objResult struct {
	v   []byte
	err error
}

// Acquire takes key for lockID with one compare-and-set publish, reading the
// state object in parallel (consistent: the object can only change while
// the lease subject is at a holder's sequence, and the publish succeeds only
// if it is still at the free sequence we expected).
func (s *Store) Acquire(ctx context.Context, key, lockID string, opts store.AcquireOptions) (store.Grant, error) {
	if opts.TTL <= 0 {
		return store.Grant{}, fmt.Errorf("%w: TTL must be positive", store.ErrInvalid)
	}
	me := holderHash(lockID)
	// Without a hint, assume a never-used key (expected sequence 0): one
	// round trip for new keys, a re-read on mismatch.
	cur, _ := s.getHint(key)
	ok := true
	for attempt := 0; attempt < 6; attempt++ {
		if !ok {
			var err error
			if cur, err = s.readLock(ctx, key); err != nil {
				return store.Grant{}, err
			}
			ok = true
		}
		if cur.held {
			if !sameHolder(cur.rec.Holder, me) {
				// The hint may be stale: confirm with the leader once.
				if attempt == 0 {
					ok = false
					continue
				}
				le := &store.LockedError{Key: key, Lease: cur.lease()}
				return store.Grant{}, le
			}
			// Idempotent retry: the same grant, read fresh.
			fresh, err := s.readLock(ctx, key)
			if err != nil {
				return store.Grant{}, err
			}
			if fresh.seq != cur.seq {
				cur = fresh
				continue
			}
			v, err := s.readObject(ctx, key)
			if err != nil {
				return store.Grant{}, err
			}
			return store.Grant{Lease: cur.lease(), Value: v}, nil
		}
		objc := make(chan objResult, 1)
		s.acquires.Add(1)
		if s.noObject(key, cur.seq) {
			s.skipped.Add(1)
			objc <- objResult{}
		} else {
			go func() {
				v, err := s.readObject(ctx, key)
				objc <- objResult{v, err}
			}()
		}
		rec := record{Holder: me, Owner: opts.Owner, TTLms: opts.TTL.Milliseconds()}
		sent := time.Now()
		ack, err := s.publish(ctx, s.leaseMsg(key, rec, opts.TTL, cur.seq))
		if errors.Is(err, errWrongSeq) {
			<-objc
			ok = false
			continue
		}
		if err != nil {
			<-objc
			return store.Grant{}, err
		}
		st := lockState{seq: ack.Sequence, held: true, rec: rec, token: ack.Sequence, stored: sent}
		s.setHint(key, st)
		o := <-objc
		if o.err != nil {
			// We hold the lock but could not read its state: give it back.
			_ = s.releaseAfterFailure(key, st)
			return store.Grant{}, o.err
		}
		return store.Grant{Lease: st.lease(), Value: o.v}, nil
	}
	// Every compare-and-set after a fresh read lost to another writer of
	// the lease subject, and only an acquire can move a free lease: the lock
	// was held by someone else in between, which is the answer.
	return store.Grant{}, &store.LockedError{Key: key, Lease: cur.lease()}
}

func (s *Store) releaseAfterFailure(key string, st lockState) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := s.publish(ctx, s.releaseMsg(key, st))
	return err
}

// held returns the lease lockID holds on key, trying the hint first when
// trustHint is set, or ErrNotHeld.
func (s *Store) held(ctx context.Context, key string, me []byte, trustHint bool) (lockState, error) {
	if trustHint {
		if h, ok := s.getHint(key); ok && h.held && sameHolder(h.rec.Holder, me) {
			return h, nil
		}
	}
	st, err := s.readLock(ctx, key)
	if err != nil {
		return lockState{}, err
	}
	if !st.held || !sameHolder(st.rec.Holder, me) {
		return lockState{}, store.ErrNotHeld
	}
	return st, nil
}

// casHeld runs op against the lease lockID holds, re-reading once when the
// hint turns out stale.
func (s *Store) casHeld(ctx context.Context, key, lockID string, op func(lockState) error) error {
	me := holderHash(lockID)
	for _, trust := range []bool{true, false} {
		st, err := s.held(ctx, key, me, trust)
		if err != nil {
			return err
		}
		err = op(st)
		if errors.Is(err, errWrongSeq) {
			continue
		}
		return err
	}
	return store.ErrNotHeld
}

// Refresh renews the lease with a new TTL, keeping its token.
func (s *Store) Refresh(ctx context.Context, key, lockID string, ttl time.Duration) (store.Lease, error) {
	if ttl <= 0 {
		return store.Lease{}, fmt.Errorf("%w: TTL must be positive", store.ErrInvalid)
	}
	var out store.Lease
	err := s.casHeld(ctx, key, lockID, func(st lockState) error {
		rec := st.rec
		rec.Token = st.token
		rec.TTLms = ttl.Milliseconds()
		sent := time.Now()
		ack, err := s.publish(ctx, s.leaseMsg(key, rec, ttl, st.seq))
		if err != nil {
			return err
		}
		ns := lockState{seq: ack.Sequence, held: true, rec: rec, token: st.token, stored: sent}
		s.setHint(key, ns)
		out = ns.lease()
		return nil
	})
	return out, err
}

// Release purges the lease and applies u, atomically.
func (s *Store) Release(ctx context.Context, key, lockID string, u store.Update) error {
	if err := s.checkValue(u); err != nil {
		return err
	}
	return s.casHeld(ctx, key, lockID, func(st lockState) error {
		var ack pubAck
		var err error
		if u.Op == store.Keep {
			ack, err = s.publish(ctx, s.releaseMsg(key, st))
		} else {
			ack, err = s.batch(ctx, s.objectMsg(key, u), s.releaseMsg(key, st))
		}
		if err == nil {
			s.setHint(key, lockState{seq: ack.Sequence, rec: st.rec, token: st.token})
		}
		return err
	})
}

// Write applies u to the state object, guarded by the lease's sequence.
func (s *Store) Write(ctx context.Context, key, lockID string, u store.Update) error {
	if err := s.checkValue(u); err != nil {
		return err
	}
	if u.Op == store.Keep {
		_, err := s.held(ctx, key, holderHash(lockID), false)
		return err
	}
	return s.casHeld(ctx, key, lockID, func(st lockState) error {
		m := s.objectMsg(key, u)
		m.Header.Set(natsjs.ExpectedLastSubjSeqSubjHeader, s.lockPfx+key)
		m.Header.Set(natsjs.ExpectedLastSubjSeqHeader, strconv.FormatUint(st.seq, 10))
		_, err := s.publish(ctx, m)
		return err
	})
}

// Get reads the lease and the state object (in parallel).
func (s *Store) Get(ctx context.Context, key string) (store.Info, error) {
	objc := make(chan objResult, 1)
	go func() {
		v, err := s.readObject(ctx, key)
		objc <- objResult{v, err}
	}()
	st, err := s.readLock(ctx, key)
	o := <-objc
	if err != nil {
		return store.Info{}, err
	}
	if o.err != nil {
		return store.Info{}, o.err
	}
	return store.Info{Locked: st.held, Lease: st.lease(), Value: o.v}, nil
}

var _ store.Transferrer = (*Store)(nil)

// Transfer replaces fromID's lease by a new one for toID with one
// compare-and-set publish (an atomic batch with the state change when u
// writes), so the key is never free in between. The new lease's token is
// its own sequence.
func (s *Store) Transfer(ctx context.Context, key, fromID string, u store.Update, toID string, opts store.AcquireOptions) (store.Grant, error) {
	if opts.TTL <= 0 {
		return store.Grant{}, fmt.Errorf("%w: TTL must be positive", store.ErrInvalid)
	}
	if err := s.checkValue(u); err != nil {
		return store.Grant{}, err
	}
	var g store.Grant
	err := s.casHeld(ctx, key, fromID, func(st lockState) error {
		rec := record{Holder: holderHash(toID), Owner: opts.Owner, TTLms: opts.TTL.Milliseconds()}
		lease := s.leaseMsg(key, rec, opts.TTL, st.seq)
		sent := time.Now()
		var (
			ack pubAck
			err error
			val []byte
		)
		switch u.Op {
		case store.Keep:
			// The state cannot change while fromID holds the key, so it is
			// read in parallel and used only if the transfer succeeds.
			objc := make(chan objResult, 1)
			go func() {
				v, err := s.readObject(ctx, key)
				objc <- objResult{v, err}
			}()
			ack, err = s.publish(ctx, lease)
			o := <-objc
			if err == nil && o.err != nil {
				err = o.err // granted, state unknown: reported as an error below
			}
			val = o.v
		case store.Set:
			ack, err = s.batch(ctx, s.objectMsg(key, u), lease)
			val = u.Value
		case store.Delete:
			ack, err = s.batch(ctx, s.objectMsg(key, u), lease)
		}
		if err != nil {
			return err
		}
		ns := lockState{seq: ack.Sequence, held: true, rec: rec, token: ack.Sequence, stored: sent}
		s.setHint(key, ns)
		g = store.Grant{Lease: ns.lease(), Value: val}
		return nil
	})
	return g, err
}
