package jetstream

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
)

// Bucket configuration ownership: the first Store to find no stream creates
// it from its Config. Every later Store reads the stream's config and uses
// it as it is; it never pushes its own settings over it (an instance with
// other settings would otherwise downgrade, say, an R3 bucket to R1). When
// a setting that matters differs (checkStream lists them), New refuses with
// a *BucketMismatchError naming both values. The one change New makes to an
// existing stream is to switch on a feature the store needs and the stream
// lacks (per-message TTLs, subject delete markers, roll-ups, atomic
// publish): each only lets the stream accept more kinds of messages, so
// clients already using it are unaffected.

const (
	// streamTry bounds one stream API request. On a cluster, concurrent
	// creations of one stream can leave a request unanswered; the next
	// try reads the stream the winner created.
	streamTry = 2 * time.Second
	// streamBackoff is the first pause between tries, doubled up to
	// streamBackoffMax and jittered.
	streamBackoff    = 50 * time.Millisecond
	streamBackoffMax = time.Second
)

// ErrBucketMismatch is returned by New when the bucket's stream exists with
// settings the Store was not asked for or cannot work with. The error is a
// *BucketMismatchError.
var ErrBucketMismatch = errors.New("jetstream: bucket settings differ")

// BucketMismatchError names a setting of an existing bucket that differs
// from what the Store needs; it unwraps to ErrBucketMismatch.
type BucketMismatchError struct {
	Bucket  string
	Setting string // stream config field, as in nats stream info: "replicas", "storage", ...
	Have    string // the bucket's value
	Want    string // what this Store asks for or needs
	msg     string
}

func (e *BucketMismatchError) Error() string { return "jetstream: " + e.msg }

func (e *BucketMismatchError) Unwrap() error { return ErrBucketMismatch }

// streamConfig is the stream of a new bucket.
func streamConfig(cfg Config, maxPayload int) natsjs.StreamConfig {
	return natsjs.StreamConfig{
		Name:                   "KV_" + cfg.Bucket,
		Description:            "lockservice locks and state objects",
		Subjects:               []string{"$KV." + cfg.Bucket + ".>"},
		Storage:                natsjs.FileStorage,
		Replicas:               cfg.Replicas,
		MaxMsgsPerSubject:      1,
		MaxMsgSize:             int32(min(maxPayload, math.MaxInt32)),
		Discard:                natsjs.DiscardNew,
		MaxMsgs:                unlimited(cfg.MaxMsgs),
		AllowRollup:            true,
		DenyDelete:             true,
		AllowDirect:            false, // reads go to the leader: no stale state from followers
		AllowMsgTTL:            true,
		SubjectDeleteMarkerTTL: cfg.MarkerTTL,
		AllowAtomicPublish:     true,
	}
}

// unlimited maps 0 (no limit) to JetStream's -1.
func unlimited(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

// ensureStream returns the bucket's stream: it creates it from want when it
// does not exist, or checks the existing one with checkStream and switches
// on the features it lacks. Requests that time out or hit a cluster that is
// still forming are retried with backoff until ctx ends. It returns a
// *BucketMismatchError when the existing stream's settings differ, and
// ErrAtomicPublishUnsupported when the server does not keep the features.
func ensureStream(ctx context.Context, js natsjs.JetStream, want natsjs.StreamConfig, server string) (natsjs.Stream, error) {
	start := time.Now()
	pause := streamBackoff
	for {
		st, err := ensureStreamOnce(ctx, js, want)
		if err == nil {
			got := st.CachedInfo().Config
			if !got.AllowAtomicPublish || !got.AllowMsgTTL {
				return nil, fmt.Errorf("%w: stream %s on nats-server %s reads back allow_atomic=%v allow_msg_ttl=%v; lockservice needs nats-server 2.12 or newer",
					ErrAtomicPublishUnsupported, want.Name, server, got.AllowAtomicPublish, got.AllowMsgTTL)
			}
			return st, nil
		}
		if !retryable(err) {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("jetstream: stream %s not ready after %v: %w (is every JetStream server up and the cluster formed, with at least %d servers for %d replicas?)",
				want.Name, time.Since(start).Round(time.Millisecond), err, want.Replicas, want.Replicas)
		case <-time.After(pause/2 + rand.N(pause/2+1)):
		}
		pause = min(2*pause, streamBackoffMax)
	}
}

// ensureStreamOnce makes one attempt, each request bounded by streamTry.
func ensureStreamOnce(ctx context.Context, js natsjs.JetStream, want natsjs.StreamConfig) (natsjs.Stream, error) {
	ctx, cancel := context.WithTimeout(ctx, streamTry)
	defer cancel()
	st, err := js.Stream(ctx, want.Name)
	if errors.Is(err, natsjs.ErrStreamNotFound) {
		// Another instance may create it at the same moment: the server
		// answers one of us "name already in use" (a retry reads the
		// winner's stream) or leaves us waiting (a retry again).
		st, err = js.CreateStream(ctx, want)
		if err != nil {
			return nil, fmt.Errorf("jetstream: create stream %s: %w", want.Name, err)
		}
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("jetstream: read stream %s: %w", want.Name, err)
	}
	have := st.CachedInfo().Config
	update, err := checkStream(want, have)
	if err != nil || update == nil {
		return st, err
	}
	st, err = js.UpdateStream(ctx, *update)
	if err != nil {
		return nil, fmt.Errorf("jetstream: stream %s: switch on %s: %w", want.Name, strings.Join(missingFeatures(have, *update), ", "), err)
	}
	return st, nil
}

// untilVisible runs fn until it succeeds or fails with an error that does
// not go away by itself. Right after a stream is created on a cluster, a
// request answered by another server can still find no stream (10059)
// until the assignment reaches it: that is retried too, for a few seconds.
func untilVisible(ctx context.Context, fn func() error) error {
	pause := streamBackoff
	deadline := time.Now().Add(streamVisible)
	for {
		err := fn()
		if err == nil {
			return nil
		}
		var apiErr *natsjs.APIError
		missing := errors.Is(err, natsjs.ErrStreamNotFound) || errors.As(err, &apiErr) && apiErr.ErrorCode == natsjs.JSErrCodeStreamNotFound
		notYet := missing && time.Now().Before(deadline)
		if !notYet && !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pause/2 + rand.N(pause/2+1)):
		}
		pause = min(2*pause, streamBackoffMax)
	}
}

// streamVisible bounds how long a stream just read or created may be
// missing on another server of the cluster.
const streamVisible = 5 * time.Second

// retryable reports whether err may go away by itself: a request that got
// no answer in time, or a cluster without a leader or peers yet.
func retryable(err error) bool {
	if errors.Is(err, ErrBucketMismatch) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, natsjs.ErrStreamNameAlreadyInUse) {
		return true
	}
	var apiErr *natsjs.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		// nats-server's JSClusterNoPeersErrF, JSClusterNotAvailErr,
		// JSClusterNotLeaderErr, JSInsufficientResourcesErr: seen while a
		// cluster forms. nats.go exports no names for them.
		case 10005, 10008, 10009, 10023:
			return true
		}
		return apiErr.Code == 503
	}
	return false
}

// checkStream compares an existing stream with the one New would create. It
// returns a *BucketMismatchError for a setting that matters and differs, an
// updated copy of have when only features are missing, or nil, nil when
// have can be used as it is. Settings that do not matter to the store
// (description, direct get, compression, placement, max message size,
// duplicate window, metadata, ...) are left to the operator.
func checkStream(want, have natsjs.StreamConfig) (*natsjs.StreamConfig, error) {
	bucket := strings.TrimPrefix(want.Name, "KV_")
	mismatch := func(setting, haveV, wantV, format string, args ...any) error {
		return &BucketMismatchError{Bucket: bucket, Setting: setting, Have: haveV, Want: wantV, msg: fmt.Sprintf(format, args...)}
	}
	other := "use another bucket (--bucket)"
	switch {
	case have.Mirror != nil:
		return nil, mismatch("mirror", have.Mirror.Name, "", "bucket %s's stream %s is a mirror of %s and accepts no writes: %s", bucket, have.Name, have.Mirror.Name, other)
	case have.SubjectTransform != nil:
		return nil, mismatch("subject_transform", have.SubjectTransform.Source+" > "+have.SubjectTransform.Destination, "",
			"bucket %s's stream %s transforms subjects (%s > %s): lockservice would not find the leases it writes: %s",
			bucket, have.Name, have.SubjectTransform.Source, have.SubjectTransform.Destination, other)
	case have.Sealed:
		return nil, mismatch("sealed", "true", "false", "bucket %s's stream %s is sealed and accepts no writes: %s", bucket, have.Name, other)
	case !slices.Contains(have.Subjects, want.Subjects[0]):
		return nil, mismatch("subjects", strings.Join(have.Subjects, ","), want.Subjects[0],
			"bucket %s's stream %s has subjects %s, lockservice writes to %s: %s", bucket, have.Name, strings.Join(have.Subjects, ", "), want.Subjects[0], other)
	case have.Replicas != want.Replicas:
		return nil, mismatch("replicas", fmt.Sprint(have.Replicas), fmt.Sprint(want.Replicas),
			"bucket %s has %s, this instance asks for %d: start with --replicas %d (Config.Replicas; lockservice never changes an existing bucket's replicas, change them with nats stream edit %s --replicas N)",
			bucket, plural(have.Replicas, "replica"), want.Replicas, have.Replicas, have.Name)
	case have.Storage != want.Storage:
		hs, ws := strings.ToLower(have.Storage.String()), strings.ToLower(want.Storage.String())
		return nil, mismatch("storage", hs, ws,
			"bucket %s uses %s storage, lockservice needs %s storage (memory loses every lease and restarts fencing tokens when the servers restart): %s",
			bucket, hs, ws, other)
	case have.Retention != natsjs.LimitsPolicy:
		return nil, mismatch("retention", have.Retention.String(), natsjs.LimitsPolicy.String(),
			"bucket %s has %s retention, lockservice needs limits retention (anything else removes leases the server did not expire): %s", bucket, have.Retention, other)
	case have.MaxMsgsPerSubject != want.MaxMsgsPerSubject:
		return nil, mismatch("max_msgs_per_subject", fmt.Sprint(have.MaxMsgsPerSubject), fmt.Sprint(want.MaxMsgsPerSubject),
			"bucket %s keeps %d messages per key (history), lockservice needs %d (with more, the server stretches short lease TTLs to the marker TTL): %s",
			bucket, have.MaxMsgsPerSubject, want.MaxMsgsPerSubject, other)
	case have.DiscardNewPerSubject:
		return nil, mismatch("discard_new_per_subject", "true", "false",
			"bucket %s has discard_new_per_subject with one message per key, so no lease could ever be replaced: %s", bucket, other)
	case have.MaxAge > 0:
		return nil, mismatch("max_age", have.MaxAge.String(), "0",
			"bucket %s has max_age %v: the server would remove leases before their TTL and state objects at that age; remove it (nats stream edit %s --max-age 0) or %s",
			bucket, have.MaxAge, have.Name, other)
	case have.Discard == natsjs.DiscardOld && (have.MaxMsgs > 0 || have.MaxBytes > 0):
		return nil, mismatch("discard", "old", "new",
			"bucket %s has a size limit with discard old: when full the server would remove live leases; use discard new (nats stream edit %s --discard new) or %s",
			bucket, have.Name, other)
	case have.DenyPurge:
		return nil, mismatch("deny_purge", "true", "false",
			"bucket %s denies purges, which lockservice's releases (roll-ups) need: %s", bucket, other)
	case have.SubjectDeleteMarkerTTL != 0 && have.SubjectDeleteMarkerTTL < want.SubjectDeleteMarkerTTL:
		// A longer marker TTL than asked for is adopted (New); a shorter
		// one cannot outlive this instance's longest leases.
		return nil, mismatch("subject_delete_marker_ttl", have.SubjectDeleteMarkerTTL.String(), want.SubjectDeleteMarkerTTL.String(),
			"bucket %s keeps release and expiry markers for %v (subject_delete_marker_ttl), this instance asks for %v: a marker must outlive the longest lease (docs/STORES.md), so start with --max-ttl %v or less (Config.MarkerTTL; lockservice never changes an existing bucket's marker TTL)",
			bucket, have.SubjectDeleteMarkerTTL, want.SubjectDeleteMarkerTTL, have.SubjectDeleteMarkerTTL)
	}
	update := have
	update.AllowMsgTTL = true
	update.AllowRollup = true
	update.AllowAtomicPublish = true
	if update.SubjectDeleteMarkerTTL == 0 {
		update.SubjectDeleteMarkerTTL = want.SubjectDeleteMarkerTTL
	}
	if len(missingFeatures(have, update)) == 0 {
		return nil, nil
	}
	return &update, nil
}

// missingFeatures names the features update switches on that have lacks.
func missingFeatures(have, update natsjs.StreamConfig) []string {
	var m []string
	if !have.AllowMsgTTL && update.AllowMsgTTL {
		m = append(m, "allow_msg_ttl")
	}
	if have.SubjectDeleteMarkerTTL == 0 && update.SubjectDeleteMarkerTTL != 0 {
		m = append(m, "subject_delete_marker_ttl "+update.SubjectDeleteMarkerTTL.String())
	}
	if !have.AllowRollup && update.AllowRollup {
		m = append(m, "allow_rollup_hdrs")
	}
	if !have.AllowAtomicPublish && update.AllowAtomicPublish {
		m = append(m, "allow_atomic")
	}
	return m
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
