package service

import (
	"fmt"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"

	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/store"
)

// TestNewOutageReportsNoSuppressedLinesOfTheLastOne: the first "store
// call failed" line of a new outage carried the lines held back in the
// previous one, which had ended (a "store recovered" line between them
// counted them in failed_calls). Seen with redis-server killed under
// load, restarted, and killed again 20 s later: the new outage's first
// line said suppressed=5722 although nothing had failed since the
// recovery.
func TestNewOutageReportsNoSuppressedLinesOfTheLastOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs logBuffer
		h := newHarness(t, false, Config{HealthInterval: 10 * time.Second, Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
		down := fmt.Errorf("%w: connection refused", store.ErrUnavailable)
		get := func(fail bool) {
			t.Helper()
			if fail {
				held := h.gate.Hold(storegate.Get, "k")
				held.Fail(down)
				held.Open()
			}
			h.answer(h.send("get", "k", ""))
		}
		for range 3 {
			get(true) // the first logged, two held back
		}
		get(false)
		if n := len(logs.lines(t, "store recovered")); n != 1 {
			t.Fatalf("%d recovery lines, want 1", n)
		}
		time.Sleep(time.Minute)
		get(true) // a new outage
		fails := logs.lines(t, "store call failed")
		if len(fails) != 2 {
			t.Fatalf("failure lines = %v, want 2 (one per outage)", fails)
		}
		if n, ok := fails[1]["suppressed"]; ok {
			t.Errorf("the new outage's first line says suppressed=%v: lines of the outage that ended a minute ago (%v)", n, fails[1])
		}
	})
}
