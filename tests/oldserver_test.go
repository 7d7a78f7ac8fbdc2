// Package tests holds black-box integration and fault tests that start real
// servers: nats-server (embedded or as a process) and redis-server.
package tests

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// oldNATSServer returns a nats-server binary of an older release, built
// once from the Go module proxy into the user cache (about a minute).
func oldNATSServer(t *testing.T, version string) string {
	t.Helper()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "lockservice-test", "nats-server-"+version)
	bin := filepath.Join(dir, "nats-server")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	cmd := exec.Command("go", "install", "github.com/nats-io/nats-server/v2@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building nats-server %s from the Go module proxy (needed to test the start-up check): %v\n%s", version, err, out)
	}
	return bin
}

// TestRefusesOldServer: on nats-server 2.10 (no per-message TTL, no atomic
// batches) the JetStream store refuses to start and says why.
func TestRefusesOldServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds nats-server 2.10 from source")
	}
	const version = "v2.10.27"
	bin := oldNATSServer(t, version)
	port := testsrv.FreePort(t)
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var nc *nats.Conn
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		if nc, err = nats.Connect("nats://127.0.0.1:" + strconv.Itoa(port)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server %s did not start: %v", version, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer nc.Close()
	_, err := jsstore.New(t.Context(), nc, jsstore.Config{})
	if !errors.Is(err, jsstore.ErrServerTooOld) {
		t.Fatalf("jetstream.New on nats-server %s = %v, want ErrServerTooOld", version, err)
	}
	for _, want := range []string{strings.TrimPrefix(version, "v"), "2.12", "API level"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}
