package embedded_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/embedded"
)

// writeConf writes a nats.conf with text into a temporary directory.
func writeConf(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// start starts an embedded server, closed at cleanup.
func start(t *testing.T, opts ...embedded.Option) *embedded.Server {
	t.Helper()
	srv, err := embedded.Start(append([]embedded.Option{embedded.WithDataDir(t.TempDir())}, opts...)...)
	if err != nil {
		t.Fatalf("Start = %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// acquire takes key through nc and releases it, failing the test if either
// does not work.
func acquire(t *testing.T, nc *nats.Conn, key string) {
	t.Helper()
	c, err := client.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.TryAcquire(t.Context(), key)
	if err != nil {
		t.Fatalf("TryAcquire(%q) = %v, want a lock", key, err)
	}
	if err := l.Release(t.Context()); err != nil {
		t.Fatalf("Release(%q) = %v", key, err)
	}
}

func TestStartRefusesAnOpenListenerBeyondLoopback(t *testing.T) {
	cases := map[string][]embedded.Option{
		"all interfaces":            {embedded.WithListen("0.0.0.0", -1)},
		"config without listen":     {embedded.WithConfigFile(writeConf(t, "server_name: x\n"))},
		"no_auth_user on 0.0.0.0":   {embedded.WithConfigFile(writeConf(t, "listen: 0.0.0.0:-1\nno_auth_user: a\nauthorization { users: [{user: a, password: a}] }\n"))},
		"websocket without auth":    {embedded.WithConfigFile(writeConf(t, "listen: 127.0.0.1:-1\nwebsocket { listen: 0.0.0.0:-1, no_tls: true }\n"))},
		"ipv6 wildcard from a flag": {embedded.WithListen("::", -1)},
	}
	for name, opts := range cases {
		t.Run(name, func(t *testing.T) {
			srv, err := embedded.Start(append([]embedded.Option{embedded.WithDataDir(t.TempDir())}, opts...)...)
			if err == nil {
				srv.Close()
				t.Fatal("Start = nil, want ErrNoAuth")
			}
			if !errors.Is(err, embedded.ErrNoAuth) || !strings.Contains(err.Error(), "--allow-no-auth") {
				t.Errorf("Start = %v, want ErrNoAuth saying how to allow it", err)
			}
		})
	}
	t.Run("allowed explicitly", func(t *testing.T) {
		start(t, embedded.WithListen("0.0.0.0", -1), embedded.WithAllowNoAuth())
	})
	t.Run("with users", func(t *testing.T) {
		srv := start(t, embedded.WithConfigFile(writeConf(t, "listen: 0.0.0.0:-1\nauthorization { users: [{user: a, password: a}] }\n")))
		acquire(t, srv.Conn(), "auth.any")
	})
}

// TestStartWithUsersAuthenticatesTheService: with a users list in the
// configuration, the service and Conn log in as nkey users of their own;
// anonymous clients are refused and the configuration's users reach the
// service.
func TestStartWithUsersAuthenticatesTheService(t *testing.T) {
	srv := start(t, embedded.WithConfigFile(writeConf(t, `listen: 127.0.0.1:-1
authorization { users: [ {user: app, password: secret} ] }
`)))
	acquire(t, srv.Conn(), "auth.conn")
	if nc, err := nats.Connect(srv.URL); err == nil {
		nc.Close()
		t.Error("anonymous connect = nil, want an authorization violation")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("anonymous connect = %v, want an authorization violation", err)
	}
	nc, err := nats.Connect(srv.URL, nats.UserInfo("app", "secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	acquire(t, nc, "auth.app")
}

func TestStartWithATokenLogsInWithIt(t *testing.T) {
	srv := start(t, embedded.WithConfigFile(writeConf(t, "listen: 127.0.0.1:-1\nauthorization { token: s3cret }\n")))
	acquire(t, srv.Conn(), "auth.token")
	nc, err := nats.Connect(srv.URL, nats.Token("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	acquire(t, nc, "auth.token2")
}

func TestStartWithABcryptSinglePasswordNeedsServiceCredentials(t *testing.T) {
	// bcrypt of "secret", cost 4.
	conf := writeConf(t, "listen: 127.0.0.1:-1\nauthorization { user: app, password: \"$2a$04$N45e8NVTwmfcTTiq2PlwpO4rtv7QZ3eLsvt7Iugnm2RCaYjMdxMOi\" }\n")
	_, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithConfigFile(conf))
	if err == nil || !strings.Contains(err.Error(), "bcrypt") || !strings.Contains(err.Error(), "users") {
		t.Fatalf("Start = %v, want an error naming the bcrypt password and users lists", err)
	}
	srv := start(t, embedded.WithConfigFile(conf), embedded.WithServiceConnOptions(nats.UserInfo("app", "secret")))
	acquire(t, srv.Conn(), "auth.bcrypt")
}

const accountsConf = `listen: 127.0.0.1:-1
accounts {
  LOCKS { jetstream: enabled, users: [ {user: app, password: app} ] }
  OTHER { users: [ {user: other, password: other} ] }
}
`

// TestStartWithAccountsJoinsTheApplicationsAccount: the service's user
// lands in the account the applications use: named, or the only one the
// configuration's users are in.
func TestStartWithAccountsJoinsTheApplicationsAccount(t *testing.T) {
	_, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithConfigFile(writeConf(t, accountsConf)))
	if err == nil || !strings.Contains(err.Error(), "LOCKS, OTHER") || !strings.Contains(err.Error(), "--account") {
		t.Fatalf("Start with users in two accounts = %v, want an error naming them and --account", err)
	}
	_, err = embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithConfigFile(writeConf(t, accountsConf)), embedded.WithAccount("NOPE"))
	if err == nil || !strings.Contains(err.Error(), `"NOPE" is not defined`) {
		t.Fatalf("Start with an unknown account = %v, want an error naming it", err)
	}

	srv := start(t, embedded.WithConfigFile(writeConf(t, accountsConf)), embedded.WithAccount("LOCKS"))
	app, err := nats.Connect(srv.URL, nats.UserInfo("app", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	acquire(t, app, "acc.app")
	other, err := nats.Connect(srv.URL, nats.UserInfo("other", "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Request("lock.get.acc.app", nil, time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("request from another account = %v, want no responders", err)
	}

	_, err = embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithConfigFile(writeConf(t, accountsConf)), embedded.WithAccount("OTHER"))
	if err == nil || !strings.Contains(err.Error(), "JetStream is not enabled for account OTHER") {
		t.Fatalf("Start joining an account without JetStream = %v, want an error naming it", err)
	}

	one := start(t, embedded.WithConfigFile(writeConf(t, `listen: 127.0.0.1:-1
accounts { LOCKS { jetstream: enabled, users: [ {user: app, password: app} ] } }
`)))
	app1, err := nats.Connect(one.URL, nats.UserInfo("app", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer app1.Close()
	acquire(t, app1, "acc.one")
}

// TestMaxStoreCapsJetStream: the embedded JetStream storage is capped by
// default, and WithMaxStore sets the cap.
func TestMaxStoreCapsJetStream(t *testing.T) {
	for _, tc := range []struct {
		opts []embedded.Option
		want int64
	}{
		{nil, embedded.DefaultMaxStore},
		{[]embedded.Option{embedded.WithMaxStore(64 << 20)}, 64 << 20},
		{[]embedded.Option{embedded.WithConfigFile(writeConf(t, "listen: 127.0.0.1:-1\njetstream { max_file_store: 32MB }\n"))}, 32 << 20},
	} {
		srv := start(t, tc.opts...)
		if got := srv.NATSServer().JetStreamConfig().MaxStore; got != tc.want {
			t.Errorf("JetStream max store = %d, want %d", got, tc.want)
		}
	}
}
