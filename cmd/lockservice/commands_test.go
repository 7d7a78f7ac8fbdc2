package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/testsrv"
)

// runCLI runs lockservice args in-process and returns its exit status and
// output, as main would give them.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	code = exitStatus(run(ctx, args, &out, &errOut), &errOut)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string // in stdout or stderr
	}{
		{[]string{"-h"}, 0, "lockservice lock [flags] KEY -- COMMAND [ARGS...]"},
		{[]string{"serve", "-h"}, 0, "Flags of serve"},
		{[]string{"help"}, 0, "lockservice ls [flags]"},
		{[]string{"lock", "-h"}, 0, "LOCK_TOKEN"},
		{[]string{"get", "-h"}, 0, "lockservice get [flags] KEY"},
		{[]string{"ls", "-h"}, 0, "-prefix-filter"},
		{[]string{"bogus"}, exitUsage, "the commands are serve, lock, get and ls"},
		{[]string{"lock"}, exitUsage, "no KEY"},
		{[]string{"lock", "k"}, exitUsage, "no -- before the command"},
		{[]string{"lock", "k", "--"}, exitUsage, "no COMMAND after --"},
		{[]string{"lock", "k", "echo", "--", "true"}, exitUsage, `unexpected argument "echo" before --`},
		{[]string{"lock", "bad key", "--", "true"}, exitUsage, "invalid key"},
		{[]string{"lock", "--try", "--wait", "1s", "k", "--", "true"}, exitUsage, "--try and --wait"},
		{[]string{"lock", "--ttl", "0s", "k", "--", "true"}, exitUsage, "--ttl must be positive"},
		{[]string{"lock", "--nope", "k", "--", "true"}, exitUsage, "flag provided but not defined"},
		{[]string{"get"}, exitUsage, "want one KEY"},
		{[]string{"get", "a", "b"}, exitUsage, "want one KEY"},
		{[]string{"get", "a..b"}, exitUsage, "invalid key"},
		{[]string{"ls", "x"}, exitUsage, `unexpected argument "x"`},
	} {
		code, stdout, stderr := runCLI(t, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("lockservice %q: exit status %d, output %q; want %d and %q", tc.args, code, stdout+stderr, tc.code, tc.want)
		}
	}
}

func TestParseLockFlags(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		key   string
		argv  []string
		check func(*lockFlags) bool
	}{
		{[]string{"k", "--", "echo", "hi"}, "k", []string{"echo", "hi"}, func(f *lockFlags) bool {
			return !f.try && f.wait == 0 && f.ttl == 30*time.Second && f.killGrace == 10*time.Second && f.prefix == "lock" &&
				strings.HasSuffix(f.owner, ":"+strconv.Itoa(os.Getpid()))
		}},
		{[]string{"--ttl", "5s", "k", "--try", "--owner", "me", "--", "sh", "-c", "x", "--", "y"}, "k", []string{"sh", "-c", "x", "--", "y"}, func(f *lockFlags) bool {
			return f.try && f.ttl == 5*time.Second && f.owner == "me"
		}},
		{[]string{"--prefix", "p", "--wait", "2s", "a.b", "--kill-grace", "1s", "--", "true"}, "a.b", []string{"true"}, func(f *lockFlags) bool {
			return f.wait == 2*time.Second && f.killGrace == time.Second && f.prefix == "p"
		}},
	} {
		f, key, argv, err := parseLockFlags(tc.args, io.Discard)
		if err != nil || key != tc.key || !slices.Equal(argv, tc.argv) || !tc.check(f) {
			t.Errorf("parseLockFlags(%q) = %+v, %q, %q, %v; want key %q, command %q", tc.args, f, key, argv, err, tc.key, tc.argv)
		}
	}
	t.Setenv("NATS_URL", "nats://example.test:4333")
	if f, _, _, err := parseLockFlags([]string{"k", "--", "true"}, io.Discard); err != nil || f.natsURL != "nats://example.test:4333" {
		t.Errorf("--nats-url with NATS_URL set = %q, %v, want NATS_URL's", f.natsURL, err)
	}
}

// TestClientCommandsWithoutService: with no NATS, or no service on the
// NATS, the client commands exit 1 and say what to start.
func TestClientCommandsWithoutService(t *testing.T) {
	srv := testsrv.NATS(t, "")
	noNATS := "nats://127.0.0.1:" + strconv.Itoa(testsrv.FreePort(t))
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"lock", "--nats-url", noNATS, "k", "--", "true"}, []string{"connect to NATS at " + noNATS, "lockservice"}},
		{[]string{"get", "--nats-url", noNATS, "k"}, []string{"connect to NATS"}},
		{[]string{"lock", "--nats-url", srv.ClientURL(), "k", "--", "true"}, []string{"no lock service instance answers lock.acquire.k", "start one"}},
		{[]string{"lock", "--try", "--nats-url", srv.ClientURL(), "k", "--", "true"}, []string{"no lock service instance answers lock.acquire.k"}},
		{[]string{"get", "--nats-url", srv.ClientURL(), "k"}, []string{"no lock service instance answers lock.get.k", "start one"}},
		{[]string{"ls", "--nats-url", srv.ClientURL()}, []string{"no lock service instance answers lock.admin.list", "version without it"}},
	} {
		code, _, stderr := runCLI(t, tc.args...)
		if code != exitFailure {
			t.Errorf("lockservice %q: exit status %d, want %d; stderr %q", tc.args, code, exitFailure, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("lockservice %q: stderr %q, want %q in it", tc.args, stderr, w)
			}
		}
	}
}

func TestGet(t *testing.T) {
	url, c := startService(t)
	l, err := c.TryAcquire(t.Context(), "cli.get", client.WithOwnerLabel("getter"), client.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "get", "--nats-url", url, "cli.get")
	var got struct {
		Key    string `json:"key"`
		Locked bool   `json:"locked"`
		Token  uint64 `json:"token"`
		Owner  string `json:"owner"`
		TTLms  int64  `json:"ttl_ms"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); code != 0 || err != nil ||
		got.Key != "cli.get" || !got.Locked || got.Token != l.Token() || got.Owner != "getter" || got.TTLms <= 0 {
		t.Errorf("get of a held key: exit %d, stdout %q (%v), stderr %q; want the JSON of a lock with token %d by getter", code, stdout, err, stderr, l.Token())
	}
	if err := l.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = runCLI(t, "get", "--nats-url", url, "cli.get")
	if err := json.Unmarshal([]byte(stdout), &got); code != 0 || err != nil || got.Locked {
		t.Errorf("get of a released key: exit %d, stdout %q, want locked false", code, stdout)
	}
}

// TestGetErrorAnswer: an error answer is printed as its code and message,
// exit 1. The answer comes from a responder of the test's on another
// prefix.
func TestGetErrorAnswer(t *testing.T) {
	srv := testsrv.NATS(t, "")
	nc := testsrv.Connect(t, srv)
	sub, err := nc.Subscribe("fake.get.k", func(m *nats.Msg) {
		_ = m.RespondMsg(&nats.Msg{Header: nats.Header{micro.ErrorCodeHeader: {"503"}, micro.ErrorHeader: {"store unavailable"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil { // the server has the subscription before the command asks
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "get", "--nats-url", srv.ClientURL(), "--prefix", "fake", "k")
	if code != exitFailure || stdout != "" || !strings.Contains(stderr, "503 store unavailable") {
		t.Errorf("get answered 503: exit %d, stdout %q, stderr %q; want 1 and the code and message", code, stdout, stderr)
	}
}

// TestLsPages: ls pages through <prefix>.admin.list until the cursor is
// empty, passes --prefix-filter on, and prints each lock as a line or
// all as JSON. The endpoint is a responder of the test's, on another
// prefix.
func TestLsPages(t *testing.T) {
	srv := testsrv.NATS(t, "")
	nc := testsrv.Connect(t, srv)
	pages := map[string]string{
		"":   `{"locks":[{"key":"jobs.a","owner":"h:1","token":3,"expires_at":"2030-01-01T00:00:00.000Z","ttl_ms":1000},{"key":"jobs.b","owner":"","token":4,"expires_at":"2030-01-01T00:00:01.000Z","ttl_ms":2000}],"cursor":"c1"}`,
		"c1": `{"locks":[{"key":"jobs.c","owner":"h:2","token":9,"expires_at":"2030-01-01T00:00:02.000Z","ttl_ms":3000}],"cursor":""}`,
	}
	requests := make(chan listRequest, 10)
	sub, err := nc.Subscribe("fake.admin.list", func(m *nats.Msg) {
		var req listRequest
		_ = json.Unmarshal(m.Data, &req)
		requests <- req
		_ = m.Respond([]byte(pages[req.Cursor]))
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil { // the server has the subscription before the command asks
		t.Fatal(err)
	}

	code, stdout, stderr := runCLI(t, "ls", "--nats-url", srv.ClientURL(), "--prefix", "fake", "--prefix-filter", "jobs.")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 4 || !strings.HasPrefix(lines[0], "KEY") {
		t.Fatalf("ls: exit %d, stdout %q, stderr %q; want a header and 3 locks", code, stdout, stderr)
	}
	for i, want := range [][]string{{"jobs.a", "3", "h:1", "2030-01-01T00:00:00.000Z"}, {"jobs.b", "4", "-", "2030-01-01T00:00:01.000Z"}, {"jobs.c", "9", "h:2", "2030-01-01T00:00:02.000Z"}} {
		if got := strings.Fields(lines[i+1]); !slices.Equal(got, want) {
			t.Errorf("ls line %d = %q, want %q", i+1, got, want)
		}
	}
	for i, cursor := range []string{"", "c1"} {
		if req := <-requests; req.Prefix != "jobs." || req.Cursor != cursor || req.Limit <= 0 {
			t.Errorf("request %d = %+v, want prefix jobs., cursor %q and a limit", i, req, cursor)
		}
	}

	code, stdout, stderr = runCLI(t, "ls", "--json", "--nats-url", srv.ClientURL(), "--prefix", "fake")
	var locks []map[string]any
	if err := json.Unmarshal([]byte(stdout), &locks); code != 0 || err != nil || len(locks) != 3 || locks[2]["key"] != "jobs.c" || locks[2]["ttl_ms"] != 3000.0 {
		t.Errorf("ls --json: exit %d, stdout %q (%v), stderr %q; want the 3 entries", code, stdout, err, stderr)
	}
}

// TestLsService lists the locks of a real service instance.
func TestLsService(t *testing.T) {
	url, c := startService(t)
	nc := testsrv.ConnectURL(t, url)
	if _, err := nc.Request(listSubject("lock"), []byte(`{"prefix":"","cursor":"","limit":1}`), 5*time.Second); errors.Is(err, nats.ErrNoResponders) {
		t.Skip("needs the service's admin.list endpoint")
	}
	var held []*client.Lock
	for _, key := range []string{"cli.ls.a", "cli.ls.b", "other.c"} {
		l, err := c.TryAcquire(t.Context(), key, client.WithTTL(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	code, stdout, stderr := runCLI(t, "ls", "--nats-url", url, "--prefix-filter", "cli.ls.")
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("ls --prefix-filter cli.ls.: exit %d, stdout %q, stderr %q; want a header and 2 locks", code, stdout, stderr)
	}
	for i, l := range held[:2] {
		if f := strings.Fields(lines[i+1]); len(f) != 4 || f[0] != l.Key() || f[1] != strconv.FormatUint(l.Token(), 10) || f[2] != "test" {
			t.Errorf("ls line %d = %q, want %s, token %d, owner test", i+1, lines[i+1], l.Key(), l.Token())
		}
	}
	code, stdout, _ = runCLI(t, "ls", "--json", "--nats-url", url)
	var locks []map[string]any
	if err := json.Unmarshal([]byte(stdout), &locks); code != 0 || err != nil || len(locks) != 3 {
		t.Errorf("ls --json: exit %d, stdout %q (%v), want 3 locks", code, stdout, err)
	}
}
