package jetstream

import (
	"errors"
	"fmt"
	"strings"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/lockservice/lockservice/store"
)

// ErrBucketFull matches the error of a write that JetStream refused
// because the bucket reached its limits (Config.MaxMsgs, or max_bytes an
// operator set) or the account's or the server's JetStream storage is full.
// Nothing was written. The error also matches store.ErrUnavailable (the
// service answers 503): space comes back as leases end and state objects
// are deleted or expire, or when the operator raises the limit the message
// names.
var ErrBucketFull = errors.New("jetstream: bucket full")

// nats-server's error identifiers for a write refused for space; nats.go
// exports no names for them.
const (
	jsErrStoreFailed         = 10077 // JSStreamStoreFailedF: "maximum bytes exceeded", "maximum messages exceeded"
	jsErrInsufficientStorage = 10023 // JSInsufficientResourcesErr: the server's storage
	jsErrAccountResources    = 10002 // JSAccountResourcesExceededErr: the account's limits
)

type fullError struct {
	msg   string
	cause error
}

func (e *fullError) Error() string { return e.msg }

func (e *fullError) Unwrap() []error {
	return []error{ErrBucketFull, store.ErrFull, store.ErrUnavailable, e.cause}
}

// full returns an error matching ErrBucketFull when apiErr refused a write
// for space, saying which limit to raise; nil otherwise.
func (s *Store) full(apiErr *natsjs.APIError) error {
	bucket := s.cfg.Bucket
	var msg string
	switch apiErr.ErrorCode {
	case jsErrStoreFailed:
		d := apiErr.Description
		if !strings.Contains(d, "maximum bytes") && !strings.Contains(d, "maximum messages") {
			return nil
		}
		var limit, flag string
		c := s.str.CachedInfo().Config
		switch {
		case strings.Contains(d, "maximum messages"):
			limit, flag = "max_msgs", "--max-msgs"
			if c.MaxMsgs > 0 {
				limit += fmt.Sprintf(" %d", c.MaxMsgs)
			}
		default:
			limit, flag = "max_bytes", "--max-bytes"
			if c.MaxBytes > 0 {
				limit += fmt.Sprintf(" %d", c.MaxBytes)
			}
		}
		msg = fmt.Sprintf("jetstream: bucket %s is full (%s: stream %s is at its %s); nothing was written. Room comes back as leases end and state objects are deleted or expire (--object-ttl); or raise the limit: nats stream edit %s %s N",
			bucket, d, s.stream, limit, s.stream, flag)
	case jsErrInsufficientStorage:
		msg = fmt.Sprintf("jetstream: bucket %s is full: the server's JetStream storage is used up (%s); nothing was written. Raise max_file_store in the server's jetstream block (embedded: --max-store) or free space",
			bucket, apiErr.Description)
	case jsErrAccountResources:
		msg = fmt.Sprintf("jetstream: bucket %s is full: the account's JetStream storage limit is reached (%s); nothing was written. Raise the account's max_file (its jetstream limits) or free space",
			bucket, apiErr.Description)
	default:
		return nil
	}
	return &fullError{msg: msg, cause: apiErr}
}
