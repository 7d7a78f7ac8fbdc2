// Command lockservice runs the lock service, and commands under its locks.
//
// With no arguments (or "serve") it starts an embedded nats-server with
// JetStream on 127.0.0.1:4222 (data in ./lockservice-data) and serves locks
// from it:
//
//	lockservice
//	nats req lock.acquire.demo '{"ttl_ms":5000}'
//
// With --nats-url it joins an existing NATS instead; with --store redis it
// keeps lock state in Redis. Run lockservice -h for every flag.
//
// The other commands are clients of a running service:
//
//	lockservice lock backups.nightly -- ./backup.sh   # run a command holding a lock
//	lockservice get backups.nightly                   # the state of a key, as JSON
//	lockservice ls                                    # the locks held
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitStatus(err, os.Stderr))
}

// Exit statuses. lock passes its command's own status through otherwise.
const (
	exitFailure = 1 // a client command failed: NATS, the service, an error answer
	exitUsage   = 2 // bad flags or arguments; and any error of the service mode
	exitLost    = 3 // lock: the lock was lost before the command ended
	exitHeld    = 4 // lock: not acquired, the key is held (--try, or --wait ran out)
	exitNoExec  = 126
	exitNoFile  = 127
)

// exitError ends lockservice with code, printing err first unless it is
// nil.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// failure is a client command's error that is not the user's (exit 1).
func failure(err error) error { return &exitError{code: exitFailure, err: err} }

// exitStatus prints err to stderr and returns the status lockservice ends
// with: 0 for none or a help request, an exitError's code, else exitUsage.
func exitStatus(err error, stderr io.Writer) int {
	var e *exitError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &e):
		if e.err != nil {
			fmt.Fprintln(stderr, "lockservice:", e.err)
		}
		return e.code
	default:
		fmt.Fprintln(stderr, "lockservice:", err)
		return exitUsage
	}
}

const usageText = `Usage:
  lockservice [serve] [flags]                        run the service (the default)
  lockservice lock [flags] KEY -- COMMAND [ARGS...]  run COMMAND holding the lock KEY
  lockservice get [flags] KEY                        print the state of KEY as JSON
  lockservice ls [flags]                             list the locks held
  lockservice version                                print the version (also: --version)

Run lockservice COMMAND -h for the flags of lock, get and ls. Every flag
can also be set by a variable, LOCKSERVICE_<FLAG> (--max-ttl:
LOCKSERVICE_MAX_TTL); a flag given wins.
`

// run runs the command that args name: serve (also without a name, when
// args is empty or starts with a flag), lock, get, ls or help.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	name := "serve"
	if len(args) > 0 && (args[0] == "serve" || args[0] == "lock" || args[0] == "get" || args[0] == "ls" || args[0] == "help" || args[0] == "version") {
		name, args = args[0], args[1:]
	}
	switch name {
	case "lock":
		return lockCommand(ctx, args, stdout, stderr)
	case "get":
		return getCommand(ctx, args, stdout, stderr)
	case "ls":
		return lsCommand(ctx, args, stdout, stderr)
	case "help":
		fmt.Fprint(stdout, usageText)
		return nil
	case "version":
		_, err := fmt.Fprintln(stdout, versionText())
		return err
	}
	return serve(ctx, args, stdout, stderr)
}
