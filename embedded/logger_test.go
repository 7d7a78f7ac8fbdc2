package embedded_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lockservice/lockservice/embedded"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// TestLoggerGetsNATSWarningsAndDataDirIsTheFilesStoreDir: with a config
// file that makes nats-server warn (a max_payload over 8 MB), the warning
// reaches the Logger at level WARN, tagged component=nats-server, while its
// notices stay below the Logger's INFO level; DataDir is the file's
// store_dir, the directory the server really uses.
func TestLoggerGetsNATSWarningsAndDataDirIsTheFilesStoreDir(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "host: 127.0.0.1\nport: -1\nmax_payload: 16MB\njetstream { store_dir: %q }\n", data), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf lockedBuffer
	srv, err := embedded.Start(embedded.WithConfigFile(conf), embedded.WithLogger(slog.New(slog.NewJSONHandler(&buf, nil))))
	if err != nil {
		t.Fatal(err)
	}
	if srv.DataDir() != data {
		t.Errorf("DataDir() = %q, want the config file's store_dir %q", srv.DataDir(), data)
	}
	if _, err := os.Stat(filepath.Join(data, "jetstream")); err != nil {
		t.Errorf("no JetStream files in the store_dir: %v", err)
	}
	srv.Close()

	var warned bool
	buf.mu.Lock()
	defer buf.mu.Unlock()
	dec := json.NewDecoder(bytes.NewReader(buf.b.Bytes()))
	for dec.More() {
		var l map[string]any
		if err := dec.Decode(&l); err != nil {
			t.Fatal(err)
		}
		if l["component"] != "nats-server" {
			continue
		}
		if l["level"] != "WARN" && l["level"] != "ERROR" {
			t.Errorf("nats-server line at %v reached an INFO logger: %v", l["level"], l)
		}
		if l["level"] == "WARN" && strings.Contains(fmt.Sprint(l["msg"]), "Maximum payloads") {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no nats-server warning about max_payload in the log:\n%s", buf.b.String())
	}
}
