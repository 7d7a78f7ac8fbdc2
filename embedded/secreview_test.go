package embedded_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/embedded"
)

// TestStartRefusesOpenServerListenersBeyondLoopback: the client port is
// not the only way in. A leafnode listener without authentication binds
// any remote server that connects to it to the global account, with every
// permission; a cluster (route) or gateway listener without authentication
// takes any server as a peer, which then sees and sends every account's
// messages. Anyone who reaches such a port can take, release and rewrite
// every lock and read the lock ids in flight, while the client port listens
// on loopback only. What must hold: Start refuses such a listener beyond
// loopback (ErrNoAuth, naming it and --allow-no-auth), as it refuses an
// open client listener; with authentication of its own, or on loopback,
// it starts.
func TestStartRefusesOpenServerListenersBeyondLoopback(t *testing.T) {
	for name, conf := range map[string]string{
		"leafnodes":                   "listen: 127.0.0.1:-1\nleafnodes { listen: 0.0.0.0:-1 }\n",
		"leafnodes without listen":    "listen: 127.0.0.1:-1\nleafnodes { port: -1 }\n",
		"cluster":                     "listen: 127.0.0.1:-1\ncluster { name: c, listen: 0.0.0.0:-1 }\n",
		"cluster with users":          "listen: 127.0.0.1:-1\nauthorization { users: [{user: a, password: a}] }\ncluster { name: c, listen: 0.0.0.0:-1 }\n",
		"gateway":                     "listen: 127.0.0.1:-1\ngateway { name: g, listen: 0.0.0.0:-1 }\n",
		"leafnodes with no_auth_user": "listen: 127.0.0.1:-1\nno_auth_user: a\nauthorization { users: [{user: a, password: a}] }\nleafnodes { listen: 0.0.0.0:-1 }\n",
	} {
		t.Run(name, func(t *testing.T) {
			srv, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithConfigFile(writeConf(t, conf)))
			if err == nil {
				srv.Close()
				t.Fatal("Start = nil, want ErrNoAuth")
			}
			if !errors.Is(err, embedded.ErrNoAuth) || !strings.Contains(err.Error(), "--allow-no-auth") {
				t.Errorf("Start = %v, want ErrNoAuth naming how to allow it", err)
			}
		})
	}
	// --host 0.0.0.0 with authentication only in another listener's block:
	// the client port is open.
	for name, conf := range map[string]string{
		"websocket auth only": "websocket { listen: 127.0.0.1:-1, no_tls: true, authorization { token: t } }\n",
		"leafnode auth only":  "leafnodes { listen: 127.0.0.1:-1, authorization { user: l, password: l } }\n",
	} {
		t.Run("--host 0.0.0.0 with "+name, func(t *testing.T) {
			srv, err := embedded.Start(embedded.WithDataDir(t.TempDir()), embedded.WithConfigFile(writeConf(t, conf)), embedded.WithListen("0.0.0.0", -1))
			if err == nil {
				srv.Close()
				t.Fatal("Start = nil, want ErrNoAuth")
			}
			if !errors.Is(err, embedded.ErrNoAuth) || !strings.Contains(err.Error(), "client listener") {
				t.Errorf("Start = %v, want ErrNoAuth naming the client listener", err)
			}
		})
	}
	for name, conf := range map[string]string{
		"leafnodes with users":     "listen: 127.0.0.1:-1\nauthorization { users: [{user: a, password: a}] }\nleafnodes { listen: 0.0.0.0:-1 }\n",
		"leafnodes with their own": "listen: 127.0.0.1:-1\nleafnodes { listen: 0.0.0.0:-1, authorization { user: leaf, password: leaf } }\n",
		"leafnodes on loopback":    "listen: 127.0.0.1:-1\nleafnodes { listen: 127.0.0.1:-1 }\n",
	} {
		t.Run(name, func(t *testing.T) {
			start(t, embedded.WithConfigFile(writeConf(t, conf)))
		})
	}
}

// TestStartWithAccountsServesAnImportingAccount: HARDENING.md tells how to
// share the locks with other accounts: export lock.> from the service's
// account and import it. NATS then maps each request's reply subject to a
// reserved _R_. subject of the service's account, which the service must be
// allowed to publish on (its generated user publishes only where it needs
// to). What must hold: a user of the importing account takes and releases
// a lock.
func TestStartWithAccountsServesAnImportingAccount(t *testing.T) {
	srv := start(t, embedded.WithAccount("LOCKS"), embedded.WithConfigFile(writeConf(t, `listen: 127.0.0.1:-1
accounts {
  LOCKS { jetstream: enabled, users: [ {user: app, password: app} ], exports: [ {service: "lock.>"} ] }
  OTHER { users: [ {user: other, password: other} ], imports: [ {service: {account: LOCKS, subject: "lock.>"}} ] }
}
`)))
	other, err := nats.Connect(srv.URL, nats.UserInfo("other", "other"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	acquire(t, other, "imported.key")
}
