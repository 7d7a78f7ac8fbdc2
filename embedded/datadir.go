package embedded

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// LockFileName is the file in the data directory that Start locks (flock on
// Unix, LockFileEx on Windows) for as long as the server runs. It holds the
// pid and client URL of the process that has the lock.
const LockFileName = "lockservice.lock"

// ErrDataDirInUse is returned by Start when another process (or another
// Server in this one) runs on the same data directory. The error is a
// *DataDirInUseError naming that process.
var ErrDataDirInUse = errors.New("embedded: data directory in use")

// DataDirInUseError says which process holds a data directory. It unwraps
// to ErrDataDirInUse.
type DataDirInUseError struct {
	Dir string // the data directory, absolute
	PID int    // the holder's pid; 0 when it has not written it yet
	URL string // the holder's client URL; empty when unknown or in-process only
}

func (e *DataDirInUseError) Error() string {
	var who []string
	if e.PID > 0 {
		who = append(who, "pid "+strconv.Itoa(e.PID))
	}
	if e.URL != "" {
		who = append(who, e.URL)
	}
	holder := "another lockservice"
	if len(who) > 0 {
		holder += " (" + strings.Join(who, ", ") + ")"
	}
	return fmt.Sprintf("embedded: data directory %s is in use by %s; stop it or choose another data directory (two servers on one directory would both grant the same locks)", e.Dir, holder)
}

func (e *DataDirInUseError) Unwrap() error { return ErrDataDirInUse }

// dirLock is an exclusive lock on a data directory, held by an open file.
// The file is never removed: a process that removed it could leave a second
// one locking a new file of the same name while a third still holds the
// old one.
type dirLock struct {
	f *os.File
}

// lockDataDir creates dir if needed and locks its LockFileName without
// waiting. It returns a *DataDirInUseError when another holds it.
func lockDataDir(dir string) (*dirLock, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("embedded: data directory %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("embedded: data directory: %w", err)
	}
	path := filepath.Join(abs, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("embedded: data directory lock: %w", err)
	}
	busy, err := tryLock(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("embedded: lock %s: %w", path, err)
	}
	if busy {
		f.Close()
		e := &DataDirInUseError{Dir: abs}
		e.PID, e.URL = readHolder(path)
		return nil, e
	}
	l := &dirLock{f: f}
	if err := l.record(""); err != nil {
		l.release()
		return nil, err
	}
	return l, nil
}

// record writes this process's pid and client URL into the lock file for a
// second process to name in its error.
func (l *dirLock) record(url string) error {
	s := "pid=" + strconv.Itoa(os.Getpid()) + "\n"
	if url != "" {
		s += "url=" + url + "\n"
	}
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("embedded: write %s: %w", l.f.Name(), err)
	}
	if _, err := l.f.WriteAt([]byte(s), 0); err != nil {
		return fmt.Errorf("embedded: write %s: %w", l.f.Name(), err)
	}
	return nil
}

// release empties the lock file and unlocks it (closing the file releases
// the lock).
func (l *dirLock) release() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Truncate(0)
	l.f.Close()
	l.f = nil
}

// readHolder reads what the holder wrote; it may be empty when the holder
// has only just locked.
func readHolder(path string) (pid int, url string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, ""
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch k {
		case "pid":
			pid, _ = strconv.Atoi(v)
		case "url":
			url = v
		}
	}
	return pid, url
}
