package embedded_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/lockservice/lockservice/embedded"
)

// TestSecondStartOnOneDataDirFails: two servers on one data directory would
// both run the bucket from the same files and grant the same lock with the
// same token. The second Start fails, names the first, and a Start after
// the first's Close succeeds.
func TestSecondStartOnOneDataDirFails(t *testing.T) {
	dir := t.TempDir()
	first, err := embedded.Start(embedded.WithDataDir(dir))
	if err != nil {
		t.Fatalf("first Start = %v", err)
	}
	second, err := embedded.Start(embedded.WithDataDir(dir))
	if err == nil {
		second.Close()
		first.Close()
		t.Fatal("second Start on the same data directory succeeded, want ErrDataDirInUse")
	}
	if !errors.Is(err, embedded.ErrDataDirInUse) {
		t.Fatalf("second Start = %v, want ErrDataDirInUse", err)
	}
	var inUse *embedded.DataDirInUseError
	if !errors.As(err, &inUse) || inUse.PID != os.Getpid() || inUse.URL != first.URL || inUse.Dir != dir {
		t.Errorf("second Start = %#v, want a DataDirInUseError with dir %s, pid %d, URL %s", err, dir, os.Getpid(), first.URL)
	}
	for _, want := range []string{dir, "pid " + strconv.Itoa(os.Getpid()), first.URL} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	first.Close()

	third, err := embedded.Start(embedded.WithDataDir(dir))
	if err != nil {
		t.Fatalf("Start after the first's Close = %v, want success", err)
	}
	third.Close()
}

// TestConfigFileStoreDirIsLocked: a data directory given as the config
// file's jetstream store_dir is locked too.
func TestConfigFileStoreDirIsLocked(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(t.TempDir(), "nats.conf")
	content := fmt.Sprintf("listen: 127.0.0.1:-1\njetstream { store_dir: %q }\n", dir)
	if err := os.WriteFile(conf, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	first, err := embedded.Start(embedded.WithConfigFile(conf))
	if err != nil {
		t.Fatalf("first Start = %v", err)
	}
	defer first.Close()
	if _, err := os.Stat(filepath.Join(dir, embedded.LockFileName)); err != nil {
		t.Errorf("no lock file in the store_dir: %v", err)
	}
	// Same directory, once through the config file and once by option.
	for _, opt := range []embedded.Option{embedded.WithConfigFile(conf), embedded.WithDataDir(dir)} {
		second, err := embedded.Start(opt)
		if err == nil {
			second.Close()
			t.Fatal("second Start on the config file's store_dir succeeded, want ErrDataDirInUse")
		}
		if !errors.Is(err, embedded.ErrDataDirInUse) || !strings.Contains(err.Error(), first.URL) {
			t.Errorf("second Start = %v, want ErrDataDirInUse naming %s", err, first.URL)
		}
	}
}
