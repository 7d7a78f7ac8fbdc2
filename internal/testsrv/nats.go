// Package testsrv starts real servers for tests: an in-process nats-server
// with JetStream, and redis-server processes on free ports.
package testsrv

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// NATS starts a nats-server with JetStream (file storage under dir, or a
// temp dir when dir is empty) on a random loopback port, stopped at cleanup.
func NATS(t testing.TB, dir string) *server.Server {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := server.NewServer(&server.Options{
		ServerName: "test", Host: "127.0.0.1", Port: -1,
		JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatalf("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// Connect connects to s, closing the connection at cleanup.
func Connect(t testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return ConnectURL(t, s.ClientURL(), opts...)
}

// ConnectURL connects to url, closing the connection at cleanup.
func ConnectURL(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// NATSUsers starts a nats-server with JetStream and one user per entry of
// denySub (password = name), each denied subscribing to the listed subjects;
// user "full" may do everything. Tests use it to steer requests to chosen
// service instances: an instance whose user may not subscribe to
// lock.release.> never receives a release. It returns the server and a URL
// per user.
func NATSUsers(t testing.TB, denySub map[string][]string) (*server.Server, map[string]string) {
	t.Helper()
	users := []*server.User{{Username: "full", Password: "full"}}
	for name, deny := range denySub {
		users = append(users, &server.User{Username: name, Password: name,
			Permissions: &server.Permissions{Subscribe: &server.SubjectPermission{Allow: []string{">"}, Deny: deny}}})
	}
	s, err := server.NewServer(&server.Options{
		ServerName: "test", Host: "127.0.0.1", Port: -1, Users: users,
		JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatalf("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	urls := map[string]string{}
	for _, u := range users {
		urls[u.Username] = fmt.Sprintf("nats://%s:%s@%s", u.Username, u.Password, s.Addr().String())
	}
	return s, urls
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := FreePortErr()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// FreePortErr is FreePort without a test.
func FreePortErr() (int, error) {
	port, err := pickFree()
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	return port, nil
}
