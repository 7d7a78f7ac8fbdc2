//go:build windows

package embedded

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// tryLock takes an exclusive lock on one byte of f far past its end (Windows
// locks are mandatory: locking the pid and URL would hide them from the
// process that needs to name the holder) without waiting; busy reports
// that another handle holds it. Windows drops it when the process dies.
func tryLock(f *os.File) (busy bool, err error) {
	ol := windows.Overlapped{OffsetHigh: 0x7fffffff}
	err = windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, &ol)
	if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
		return true, nil
	}
	return false, err
}
