package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/service/api"
)

const lockUsage = `Usage: lockservice lock [flags] KEY -- COMMAND [ARGS...]

Acquires the lock KEY (waiting until it is free, at most --wait; with --try
not at all), keeps its lease alive and runs COMMAND with LOCK_KEY,
LOCK_TOKEN (the fencing token) and LOCK_ID (the lock id, the secret that
releases it) added to its environment, stdin, stdout and stderr passed
through. SIGINT, SIGTERM and SIGHUP are passed on to COMMAND. When COMMAND
exits, lockservice releases the lock and exits with COMMAND's status
(128+N when signal N killed it).

If the lock is lost while COMMAND runs (its lease could not be renewed in
time, or someone released it by its lock id), COMMAND gets SIGTERM, then
SIGKILL --kill-grace later, and lockservice exits 3 saying why.

COMMAND runs in a process group of its own, and signals go to the whole
group, so what COMMAND started stops with it; except when stdin is the
terminal lockservice runs in the foreground of: COMMAND then shares
lockservice's group, so that it can read the terminal, and signals go to
its process alone. A Ctrl-C (SIGINT) or a hangup (SIGHUP) reaches it from
the terminal then, so lockservice passes on only SIGTERM.

Exit status:
  COMMAND's  COMMAND ran holding the lock until it exited
  1          lockservice failed (NATS, the service); COMMAND did not run
  2          bad flags or arguments
  3          the lock was lost before COMMAND ended
  4          the lock is held by another: --try, or --wait ran out
  126, 127   COMMAND could not be run, or was not found
  128+N      signal N arrived while waiting for the lock
A COMMAND that exits with one of these itself looks the same; lockservice's
own messages on stderr (lockservice: ...) tell them apart.

Flags:
`

// lockFlags are the flags of lockservice lock.
type lockFlags struct {
	clientFlags
	wait, ttl, killGrace time.Duration
	try, verbose         bool
	owner                string
}

// parseLockFlags parses lockservice lock's arguments: flags, KEY, maybe
// more flags, then "--" and the command.
func parseLockFlags(args []string, stderr io.Writer) (f *lockFlags, key string, argv []string, err error) {
	f = &lockFlags{}
	fs := flag.NewFlagSet("lockservice lock", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, lockUsage)
		fs.PrintDefaults()
	}
	f.clientFlags.register(fs)
	fs.DurationVar(&f.wait, "wait", 0, "how long to wait for the lock (0: until it is free)")
	fs.BoolVar(&f.try, "try", false, "do not wait: exit 4 at once when the lock is held")
	fs.DurationVar(&f.ttl, "ttl", 30*time.Second, "lease length; renewed every third of it while COMMAND runs, it is how long the lock outlives a lockservice that dies")
	fs.DurationVar(&f.killGrace, "kill-grace", 10*time.Second, "when the lock is lost: time between SIGTERM and SIGKILL to COMMAND")
	fs.StringVar(&f.owner, "owner", "", "owner label that get and ls show to others (default hostname:pid)")
	fs.BoolVar(&f.verbose, "v", false, "say on stderr when waiting for the lock, and when it is acquired and released")
	if err := parseWithEnv(fs, args); err != nil {
		return nil, "", nil, err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return nil, "", nil, errors.New("lock: no KEY: lockservice lock [flags] KEY -- COMMAND [ARGS...]")
	}
	key = rest[0]
	dash := slices.Index(rest[1:], "--") + 1
	if dash == 0 {
		return nil, "", nil, fmt.Errorf("lock %q: no -- before the command: lockservice lock [flags] KEY -- COMMAND [ARGS...]", key)
	}
	if err := fs.Parse(rest[1:dash]); err != nil {
		return nil, "", nil, err
	}
	if fs.NArg() > 0 {
		return nil, "", nil, fmt.Errorf("lock %q: unexpected argument %q before -- (flags start with -)", key, fs.Arg(0))
	}
	argv = rest[dash+1:]
	switch {
	case len(argv) == 0:
		return nil, "", nil, fmt.Errorf("lock %q: no COMMAND after --", key)
	case api.ValidateKey(key) != nil:
		return nil, "", nil, fmt.Errorf("lock: KEY: %w", api.ValidateKey(key))
	case f.try && f.wait > 0:
		return nil, "", nil, errors.New("lock: --try and --wait exclude each other (--try waits not at all)")
	case f.wait < 0:
		return nil, "", nil, fmt.Errorf("--wait must not be negative, got %v", f.wait)
	case f.ttl <= 0:
		return nil, "", nil, fmt.Errorf("--ttl must be positive, got %v", f.ttl)
	case f.killGrace < 0:
		return nil, "", nil, fmt.Errorf("--kill-grace must not be negative, got %v", f.killGrace)
	}
	if err := f.clientFlags.validate(); err != nil {
		return nil, "", nil, err
	}
	if f.owner == "" {
		f.owner = defaultOwner()
	}
	return f, key, argv, nil
}

// defaultOwner is hostname:pid.
func defaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return host + ":" + strconv.Itoa(os.Getpid())
}

// forwarded are the signals lock passes on to its command.
var forwarded = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP}

// lockCommand is lockservice lock: it runs a command holding a lock.
func lockCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f, key, argv, err := parseLockFlags(args, stderr)
	if err != nil {
		return err
	}
	// From here on a signal ends the wait for the lock, or is passed on to
	// the command.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	defer signal.Stop(sigs)

	nc, err := f.connect("lockservice lock")
	if err != nil {
		return err
	}
	defer nc.Close()
	c, err := client.New(nc, client.WithPrefix(f.prefix), client.WithRequestTimeout(f.timeout))
	if err != nil {
		return failure(err)
	}
	l, err := acquire(ctx, c, f, key, sigs, stderr)
	if err != nil {
		return err
	}
	return runHolding(ctx, l, f, argv, sigs, stdout, stderr)
}

// acquire takes the lock key as f says, kept alive. A signal or ctx ending
// while it waits gives up: the lock is not taken.
func acquire(ctx context.Context, c *client.Client, f *lockFlags, key string, sigs <-chan os.Signal, stderr io.Writer) (*client.Lock, error) {
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	waitCtx := actx
	if f.wait > 0 {
		var cancelWait context.CancelFunc
		waitCtx, cancelWait = context.WithTimeout(actx, f.wait)
		defer cancelWait()
	}
	opts := []client.AcquireOption{client.WithKeepAlive(), client.WithTTL(f.ttl), client.WithOwnerLabel(f.owner)}
	type result struct {
		l   *client.Lock
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := c.TryAcquire(waitCtx, key, opts...)
		if errors.Is(err, client.ErrLocked) && !f.try {
			if f.verbose {
				fmt.Fprintf(stderr, "lockservice: lock %q is %s; waiting\n", key, holder(c, key, err, f.timeout))
			}
			l, err = c.Acquire(waitCtx, key, opts...)
		}
		done <- result{l, err}
	}()

	var sig os.Signal
	var r result
	select {
	case r = <-done:
	case sig = <-sigs:
		cancel()
		r = <-done
	case <-ctx.Done():
		r = <-done
		sig = pending(sigs) // the signal that ended ctx, if one did
	}
	if r.err == nil && (sig != nil || ctx.Err() != nil) {
		// Granted just as the wait was given up: give it back.
		_ = release(r.l, f.timeout)
		r.l, r.err = nil, context.Canceled
	}
	switch {
	case r.err == nil:
		if f.verbose {
			fmt.Fprintf(stderr, "lockservice: acquired lock %q, token %d\n", key, r.l.Token())
		}
		return r.l, nil
	case sig != nil:
		return nil, &exitError{code: 128 + signalNumber(sig), err: fmt.Errorf("lock %q: %v while waiting for it; the command did not run", key, sig)}
	case f.refusal.get() != nil:
		// NATS refused a request (the user's permissions), which the
		// client sees as no answer.
		return nil, failure(fmt.Errorf("lock %q: NATS refused the request (the user's permissions do not cover the key): %w; the command did not run", key, f.refusal.get()))
	case ctx.Err() != nil:
		return nil, failure(fmt.Errorf("lock %q: gave up waiting (%v); the command did not run", key, context.Cause(ctx)))
	case errors.Is(r.err, client.ErrLocked):
		return nil, &exitError{code: exitHeld, err: fmt.Errorf("lock %q is %s (--try)", key, holder(c, key, r.err, f.timeout))}
	case errors.Is(r.err, client.ErrTimeout) && f.wait > 0:
		return nil, &exitError{code: exitHeld, err: fmt.Errorf("lock %q not acquired within --wait %v: it is %s", key, f.wait, holder(c, key, r.err, f.timeout))}
	case noResponders(r.err):
		return nil, failure(fmt.Errorf("lock %q: %w", key, f.noService(api.Subject(f.prefix, api.OpAcquire, key))))
	default:
		return nil, failure(fmt.Errorf("lock %q: %w", key, r.err))
	}
}

// holder describes who holds key, for the error err of an acquire that
// did not get it: by asking the service, or from err.
func holder(c *client.Client, key string, err error, timeout time.Duration) string {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	info, gerr := c.Get(ctx, key)
	if gerr != nil || !info.Locked {
		return fmt.Sprintf("held (%v)", err)
	}
	return fmt.Sprintf("held by %q (token %d, lease until %s)", info.Owner, info.Token, api.FormatTime(info.ExpiresAt))
}

// noResponders reports the client's error for a request no service
// instance answered.
func noResponders(err error) bool {
	var answer *client.Error
	return errors.Is(err, client.ErrUnavailable) && !errors.As(err, &answer)
}

// pending returns a signal already delivered on sigs, or nil.
func pending(sigs <-chan os.Signal) os.Signal {
	select {
	case s := <-sigs:
		return s
	default:
		return nil
	}
}

func signalNumber(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return int(s)
	}
	return 0
}

// release gives l back, waiting at most timeout for the answer.
func release(l *client.Lock, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return l.Release(ctx)
}

// runHolding runs argv holding l: it passes signals on to the command,
// stops the command when l is lost, and releases l when the command has
// exited.
func runHolding(ctx context.Context, l *client.Lock, f *lockFlags, argv []string, sigs <-chan os.Signal, stdout, stderr io.Writer) error {
	key := l.Key()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LOCK_KEY="+key, "LOCK_TOKEN="+strconv.FormatUint(l.Token(), 10), "LOCK_ID="+l.ID())
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.WaitDelay = time.Second // for output copied through pipes that what it started holds open
	group := ownGroup(cmd)
	tieToParent(cmd)
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		// One thread starts the command and outlives it (tieToParent).
		lockThread()
		defer unlockThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait() // the status is in cmd.ProcessState
		close(exited)
	}()
	if err := <-started; err != nil {
		_ = release(l, f.timeout)
		code := exitNoExec
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			code = exitNoFile
		}
		return &exitError{code: code, err: fmt.Errorf("lock %q: %w (the lock was released)", key, err)}
	}

	var lost error
	var kill <-chan time.Time
	ctxDone, lockDone := ctx.Done(), l.Done()
	for running := true; running; {
		select {
		case <-exited:
			running = false
		case sig := <-sigs:
			if !group && sig != syscall.SIGTERM {
				continue // the terminal's Ctrl-C or its shell's hangup reached the command already
			}
			_ = signalCommand(cmd, group, sig)
		case <-ctxDone:
			ctxDone = nil
			// main ends ctx on SIGINT and SIGTERM, which also arrive on
			// sigs: only a cancellation that is no signal is passed on.
			if cause := context.Cause(ctx); cause == context.Canceled || cause == context.DeadlineExceeded {
				_ = signalCommand(cmd, group, syscall.SIGTERM)
			}
		case <-lockDone:
			lockDone = nil
			lost = l.Err()
			fmt.Fprintf(stderr, "lockservice: lock %q lost; stopping %s: SIGTERM now, SIGKILL in %v\n", key, argv[0], f.killGrace)
			_ = signalCommand(cmd, group, syscall.SIGTERM)
			kill = time.After(f.killGrace)
		case <-kill:
			kill = nil
			fmt.Fprintf(stderr, "lockservice: %s still running %v after SIGTERM: SIGKILL\n", argv[0], f.killGrace)
			_ = signalCommand(cmd, group, syscall.SIGKILL)
		}
	}
	if lost != nil && group {
		_ = signalCommand(cmd, group, syscall.SIGKILL) // what the command started and left behind
	}

	if lost == nil {
		lost = l.Err() // lost as the command exited
	}
	err := release(l, f.timeout)
	switch {
	case lost != nil:
	case errors.Is(err, client.ErrNotHeld):
		lost = err
	case err != nil:
		fmt.Fprintf(stderr, "lockservice: warning: release lock %q: %v (its lease ends by itself within --ttl %v)\n", key, err, f.ttl)
	case f.verbose:
		fmt.Fprintf(stderr, "lockservice: released lock %q\n", key)
	}
	if lost != nil {
		return &exitError{code: exitLost, err: fmt.Errorf("lock %q was lost before %s ended (%v): %w", key, argv[0], cmd.ProcessState, lost)}
	}
	if status := exitStatusOf(cmd.ProcessState); status != 0 {
		return &exitError{code: status}
	}
	return nil
}

// exitStatusOf is a finished command's status as a shell reports it:
// 128+N when signal N killed it.
func exitStatusOf(ps *os.ProcessState) int {
	if ps == nil {
		return exitFailure
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
