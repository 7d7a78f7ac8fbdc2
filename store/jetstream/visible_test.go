package jetstream

import (
	"errors"
	"fmt"
	"testing"

	natsjs "github.com/nats-io/nats.go/jetstream"
)

// TestUntilVisibleRetriesAStreamNotYetEverywhere: right after a stream is
// created on a cluster, a server that has not received its assignment yet
// answers "stream not found"; New retries that instead of failing (three
// instances starting together failed this way).
func TestUntilVisibleRetriesAStreamNotYetEverywhere(t *testing.T) {
	calls := 0
	err := untilVisible(t.Context(), func() error {
		calls++
		if calls < 3 {
			return fmt.Errorf("jetstream: stream info: %w", &natsjs.APIError{Code: 404, ErrorCode: natsjs.JSErrCodeStreamNotFound})
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("untilVisible = %v after %d calls, want nil after 3", err, calls)
	}
	other := errors.New("other")
	if err := untilVisible(t.Context(), func() error { return other }); err != other {
		t.Fatalf("untilVisible = %v, want the error that does not go away", err)
	}
}
