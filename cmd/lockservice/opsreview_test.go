package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/lockservice/lockservice/internal/testsrv"
)

// Found by trying the binary as a new operator (the opsreview branch).

// startTokenNATSAt starts a nats-server with JetStream on port that
// requires token.
func startTokenNATSAt(t *testing.T, port int, dir, token string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{ServerName: "tok", Host: "127.0.0.1", Port: port,
		Authorization: token, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// TestNATSTokenNeverPrinted: a NATS token in $NATS_URL (nats://TOKEN@host,
// as the nats CLI takes it) is a secret like a password. It showed in
// clear in the start banner on stdout, in the "started" log line and in
// the "NATS reconnected" line, because nats.Conn.ConnectedUrlRedacted
// hides passwords only, not a token in the user part.
func TestNATSTokenNeverPrinted(t *testing.T) {
	clearNATSEnv(t)
	const token = "t0ken-s3cret-4711"
	port := testsrv.FreePort(t)
	dir := t.TempDir()
	ns := startTokenNATSAt(t, port, dir, token)
	t.Setenv("NATS_URL", fmt.Sprintf("nats://%s@127.0.0.1:%d", token, port))
	s := startServe(t, nil, "serving", false)
	waitFor(t, &s.errOut, `msg=started`, s.errc)
	ns.Shutdown()
	ns.WaitForShutdown()
	waitFor(t, &s.errOut, `msg="NATS disconnected: reconnecting"`, s.errc)
	startTokenNATSAt(t, port, dir, token)
	waitFor(t, &s.errOut, `msg="NATS reconnected"`, s.errc)
	if err := s.stop(t); err != nil {
		t.Errorf("run = %v", err)
	}
	for name, out := range map[string]string{"stdout": s.out.String(), "stderr": s.errOut.String()} {
		if strings.Contains(out, token) {
			t.Errorf("%s shows the NATS token:\n%s", name, out)
		}
	}
}

// TestMalformedURLSecretNeverPrinted: a URL with a password that does not
// parse (a '%' not followed by two hex digits, common in generated
// passwords) is printed in the error as given, password and all: once by
// the redaction, which gives up on what url.Parse refuses, and once in
// url.Parse's own error. The NATS one was also taken for an unreachable
// server ("no NATS server answered ... is nats-server running?").
func TestMalformedURLSecretNeverPrinted(t *testing.T) {
	clearNATSEnv(t)
	const secret = "pa%zzword"
	cases := [][]string{
		{"--nats-url", "nats://app:" + secret + "@127.0.0.1:1"},
		{"--store", "redis", "--redis-url", "redis://app:" + secret + "@127.0.0.1:1/0"},
		{"--store", "redis", "--redis-mode", "cluster", "--redis-url", "redis://app:" + secret + "@127.0.0.1:1"},
		{"get", "--nats-url", "nats://app:" + secret + "@127.0.0.1:1", "k"},
	}
	for _, args := range cases {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		var out, errOut syncBuffer
		err := run(ctx, args, &out, &errOut)
		cancel()
		all := fmt.Sprint(err) + out.String() + errOut.String()
		if err == nil || strings.Contains(all, "zzword") {
			t.Errorf("lockservice %s: %v\n(output %q): the password shows", strings.Join(args, " "), err, out.String()+errOut.String())
		}
		if errors.Is(err, errNATSUnreachable) {
			t.Errorf("lockservice %s: %v: a malformed URL taken for an unreachable server", strings.Join(args, " "), err)
		}
	}
}

// TestBadValuesNameTheirSetting: a value that parses but is refused later
// must say which setting to fix, and when it came from a LOCKSERVICE_
// variable, name the variable: an operator who set it in a unit file has
// no --log-level on any command line. Negative durations and limits named
// neither ("service: durations must not be negative").
func TestBadValuesNameTheirSetting(t *testing.T) {
	clearNATSEnv(t)
	for _, c := range []struct {
		env, value string
		args       []string
		want       string
	}{
		{env: "LOCKSERVICE_LOG_LEVEL", value: "verbose", want: "LOCKSERVICE_LOG_LEVEL"},
		{env: "LOCKSERVICE_LOG_FORMAT", value: "xml", want: "LOCKSERVICE_LOG_FORMAT"},
		{env: "LOCKSERVICE_STORE", value: "mysql", want: "LOCKSERVICE_STORE"},
		{env: "LOCKSERVICE_MAX_TTL", value: "-5s", want: "LOCKSERVICE_MAX_TTL"},
		{env: "LOCKSERVICE_MAX_WAITERS", value: "-1", want: "LOCKSERVICE_MAX_WAITERS"},
		{args: []string{"--max-ttl", "-5s"}, want: "--max-ttl"},
		{args: []string{"--store-timeout", "-1s"}, want: "--store-timeout"},
		{args: []string{"--max-value-bytes", "-1"}, want: "--max-value-bytes"},
	} {
		t.Run(c.want, func(t *testing.T) {
			if c.env != "" {
				t.Setenv(c.env, c.value)
			}
			args := append([]string{"--data-dir", t.TempDir(), "--port", strconv.Itoa(testsrv.FreePort(t))}, c.args...)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			err := run(ctx, args, io.Discard, io.Discard)
			if code := exitStatus(err, io.Discard); code != exitUsage || !strings.Contains(fmt.Sprint(err), c.want) {
				t.Errorf("%s=%s lockservice %s: %v (exit %d), want exit %d naming %s", c.env, c.value, strings.Join(c.args, " "), err, code, exitUsage, c.want)
			}
		})
	}
}

// TestPortOutOfRange: --port 99999 was reported as "port 99999 on
// 127.0.0.1 is in use (another nats-server or lockservice?)", sending the
// operator to look for a process that does not exist.
func TestPortOutOfRange(t *testing.T) {
	for _, port := range []string{"99999", "65536"} {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		err := run(ctx, []string{"--port", port, "--data-dir", t.TempDir()}, io.Discard, io.Discard)
		cancel()
		if err == nil || strings.Contains(err.Error(), "in use") || !strings.Contains(err.Error(), "--port") {
			t.Errorf("lockservice --port %s = %v, want an error saying --port is out of range, not that it is in use", port, err)
		}
	}
}

// TestNATSTokenNeverPrintedWithoutJetStream: the JetStream store's start
// errors name the server by nats.Conn.ConnectedUrlRedacted too, which
// shows a token.
func TestNATSTokenNeverPrintedWithoutJetStream(t *testing.T) {
	clearNATSEnv(t)
	const token = "t0ken-s3cret-4712"
	ns := startNATS(t, func(o *server.Options) { o.JetStream = false; o.Authorization = token })
	t.Setenv("NATS_URL", "nats://"+token+"@"+ns.Addr().String())
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var out, errOut syncBuffer
	err := run(ctx, nil, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "JetStream") || strings.Contains(fmt.Sprint(err)+out.String()+errOut.String(), token) {
		t.Errorf("serve on a NATS without JetStream = %v (output %q), want an error naming JetStream without the token", err, out.String()+errOut.String())
	}
}

// TestEmbeddedFlagsWithNATSURLVariable: with LOCKSERVICE_NATS_URL set and
// --port given, the error named --nats-url (not given) and told to unset
// NATS_URL (not set): it must name the variable that selected the NATS.
func TestEmbeddedFlagsWithNATSURLVariable(t *testing.T) {
	clearNATSEnv(t)
	t.Setenv("LOCKSERVICE_NATS_URL", "nats://127.0.0.1:1")
	err := run(t.Context(), []string{"--port", strconv.Itoa(testsrv.FreePort(t))}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "LOCKSERVICE_NATS_URL") || strings.Contains(err.Error(), "unset NATS_URL") {
		t.Errorf("serve --port with LOCKSERVICE_NATS_URL = %v, want an error naming LOCKSERVICE_NATS_URL", err)
	}
}
