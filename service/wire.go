package service

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/internal/mpcheck"
	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// request is one request taken off the micro handler, answered on the
// connection (never through micro.Request, which is not safe to answer from
// another goroutine).
type request struct {
	key      string
	reply    string
	msgpack  bool
	data     []byte
	received time.Time
	stats    *opStats
	answered bool // counted in stats (answers are sent by one goroutine at a time)

	finish func() // gives back the in-flight slot; idempotent
}

// handler validates the key and takes an in-flight slot, then runs h: on
// the subscription's goroutine when inline (h admits the request in
// arrival order and hands its slot on with r.finish), else on a worker, so
// no endpoint ever blocks its subscription on the store.
func (s *Service) handler(op string, h func(*request), inline bool) micro.Handler {
	skip := len(s.cfg.Prefix) + len(op) + 2
	st := s.stats.ops[op]
	return micro.HandlerFunc(func(r micro.Request) {
		received := time.Now()
		st.requests.Add(1)
		if s.dropUnsafeReply(op, r, st, received) {
			return
		}
		subj := r.Subject()
		key := ""
		if len(subj) > skip {
			key = subj[skip:]
		}
		early := func(code int, msg string) {
			st.record(code, time.Since(received))
			_ = r.Error(strconv.Itoa(code), msg, nil)
		}
		if err := api.ValidateKey(key); err != nil {
			early(api.CodeBadRequest, err.Error())
			return
		}
		select {
		case s.inflight <- struct{}{}:
		default:
			s.stats.overloaded.Add(1)
			s.refused("max_inflight", op, key, cap(s.inflight))
			early(api.CodeUnavailable, fmt.Sprintf("instance overloaded: %d operations in progress; retry with backoff", cap(s.inflight)))
			return
		}
		s.mu.Lock()
		if s.stopping.Load() {
			s.mu.Unlock()
			<-s.inflight
			early(api.CodeUnavailable, "lock service instance is shutting down; retry")
			return
		}
		s.ops.Add(1)
		s.mu.Unlock()
		req := &request{
			key:      key,
			reply:    r.Reply(),
			msgpack:  r.Headers().Get(api.ContentTypeHeader) == api.MsgpackContentType,
			data:     r.Data(),
			received: received,
			stats:    st,
		}
		req.finish = sync.OnceFunc(func() {
			<-s.inflight
			s.ops.Done()
		})
		if inline {
			h(req)
			return
		}
		s.dispatch(func() {
			defer req.finish()
			h(req)
		})
	})
}

// unsafeReply says why the service must not answer on reply, "" when it
// may. NATS checks a publisher's rights on a message's subject, never on
// its reply subject, and the service answers with its own rights: a client
// allowed only requests on its own keys could otherwise make the service
// publish on what the service alone may publish on. An answer (any bytes;
// an error answer has an empty body, a valid request of several
// endpoints) on $KV.<bucket>.l.<key> replaces a live lease record, on
// <prefix>.admin.force.<key> forces a lease, on <prefix>.released.<key> is
// a forged event, on $JS.API.STREAM.PURGE... purges the bucket. So no
// answer goes to the service's own subjects (<prefix> and under it) nor
// to any $-subject (JetStream, KV, object stores, $SYS, $SRV), nor to a
// subject with wildcards; a reply subject routed through a gateway
// (_GR_.<cluster>.<server>.<reply>) is judged by the reply behind it.
func (s *Service) unsafeReply(reply string) string {
	// A request that crossed a gateway has its reply subject behind the
	// gateway's prefix, and is answered on that reply subject in its
	// origin cluster: judge that one.
	for {
		rest, ok := strings.CutPrefix(reply, "_GR_.")
		if !ok {
			rest, ok = strings.CutPrefix(reply, "$GR.") // older nats-server
		}
		if !ok {
			break
		}
		parts := strings.SplitN(rest, ".", 3) // cluster hash, server hash, reply
		if len(parts) < 3 {
			return "a gateway reply subject without a reply"
		}
		reply = parts[2]
	}
	switch {
	case reply == "":
		return ""
	case strings.HasPrefix(reply, "$"):
		return "a $-subject (JetStream, KV, system, discovery)"
	case reply == s.cfg.Prefix || strings.HasPrefix(reply, s.cfg.Prefix+"."):
		return "a subject of the lock service (" + s.cfg.Prefix + ".>)"
	}
	for tok := range strings.SplitSeq(reply, ".") {
		if tok == "*" || tok == ">" {
			return "a subject with wildcards"
		}
	}
	return ""
}

// dropUnsafeReply drops a request whose reply subject the service must not
// publish on (unsafeReply), unanswered and not executed, counted as a 400
// and logged (once per interval). It reports whether it dropped it.
func (s *Service) dropUnsafeReply(op string, r micro.Request, st *opStats, received time.Time) bool {
	why := s.unsafeReply(r.Reply())
	if why == "" {
		return false
	}
	st.record(api.CodeBadRequest, time.Since(received))
	s.logLimited(slog.LevelWarn, "unsafe reply", "request dropped: its reply subject is not an inbox",
		slog.String("op", op), slog.String("subject", r.Subject()), slog.String("reply", r.Reply()), slog.String("why", why))
	return true
}

// workerIdle is how long an idle worker waits for the next request.
const workerIdle = 10 * time.Second

// dispatch runs job on an idle worker, or on a new one. Workers live on
// after their job, so their stacks, grown by decoding and the store
// client, are reused instead of grown again for every request. Their
// number is bounded by the in-flight limit.
func (s *Service) dispatch(job func()) {
	select {
	case s.jobs <- job:
	default:
		go s.worker(job)
	}
}

func (s *Service) worker(job func()) {
	job()
	t := time.NewTimer(workerIdle)
	defer t.Stop()
	for {
		select {
		case job := <-s.jobs:
			job()
			t.Reset(workerIdle)
		case <-t.C:
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// decode reads the payload into v: msgpack or JSON, unknown fields rejected.
// An empty payload leaves v at its zero value. A msgpack payload must be one
// map (or nil): the decoder would also fill a struct from an array of its
// fields in order.
func (r *request) decode(v any) error {
	if len(bytes.TrimSpace(r.data)) == 0 {
		return nil
	}
	if r.msgpack {
		if err := mpcheck.Map(r.data, int64Field); err != nil {
			return fmt.Errorf("malformed msgpack payload: %v", err)
		}
		dec := msgpack.NewDecoder(bytes.NewReader(r.data))
		dec.DisallowUnknownFields(true)
		if err := dec.Decode(v); err != nil {
			return fmt.Errorf("malformed msgpack payload: %v", err)
		}
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(r.data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON payload: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("malformed JSON payload: more than one JSON value")
	}
	return nil
}

// int64Field refuses a msgpack request field holding an unsigned integer
// above the int64 range, naming the value sent: every integer field of a
// request is signed, and the decoder would read 2^64-1 as -1.
func int64Field(key string, v []byte) error {
	if len(v) == 9 && v[0] == 0xcf { // uint64
		if u := binary.BigEndian.Uint64(v[1:]); u > math.MaxInt64 {
			return fmt.Errorf("%s %d is out of range (request integers are signed 64-bit; the field's limit is in docs/PROTOCOL.md)", key, u)
		}
	}
	return nil
}

// respond sends v in the request's encoding.
func (s *Service) respond(r *request, v any) { s.respondVia(r, v, "") }

// respondVia sends v with replyTo as the message's reply subject: the NATS
// server answers there with a "no responders" status when nobody is
// subscribed to r's reply subject (see delivery.go).
func (s *Service) respondVia(r *request, v any, replyTo string) {
	if r.reply == "" {
		return
	}
	m := &nats.Msg{Subject: r.reply, Reply: replyTo, Header: nats.Header{}}
	var err error
	if r.msgpack {
		m.Data, err = msgpack.Marshal(v)
		m.Header.Set(api.ContentTypeHeader, api.MsgpackContentType)
	} else {
		m.Data, err = json.Marshal(v)
		m.Header.Set(api.ContentTypeHeader, api.JSONContentType)
	}
	if err != nil {
		s.fail(r, api.CodeInternal, "encode response: %v", err)
		return
	}
	r.record(0)
	if err := s.send(m); err != nil {
		s.logSendError("reply failed", r.reply, err)
	}
}

// record counts r's answer once.
func (r *request) record(code int) {
	if !r.answered && r.stats != nil {
		r.answered = true
		r.stats.record(code, time.Since(r.received))
	}
}

// fail sends a micro error (Nats-Service-Error-Code / Nats-Service-Error).
func (s *Service) fail(r *request, code int, format string, args ...any) {
	r.record(code)
	if r.reply == "" {
		return
	}
	msg := fmt.Sprintf(format, args...)
	err := s.send(&nats.Msg{Subject: r.reply, Header: nats.Header{
		micro.ErrorCodeHeader: {strconv.Itoa(code)},
		micro.ErrorHeader:     {msg},
	}})
	if err != nil {
		s.logSendError("reply failed", r.reply, err)
	}
}

// failStore answers with the wire code for a store error: the one table
// from store errors to codes.
func (s *Service) failStore(r *request, op string, err error) {
	code := s.countStoreError(err)
	switch code {
	case api.CodeConflict:
		s.fail(r, code, "%s %q: lock_id does not hold the lock (never acquired, released, expired or taken over)", op, r.key)
	case api.CodeBadRequest:
		s.fail(r, code, "%s %q: %v", op, r.key, err)
	case api.CodeUnavailable:
		if errors.Is(err, store.ErrFull) {
			s.fail(r, code, "%s %q: store full, nothing was written; retry later (room comes back as leases end and states expire) or raise the limit named here: %v", op, r.key, err)
			return
		}
		s.fail(r, code, "%s %q: store unavailable, the outcome is unknown (docs/PROTOCOL.md, lost replies); retry: %v", op, r.key, err)
	default: // logged as the store call failed (storewatch.go)
		s.fail(r, code, "%s %q: internal error, the outcome is unknown: %v", op, r.key, err)
	}
}

// countStoreError counts a store error that is not an answer about the
// lock itself (unavailable, internal) and returns its wire code: every store
// error, answered or not, goes through here.
func (s *Service) countStoreError(err error) int {
	code := CodeFor(err)
	if code == api.CodeUnavailable || code == api.CodeInternal {
		s.stats.storeErrors.Add(1)
	}
	return code
}

// CodeFor maps a store error to its wire error code.
func CodeFor(err error) int {
	switch {
	case errors.Is(err, store.ErrNotHeld):
		return api.CodeConflict
	case errors.Is(err, store.ErrInvalid):
		return api.CodeBadRequest
	case errors.Is(err, store.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return api.CodeUnavailable
	default:
		return api.CodeInternal
	}
}

// duration converts a millisecond field, checking its range.
func duration(field string, ms int64, def, max time.Duration) (time.Duration, error) {
	if ms < 0 {
		return 0, fmt.Errorf("%s must not be negative, got %d", field, ms)
	}
	if ms == 0 {
		return def, nil
	}
	if ms > max.Milliseconds() {
		return 0, fmt.Errorf("%s %d exceeds the maximum %d configured for this service", field, ms, max.Milliseconds())
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// newLockID returns 128 random bits, base64url: unguessable.
func newLockID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (s *Service) storeCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.ctx, s.cfg.StoreTimeout)
}

// publishEvent announces the end of a lease on <prefix>.<event>.<key>.
func (s *Service) publishEvent(event, key string, token uint64) {
	s.publishEventMsg(event, api.Event{Key: key, Token: token})
}

func (s *Service) publishEventMsg(event string, ev api.Event) {
	data, _ := json.Marshal(ev)
	hdr := nats.Header{api.InstanceHeader: {s.id}, api.ContentTypeHeader: {api.JSONContentType}}
	if ev.HandedOff {
		hdr.Set(api.HandedOffHeader, "true")
	}
	subject := api.Subject(s.cfg.Prefix, event, ev.Key)
	err := s.announce(&nats.Msg{
		Subject: subject,
		Data:    data,
		Header:  hdr,
	})
	if err != nil {
		s.logSendError("publish failed", subject, err)
		return
	}
	s.stats.countEvent(event)
}
