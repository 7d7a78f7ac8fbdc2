package jetstream

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/store"
)

var _ store.Admin = (*Store)(nil)

const (
	// listFetch is how many lease messages List asks for at a time.
	listFetch = 1000
	// listIdle is the inactivity threshold of List's consumer: the server
	// removes it after that if List could not delete it.
	listIdle = 30 * time.Second
	// listCatchUp bounds the wait for List's consumer to deliver what the
	// stream leader has.
	listCatchUp = 5 * time.Second
)

// List returns the live leases of the keys that start with prefix, sorted
// by key: at most limit of them, those after cursor, which names the last
// key of the previous page. The next cursor is "" when no live lease is
// left after the page. List changes nothing.
//
// It reads lease subjects only, never state objects: one consumer that
// lives for the call delivers the headers (where lease records are) of the
// last message of every lease subject under the whole '.'-separated tokens
// of prefix, and is read at least as far as the stream leader's last such
// message (it may run on a follower; see lastLeases). So each page costs
// O(lease subjects under them): every key with a lease or with a release
// or expiry marker (kept for the bucket's marker TTL), whatever the page's
// size, plus a consumer create and delete, a MSG.GET and a STREAM.INFO;
// sorting by key is what lets a page start after the previous one. A
// lease counts as live by the rule of every other operation: it has not
// ended by the server's clock, which List samples once per page after
// reading the leases.
//
// It returns store.ErrInvalid for a limit below 1 or a cursor it did not
// return for this prefix, and errors wrapping store.ErrUnavailable when the
// server cannot serve.
func (s *Store) List(ctx context.Context, prefix, cursor string, limit int) ([]store.Held, string, error) {
	if limit < 1 {
		return nil, "", fmt.Errorf("%w: limit must be at least 1, got %d", store.ErrInvalid, limit)
	}
	after, err := decodeListCursor(prefix, cursor)
	if err != nil {
		return nil, "", err
	}
	cursor = after
	msgs, err := s.lastLeases(ctx, s.listFilter(prefix))
	if err != nil {
		return nil, "", fmt.Errorf("jetstream: list %q: %w", prefix, err)
	}
	// After the reads: a lease read live at this moment was live while
	// the page was read. It also re-reads the longest lease (parse).
	now, err := s.serverNow(ctx)
	if err != nil {
		return nil, "", err
	}
	type found struct {
		key string
		st  lockState
	}
	last := make(map[string]lockState, len(msgs))
	for _, m := range msgs {
		key := strings.TrimPrefix(m.Subject, s.lockPfx)
		if key <= cursor || !strings.HasPrefix(key, prefix) {
			continue
		}
		// A subject written while it was read comes again: keep the last.
		if prev, ok := last[key]; !ok || prev.seq < m.Sequence {
			last[key] = parse(m.Sequence, m.Header, m.Time, s.longest())
		}
	}
	var live []found
	for key, st := range last {
		if st.held && !st.blocker() && now.Before(st.holderEnd()) {
			live = append(live, found{key, st})
		}
	}
	slices.SortFunc(live, func(a, b found) int { return strings.Compare(a.key, b.key) })
	next := ""
	if len(live) > limit {
		live = live[:limit]
		next = encodeListCursor(live[limit-1].key)
	}
	out := make([]store.Held, len(live))
	for i, f := range live {
		out[i] = store.Held{Key: f.key, Lease: f.st.lease()}
	}
	return out, next, nil
}

// listFilter is the filter subject of the lease subjects whose keys may
// start with prefix: the prefix's whole tokens, then '>'. A prefix whose
// tokens cannot be part of a subject gets every lease subject.
func (s *Store) listFilter(prefix string) string {
	whole := prefix[:strings.LastIndexByte(prefix, '.')+1]
	if strings.ContainsAny(whole, " \t\r\n*>") || strings.HasPrefix(whole, ".") || strings.Contains(whole, "..") {
		whole = ""
	}
	return s.lockPfx + whole + ">"
}

// lastLeases reads the last message of every subject matching filter,
// headers only, with a consumer made for the call and deleted after it.
// Messages written while it reads may come too.
//
// The server may place the consumer on any member of the stream's group,
// and a follower may not have applied the last writes yet. So the stream
// leader (which has applied every write it acknowledged) names its last
// message under filter first, and the consumer is read until it has
// delivered that far.
func (s *Store) lastLeases(ctx context.Context, filter string) ([]*natsjs.RawStreamMsg, error) {
	return s.readLast(ctx, filter, func(ctx context.Context) (uint64, error) {
		m, err := s.getLast(ctx, filter)
		if m == nil || err != nil {
			return 0, err
		}
		return m.Sequence, nil
	})
}

// readLast reads the last message of every subject matching filter with a
// consumer, and goes on until it has delivered the sequence that
// leaderLast, asked before the consumer starts, names (or a later one), or
// until leaderLast names an earlier one: the message was removed without
// a successor (a marker that expired).
func (s *Store) readLast(ctx context.Context, filter string, leaderLast func(context.Context) (uint64, error)) ([]*natsjs.RawStreamMsg, error) {
	upTo, err := leaderLast(ctx)
	if err != nil {
		return nil, err
	}
	cons, err := s.js.CreateConsumer(ctx, s.stream, natsjs.ConsumerConfig{
		DeliverPolicy:     natsjs.DeliverLastPerSubjectPolicy,
		AckPolicy:         natsjs.AckNonePolicy,
		FilterSubject:     filter,
		HeadersOnly:       true,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: listIdle,
	})
	if err != nil {
		return nil, unavailable(fmt.Errorf("create consumer: %w", err))
	}
	name := cons.CachedInfo().Name
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.js.DeleteConsumer(ctx, s.stream, name)
	}()
	var (
		out     []*natsjs.RawStreamMsg
		initial = cons.CachedInfo().NumPending // the last message of each subject as the consumer started
		read    uint64                         // of those (or later ones)
		last    uint64                         // the highest stream sequence delivered
		idle    time.Time                      // since when nothing came
	)
	for read < initial || last < upTo {
		if err := ctx.Err(); err != nil {
			return nil, unavailable(err)
		}
		batch, err := cons.FetchNoWait(listFetch)
		if err != nil {
			return nil, unavailable(fmt.Errorf("fetch: %w", err))
		}
		n := 0
		for m := range batch.Messages() {
			n++
			read++
			md, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("jetstream: list: %w", err)
			}
			hdr := m.Headers()
			if hdr == nil {
				hdr = nats.Header{}
			}
			out = append(out, &natsjs.RawStreamMsg{Subject: m.Subject(), Sequence: md.Sequence.Stream, Header: hdr, Time: md.Timestamp})
			last = max(last, md.Sequence.Stream)
			if md.NumPending == 0 {
				read = max(read, initial) // all the consumer has, for now
			}
		}
		if err := batch.Error(); errors.Is(err, nats.ErrNoResponders) {
			// On a cluster the consumer may not run yet on the
			// server it was placed on: wait below.
		} else if err != nil {
			return nil, unavailable(fmt.Errorf("fetch: %w", err))
		}
		if n > 0 {
			idle = time.Time{}
			continue
		}
		if read < initial {
			// The rest was removed since the consumer started (leases
			// that expired), or the answer was lost: the consumer's
			// own count tells.
			info, err := cons.Info(ctx)
			if err != nil {
				return nil, unavailable(fmt.Errorf("consumer info: %w", err))
			}
			if info.NumPending == 0 {
				read = initial
				continue
			}
		}
		if last < upTo {
			// The consumer's server is behind the leader, or the
			// message at upTo was removed with no successor.
			now, err := leaderLast(ctx)
			if err != nil {
				return nil, err
			}
			if upTo = min(upTo, now); read >= initial && last >= upTo {
				break
			}
		}
		if idle.IsZero() {
			idle = time.Now()
		} else if time.Since(idle) > listCatchUp {
			return nil, fmt.Errorf("%w: jetstream: list: consumer %s delivered up to sequence %d, the stream leader has %d; its server did not catch up in %v",
				store.ErrUnavailable, name, last, upTo, listCatchUp)
		}
		select {
		case <-ctx.Done():
			return nil, unavailable(ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return out, nil
}

// Force ends the live lease of key, whoever holds it, with the release
// marker Release writes (a compare-and-set on the lease's sequence), so
// watchers report it as a release with the lease's token; the state object
// is left as it is. The marker says "forced" (Lockservice-Reason) to anyone
// who reads the stream. It returns the lease it ended, store.ErrNotHeld
// when key has no live lease (by the server's clock), and errors wrapping
// store.ErrUnavailable when the server cannot serve or the lease kept
// changing under the compare-and-set.
func (s *Store) Force(ctx context.Context, key string) (store.Lease, error) {
	var ended store.Lease
	err := s.casLease(ctx, key, nil, func(st lockState) error {
		if d := time.Duration(st.rec.Dms) * time.Millisecond; d > 0 {
			// The lock-delay runs from now: a blocker in place of the lease.
			if _, err := s.publish(ctx, s.blockerMsg(key, st, d, reasonForced)); err != nil {
				return err
			}
			_, _ = s.readLock(ctx, key) // the hint, with the server's stored time
			ended = st.lease()
			return nil
		}
		m := s.releaseMsg(key, st)
		m.Header.Set(reasonHeader, reasonForced)
		ack, err := s.publish(ctx, m)
		if err != nil {
			return err
		}
		s.setHint(key, lockState{seq: ack.Sequence, rec: st.rec, token: st.token})
		ended = st.lease()
		return nil
	})
	return ended, err
}

// A list cursor is the last key of the page, tagged and base64url-encoded,
// so that a cursor List did not return is refused rather than taken for a
// key to skip to.
const listCursorTag = "k:"

func encodeListCursor(key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(listCursorTag + key))
}

func decodeListCursor(prefix, cursor string) (string, error) {
	if cursor == "" {
		return "", nil
	}
	b, err := base64.RawURLEncoding.DecodeString(cursor)
	key, tagged := strings.CutPrefix(string(b), listCursorTag)
	if err != nil || !tagged || !strings.HasPrefix(key, prefix) {
		return "", fmt.Errorf("%w: cursor %q is not one List returned for prefix %q", store.ErrInvalid, cursor, prefix)
	}
	return key, nil
}
