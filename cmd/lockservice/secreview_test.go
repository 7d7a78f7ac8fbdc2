package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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

// permissionsServer is a nats-server with JetStream and the template's
// users billing (its keys and its inbox _INBOX.billing only) and
// lockservice (inbox _INBOX.lockservice only); every password is "pw",
// in the file it returns.
func permissionsServer(t *testing.T) (url, pwFile string) {
	t.Helper()
	srv := startNATS(t, func(o *server.Options) {
		o.Users = []*server.User{
			{Username: "billing", Password: "pw", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"lock.*.billing.>", "$SRV.>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.billing.>"}},
			}},
			{Username: "lockservice", Password: "pw", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"lock.released.>", "lock.expired.>", "lock.forced.>", "lock.cancel.>", "_INBOX.>", "$KV.lockservice.>", "$JS.API.>"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"lock.>", "$SRV.>", "_INBOX.lockservice.>"}},
			}},
		}
	})
	pwFile = filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("pw"), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.ClientURL(), pwFile
}

// TestCommandsNameAPermissionViolation: NATS reports a permission
// violation asynchronously, and the commands waited for an answer that
// could not come, then said something else: a user confined to its own
// inbox without --nats-inbox-prefix got "no answer on lock.get.billing.x
// within --timeout" (get) or, 30 s later, "jetstream: account info:
// context deadline exceeded" (serve); a request on a key outside the
// user's permissions got "no answer" (get) or, from lock --wait, "not
// acquired within --wait: it is held" with the exit status of a held lock.
// What must hold: the error names the violation (and, for the inbox,
// --nats-inbox-prefix), and lock does not report a held key.
func TestCommandsNameAPermissionViolation(t *testing.T) {
	clearNATSEnv(t)
	url, pw := permissionsServer(t)
	login := []string{"--nats-url", url, "--nats-password-file", pw, "--timeout", "2s"}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"get without the inbox prefix", append([]string{"get", "--nats-user", "billing"}, append(login, "billing.x")...),
			[]string{"Permissions Violation for Subscription", "--nats-inbox-prefix"}},
		{"get on another tenant's key", append([]string{"get", "--nats-user", "billing", "--nats-inbox-prefix", "_INBOX.billing"}, append(login, "shipping.x")...),
			[]string{`Permissions Violation for Publish to "lock.get.shipping.x"`}},
		{"lock on another tenant's key", append([]string{"lock", "--nats-user", "billing", "--nats-inbox-prefix", "_INBOX.billing", "--wait", "3s"}, append(login, "shipping.x", "--", "true")...),
			[]string{`Permissions Violation for Publish to "lock.acquire.shipping.x"`}},
		{"serve without the inbox prefix", []string{"--nats-url", url, "--nats-user", "lockservice", "--nats-password-file", pw},
			[]string{"Permissions Violation for Subscription", "--nats-inbox-prefix"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut syncBuffer
			err := run(ctx, tc.args, &out, &errOut)
			if err == nil {
				t.Fatal("run = nil, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("run = %v; want it to say %q", err, w)
				}
			}
			if e := (*exitError)(nil); errors.As(err, &e) && e.code == exitHeld {
				t.Errorf("run = %v: exit status %d says the key is held", err, e.code)
			}
		})
	}
}
