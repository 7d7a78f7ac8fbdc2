package service

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/lockservice/lockservice/store"
)

// The instance's log (Config.Logger). A fault that fails every request
// must not write a line per request: lines that repeat a cause (a store
// error with the same root, an overload of the same limit, a failed
// publish) go through logLimited, which lets one line per cause through
// per Config.HealthInterval and says on it how many it held back since
// the last one ("suppressed"). What the instance logs:
//
//   - ERROR "store call failed": a store call failed (timeout,
//     unavailable, error), once per cause per interval (storewatch.go).
//   - INFO "store recovered": the store answered again after failing, with
//     how long it failed and how many calls failed (at most once per
//     interval; a recovery held back is logged when the interval ends).
//   - WARN "request refused": a 503 for a limit (in-flight operations,
//     parked requests per instance or per key), once per limit per interval.
//   - WARN "request dropped: its reply subject is not an inbox": a request
//     whose reply subject is one of the service's own or a $-subject was
//     neither executed nor answered (unsafeReply), once per interval.
//   - WARN "reply failed", "publish failed", "give back failed": NATS or
//     the store refused what the instance had to send or undo.
//   - INFO "stopping", "stopped": Stop began and ended.

// logLimiter lets one line per cause through per interval and counts the
// lines it held back.
type logLimiter struct {
	interval time.Duration

	mu     sync.Mutex
	causes map[string]*limitedCause
}

type limitedCause struct {
	last       time.Time // when a line of the cause was last let through
	suppressed int       // lines held back since
}

// maxCauses bounds the causes a limiter remembers; past it, causes not
// logged within the interval are forgotten.
const maxCauses = 1000

func newLogLimiter(interval time.Duration) *logLimiter {
	return &logLimiter{interval: interval, causes: make(map[string]*limitedCause)}
}

// allow reports whether a line of cause may be logged at now and, if so,
// how many lines of the cause it held back since the last one let through.
func (l *logLimiter) allow(cause string, now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.causes[cause]
	switch {
	case c == nil:
		if len(l.causes) >= maxCauses {
			l.forgetLocked(now)
		}
		c = &limitedCause{}
		l.causes[cause] = c
	case now.Sub(c.last) < l.interval:
		c.suppressed++
		return false, 0
	}
	suppressed = c.suppressed
	c.last, c.suppressed = now, 0
	return true, suppressed
}

// clearCounts forgets the lines held back of the causes for which match
// holds; it keeps when their last line was let through, so a cause stays
// limited to one line per interval.
func (l *logLimiter) clearCounts(match func(cause string) bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, c := range l.causes {
		if match(k) {
			c.suppressed = 0
		}
	}
}

// next returns when a line of cause may next be let through.
func (l *logLimiter) next(cause string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.causes[cause]; c != nil {
		return c.last.Add(l.interval)
	}
	return time.Time{}
}

// forgetLocked drops the causes last logged an interval ago or more, or
// every cause when that is not enough.
func (l *logLimiter) forgetLocked(now time.Time) {
	for k, c := range l.causes {
		if now.Sub(c.last) >= l.interval {
			delete(l.causes, k)
		}
	}
	if len(l.causes) >= maxCauses {
		clear(l.causes)
	}
}

// logLimited logs msg at level unless a line of the same cause was logged
// within the last interval. The line carries "suppressed", the lines of
// the cause held back since the previous one, when there were any.
func (s *Service) logLimited(level slog.Level, cause, msg string, attrs ...slog.Attr) {
	ok, n := s.limiter.allow(cause, time.Now())
	if !ok {
		return
	}
	if n > 0 {
		attrs = append(attrs, slog.Int("suppressed", n))
	}
	s.log.LogAttrs(context.Background(), level, msg, attrs...)
}

// refused logs a 503 answered for a limit (cause names the limit).
func (s *Service) refused(cause, op, key string, limit int) {
	s.logLimited(slog.LevelWarn, "refused: "+cause, "request refused: instance overloaded",
		slog.String("limit", cause), slog.Int("max", limit), slog.String("op", op), slog.String("key", key))
}

// logSendError logs a reply or event NATS did not take.
func (s *Service) logSendError(msg, subject string, err error) {
	s.logLimited(slog.LevelWarn, msg+": "+rootCause(err).Error(), msg,
		slog.String("subject", subject), slog.Any("err", err))
}

// rootCause is the innermost error of err's chain (the last branch of a
// joined error), the part that names the cause without the key, address
// or operation around it; a store sentinel is not a cause: the error that
// wraps it is.
func rootCause(err error) error {
	for {
		var next error
		switch u := err.(type) {
		case interface{ Unwrap() error }:
			next = u.Unwrap()
		case interface{ Unwrap() []error }:
			if errs := u.Unwrap(); len(errs) > 0 {
				next = errs[len(errs)-1]
			}
		}
		if next == nil || isStoreSentinel(next) {
			return err
		}
		err = next
	}
}

func isStoreSentinel(err error) bool {
	return err == store.ErrUnavailable || err == store.ErrInvalid || err == store.ErrLocked || err == store.ErrNotHeld
}

// errorKind is the outcome of a store call that ended with err: "ok",
// "locked", "not_held", "invalid" (the store answered), "timeout",
// "unavailable", "error" (it failed) or "canceled" (the service gave up).
func errorKind(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, store.ErrLocked):
		return OutcomeLocked
	case errors.Is(err, store.ErrNotHeld):
		return OutcomeNotHeld
	case errors.Is(err, store.ErrInvalid):
		return OutcomeInvalid
	case errors.Is(err, context.Canceled):
		return OutcomeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return OutcomeTimeout
	case errors.Is(err, store.ErrUnavailable):
		return OutcomeUnavailable
	}
	return OutcomeError
}
