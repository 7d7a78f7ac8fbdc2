package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/lockservice/lockservice/internal/testsrv"
)

// TestServeHidesATokenInNATSURL: a token in $NATS_URL
// (nats://TOKEN@host, the nats CLI's form, which HARDENING.md accepts
// without a warning) must not be printed: the "serving ... on URL" line
// and the "started" log line showed nc.ConnectedUrlRedacted(), which hides
// a password but not a token (url.URL.Redacted leaves a user without a
// password as it is). What must hold: neither stdout nor the log holds
// the token, in text or JSON logs.
func TestServeHidesATokenInNATSURL(t *testing.T) {
	clearNATSEnv(t)
	const token = "tok-s3cret-0123456789"
	srv := startNATS(t, func(o *server.Options) { o.Authorization = token })
	t.Setenv("NATS_URL", "nats://"+token+"@"+srv.Addr().String())
	for _, format := range []string{"text", "json"} {
		s := startServe(t, []string{"--log-format", format}, `started`, true)
		if err := s.stop(t); err != nil {
			t.Fatalf("serve = %v", err)
		}
		for what, text := range map[string]string{"stdout": s.out.String(), "log": s.errOut.String()} {
			if strings.Contains(text, token) {
				t.Errorf("--log-format %s: the %s shows the token of $NATS_URL:\n%s", format, what, text)
			}
		}
	}
}

// TestNATSErrorsHideCredentialsOfAURLWithoutScheme: nats.go takes a URL
// without a scheme (user:password@host:port, as NATS_URL is often
// written) and prepends nats://, but redactNATSURL parsed it as is
// (scheme "user", no user info) and left the password in every error
// message. What must hold: the connect error names the server without the
// password, and says which credentials the server refused.
func TestNATSErrorsHideCredentialsOfAURLWithoutScheme(t *testing.T) {
	clearNATSEnv(t)
	const password = "pw-s3cret-0123456789"
	down := "127.0.0.1:" + strconv.Itoa(testsrv.FreePort(t))
	for _, u := range []string{"app:" + password + "@" + down, password + "@" + down} {
		t.Setenv("NATS_URL", u)
		err := connectWith(t)
		if err == nil {
			t.Fatalf("connect to %s = nil, want an error (nothing listens)", down)
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("connect error shows the secret of $NATS_URL: %v", err)
		}
	}
	users := startNATS(t, func(o *server.Options) { o.Users = []*server.User{{Username: "app", Password: "right"}} })
	t.Setenv("NATS_URL", "app:"+password+"@"+srv(users))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var out, errOut syncBuffer
	err := run(ctx, []string{"get", "k"}, &out, &errOut)
	if err == nil || strings.Contains(err.Error(), password) || strings.Contains(errOut.String(), password) || !strings.Contains(err.Error(), `user "app" (password in the URL)`) {
		t.Errorf("get with a wrong password in a URL without scheme = %v (stderr %q): want an error naming user \"app\" (password in the URL), without the password", err, errOut.String())
	}
}

func srv(s *server.Server) string { return s.Addr().String() }
