package jetstream

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/store"
)

// getLast reads subject's last message; nil, nil when the subject has
// none. It is STREAM.MSG.GET, answered by the stream leader, whatever the
// bucket's allow_direct says (a direct get may be answered by a follower
// that is behind: natsjs.Stream.GetLastMsgForSubject uses it when allowed).
func (s *Store) getLast(ctx context.Context, subject string) (*natsjs.RawStreamMsg, error) {
	req, _ := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{subject})
	resp, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+s.stream, req)
	if err != nil {
		return nil, unavailable(err)
	}
	var r struct {
		Message *struct {
			Subject  string    `json:"subject"`
			Sequence uint64    `json:"seq"`
			Header   []byte    `json:"hdrs,omitempty"`
			Data     []byte    `json:"data,omitempty"`
			Time     time.Time `json:"time"`
		} `json:"message"`
		Error *natsjs.APIError `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return nil, fmt.Errorf("jetstream: get %s: bad response: %w", subject, err)
	}
	if r.Error != nil {
		if r.Error.ErrorCode == natsjs.JSErrCodeMessageNotFound {
			return nil, nil
		}
		return nil, r.Error
	}
	if r.Message == nil {
		return nil, fmt.Errorf("jetstream: get %s: empty response", subject)
	}
	m := &natsjs.RawStreamMsg{Subject: r.Message.Subject, Sequence: r.Message.Sequence, Data: r.Message.Data, Time: r.Message.Time, Header: nats.Header{}}
	if len(r.Message.Header) > 0 {
		if m.Header, err = nats.DecodeHeadersMsg(r.Message.Header); err != nil {
			return nil, fmt.Errorf("jetstream: get %s: %w", subject, err)
		}
	}
	return m, nil
}

// errWrongSeq marks a failed compare-and-set: the subject is not at the
// expected sequence.
var errWrongSeq = errors.New("jetstream: wrong last sequence")

// errInFlight marks a compare-and-set a replicated stream could not check
// because another write to the same subject was still being proposed
// (10164): it says nothing about the subject's sequence. It matches
// errWrongSeq, so callers re-read; they also back off and never conclude
// "not held" from it.
var errInFlight = fmt.Errorf("%w (a write to the subject was in flight)", errWrongSeq)

// pubAck is JetStream's publish ack with the batch fields that
// natsjs.PubAck lacks.
type pubAck struct {
	Stream   string           `json:"stream"`
	Sequence uint64           `json:"seq"`
	Batch    string           `json:"batch"`
	Count    int              `json:"count"`
	Error    *natsjs.APIError `json:"error"`
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
		switch ack.Error.ErrorCode {
		case natsjs.JSErrCodeStreamWrongLastSequence:
			return ack, errWrongSeq
		case natsjs.JSErrCodeStreamWrongLastSequenceConstant:
			return ack, errInFlight
		case natsjs.JSErrCodeStreamMessageExceedsMaximum:
			return ack, fmt.Errorf("%w: %s", store.ErrInvalid, ack.Error.Description)
		}
		if err := s.full(ack.Error); err != nil {
			return ack, err
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
// Lockservice-Lease header.
func (s *Store) recordMsg(key string, rec record, hdr nats.Header) *nats.Msg {
	body, _ := msgpack.Marshal(rec)
	hdr.Set(leaseHeader, base64.RawStdEncoding.EncodeToString(body))
	return &nats.Msg{Subject: s.lockPfx + key, Header: hdr}
}

func (s *Store) leaseMsg(key string, rec record, ttl time.Duration, expect uint64) *nats.Msg {
	return s.recordMsg(key, rec, nats.Header{
		natsjs.MsgTTLHeader:              {ttlHeader(msgTTL(ttl, rec))},
		natsjs.ExpectedLastSubjSeqHeader: {strconv.FormatUint(expect, 10)},
	})
}

// releaseMsg purges the lease at st, keeping the last lease in the marker.
// The marker lives for the bucket's marker TTL, which is at least the
// longest lease: see Config.MarkerTTL for why it must outlive the lease it
// ends.
func (s *Store) releaseMsg(key string, st lockState) *nats.Msg {
	rec := st.rec
	rec.Token = st.token
	return s.recordMsg(key, rec, nats.Header{
		"KV-Operation":                   {"PURGE"},
		"Nats-Rollup":                    {"sub"},
		natsjs.MsgTTLHeader:              {ttlHeader(s.longest())},
		natsjs.ExpectedLastSubjSeqHeader: {strconv.FormatUint(st.seq, 10)},
	})
}

// objectMsg applies u to key's state object. A delete leaves a marker with
// no TTL: a state object's subject never becomes empty after a delete, so a
// file store that loses removals in a crash cannot bring the deleted value
// back (see docs/STORES.md).
func (s *Store) objectMsg(key string, u store.Update) *nats.Msg {
	m := &nats.Msg{Subject: s.objPfx + key, Header: nats.Header{}}
	if u.Op == store.Delete {
		m.Header.Set("KV-Operation", "PURGE")
		m.Header.Set("Nats-Rollup", "sub")
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

func (s *Store) checkTTL(ttl, delay time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("%w: TTL must be positive", store.ErrInvalid)
	}
	if delay < 0 {
		return fmt.Errorf("%w: lock-delay must not be negative", store.ErrInvalid)
	}
	longest := s.longest()
	if ttlSeconds(ttl) > longest {
		return fmt.Errorf("%w: TTL %s is longer than the bucket's longest lease %s (its marker TTL; raise --marker-ttl)", store.ErrInvalid, ttl, longest)
	}
	if ttlSeconds(ttl)+delaySeconds(delay) > longest {
		return fmt.Errorf("%w: TTL %s plus lock-delay %s is longer than the bucket's longest lease %s (its marker TTL; raise --marker-ttl or shorten either)", store.ErrInvalid, ttl, delay, longest)
	}
	return nil
}

// blockerMsg replaces the lease st, which has ended or is being forced,
// with a blocker that keeps key from everyone for left (rounded up to whole
// seconds, never less), carrying the lease's token and label.
func (s *Store) blockerMsg(key string, st lockState, left time.Duration, reason string) *nats.Msg {
	rec := record{Holder: nobodyHash, Owner: st.rec.Owner, Token: st.token, TTLms: st.rec.TTLms, Dms: left.Milliseconds()}
	return s.recordMsg(key, rec, nats.Header{
		natsjs.MsgTTLHeader:              {ttlHeader(left)},
		natsjs.ExpectedLastSubjSeqHeader: {strconv.FormatUint(st.seq, 10)},
		reasonHeader:                     {reason},
	})
}
