package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal and returns its terminal side; both
// sides are closed at cleanup.
func openPTY(t *testing.T) *os.File {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { ptmx.Close() })
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("pseudo-terminal %d: %v", n, err)
	}
	t.Cleanup(func() { tty.Close() })
	return tty
}

// TestLockProcessGroup: the command runs in a process group of its own,
// unless lockservice's stdin is the terminal it runs in the foreground
// of: then the command stays in lockservice's group (it can read the
// terminal, and job control reaches it).
func TestLockProcessGroup(t *testing.T) {
	url, _ := startService(t)
	// The shell writes its own pid and its process group (field 5 of
	// /proc/<pid>/stat).
	script := `echo "$$ $(cut -d' ' -f5 /proc/$$/stat)" > "$D/pg.tmp" && mv "$D/pg.tmp" "$D/pg"`
	for _, terminal := range []bool{false, true} {
		t.Run(fmt.Sprintf("terminal=%v", terminal), func(t *testing.T) {
			dir := t.TempDir()
			p := newBinary(t, url, []string{"D=" + dir}, "lock", "cli.group", "--", "sh", "-c", script)
			if terminal {
				// lockservice leads a session whose controlling terminal,
				// its stdin, has lockservice's group in the foreground.
				p.cmd.Stdin = openPTY(t)
				p.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
			}
			p.start(t)
			f := strings.Fields(p.await(t, filepath.Join(dir, "pg")))
			if code := p.exitCode(t); code != 0 {
				t.Fatalf("exit status %d; stderr:\n%s", code, p.stderr.String())
			}
			want := f[0] // its own
			if terminal {
				want = strconv.Itoa(p.cmd.Process.Pid) // lockservice's
			}
			if len(f) != 2 || f[1] != want {
				t.Errorf("the command's pid and process group = %q, want group %s", f, want)
			}
		})
	}
}
