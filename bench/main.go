// Command lockbench compares lockservice (JetStream and Redis stores) with
// the Redis lock libraries users would pick instead, github.com/bsm/redislock
// and github.com/go-redsync/redsync/v4, side by side in one run on one Redis
// (issue 5):
//
//	cd bench && go run . -duration 5s
//
// It starts everything it needs on loopback: an embedded nats-server with
// JetStream and a lockservice instance on it (prefix "lock"), a redis-server
// process on a free port (or the one given with -redis-url) and a second
// lockservice instance on the same NATS backed by the Redis store (prefix
// "lockr"). Every simulated client has its own connection (a NATS
// connection over TCP, or a go-redis client).
//
// Scenarios (-scenarios, each bounded by -duration):
//
//  1. uncontended acquire+release pair, one client: p50/p99 latency, pairs/s;
//  2. -clients clients on as many distinct keys: pairs/s, plus raw JetStream
//     KV Create+Delete pairs at the same concurrency;
//  3. hot key: -hot-clients clients on one key, hold 0 and hold -hold:
//     acquisitions/s, handoff latency (release sent to next grant received,
//     one in-process monotonic clock), fairness (max/min acquisitions per
//     client), share of self-reacquisitions;
//  4. expiry wake-up: a holder that never releases (lease -expiry-ttl) and a
//     blocked waiter: time from the lease end to the waiter's grant;
//  5. scale: one lockservice instance holding -scale-locks locks and
//     -scale-waiters parked waiters: RSS of this process (which also runs
//     nats-server) and goroutines.
//
// Peers use their usual blocking strategies: redislock retries with
// LinearBackoff(-redislock-backoff), redsync uses its default options (32
// tries, 50-250 ms random delay, 8 s expiry; a Lock that runs out of tries
// is called again), lockservice uses client.Acquire (parked on the service,
// woken by pushes) and TryAcquire for the uncontended pairs.
//
// It prints a table of absolute numbers and ratios to redislock, and the
// issue's targets with PASS or MISS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/trace"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "lockbench:", err)
		}
		os.Exit(2)
	}
}

// config holds the flags.
type config struct {
	duration         time.Duration
	scenarios        map[int]bool
	targets          map[string]bool
	redisURL         string
	clients          int
	hotClients       int
	hold             time.Duration
	ttl              time.Duration
	expiryTTL        time.Duration
	expiryRounds     int
	expiryBusy       int
	scaleLocks       int
	scaleWaiters     int
	scaleTimeout     time.Duration
	redislockBackoff time.Duration
	cpuProfile       string
	dataDir          string
	serviceConn      string
	trace            string
}

// Target names, in table order.
const (
	tJetStream = "lockservice/jetstream"
	tRedis     = "lockservice/redis"
	tRedislock = "redislock"
	tRedsync   = "redsync"
	tRawKV     = "raw-kv"
	tFloor     = "floor"
)

var targetOrder = []string{tJetStream, tRedis, tRedislock, tRedsync, tRawKV, tFloor}

var targetAliases = map[string]string{
	"jetstream": tJetStream, "js": tJetStream, tJetStream: tJetStream,
	"redis": tRedis, tRedis: tRedis,
	"redislock": tRedislock,
	"redsync":   tRedsync,
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("lockbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: lockbench [flags]\n\nCompares lockservice (JetStream, Redis) with bsm/redislock and go-redsync on one Redis.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	var scen, targets string
	fs.DurationVar(&c.duration, "duration", 5*time.Second, "measuring time of each scenario and target")
	fs.StringVar(&scen, "scenarios", "1,2,3,4,5", "scenarios to run (comma separated, 1-5)")
	fs.StringVar(&targets, "targets", "jetstream,redis,redislock,redsync", "targets to run")
	fs.StringVar(&c.redisURL, "redis-url", "", "use this Redis (redis://host:port/db) instead of starting redis-server on a free loopback port")
	fs.IntVar(&c.clients, "clients", 64, "scenario 2: clients, each on its own key")
	fs.IntVar(&c.hotClients, "hot-clients", 16, "scenario 3: clients competing for one key")
	fs.DurationVar(&c.hold, "hold", time.Millisecond, "scenario 3: hold time of the second run (time.Sleep; the first run holds 0)")
	fs.DurationVar(&c.ttl, "ttl", 10*time.Second, "lease of every acquire except scenario 4's holder (redsync keeps its default 8s)")
	fs.DurationVar(&c.expiryTTL, "expiry-ttl", 1500*time.Millisecond, "scenario 4: the dying holder's lease (JetStream rounds it up to whole seconds)")
	fs.IntVar(&c.expiryRounds, "expiry-rounds", 3, "scenario 4: rounds per target, one at a time and then at once (97 ms apart) on distinct keys")
	fs.IntVar(&c.expiryBusy, "expiry-busy", 100, "scenario 4: leases of 1s taken per second and left to expire during the busy-bucket rounds (0: skip them)")
	fs.IntVar(&c.scaleLocks, "scale-locks", 100_000, "scenario 5: locks held")
	fs.IntVar(&c.scaleWaiters, "scale-waiters", 10_000, "scenario 5: parked waiters (on distinct held keys)")
	fs.DurationVar(&c.scaleTimeout, "scale-timeout", 3*time.Minute, "scenario 5: bound on each target's run")
	fs.DurationVar(&c.redislockBackoff, "redislock-backoff", time.Millisecond, "redislock's retry strategy: LinearBackoff(this)")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile per scenario and target to PREFIX-<scenario>-<target>.pprof")
	fs.StringVar(&c.serviceConn, "service-conn", "inprocess", "how the lockservice instances connect to the embedded nats-server: inprocess (net.Pipe, as embedded.Start and cmd/lockservice without --nats-url) or tcp (loopback, as with --nats-url)")
	fs.StringVar(&c.trace, "trace", "", "write an execution trace of the scenarios to this file (go tool trace)")
	fs.StringVar(&c.dataDir, "data-dir", "", "JetStream data directory (default: a temporary one, removed at exit)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	c.scenarios = map[int]bool{}
	for _, s := range strings.Split(scen, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > 5 {
			return nil, fmt.Errorf("-scenarios: %q is not a scenario 1-5", s)
		}
		c.scenarios[n] = true
	}
	c.targets = map[string]bool{}
	for _, s := range strings.Split(targets, ",") {
		t, ok := targetAliases[strings.TrimSpace(s)]
		if !ok {
			return nil, fmt.Errorf("-targets: unknown target %q (want jetstream, redis, redislock, redsync)", s)
		}
		c.targets[t] = true
	}
	switch {
	case c.duration <= 0 || c.hold < 0 || c.ttl < time.Second || c.expiryTTL < time.Millisecond:
		return nil, errors.New("-duration must be positive, -hold not negative, -ttl at least 1s, -expiry-ttl at least 1ms")
	case c.clients < 1 || c.hotClients < 2 || c.expiryRounds < 1 || c.scaleLocks < 1 || c.scaleWaiters < 0 || c.scaleWaiters > c.scaleLocks:
		return nil, errors.New("-clients, -expiry-rounds and -scale-locks must be at least 1, -hot-clients at least 2, -scale-waiters between 0 and -scale-locks")
	case c.serviceConn != "inprocess" && c.serviceConn != "tcp":
		return nil, fmt.Errorf("-service-conn must be inprocess or tcp, got %q", c.serviceConn)
	case c.redislockBackoff <= 0:
		return nil, errors.New("-redislock-backoff must be positive")
	}
	return c, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "lockbench: "+format+"\n", a...) }
	env, err := setup(ctx, cfg, logf)
	if err != nil {
		return err
	}
	defer env.close()

	res := newResults()
	res.machine = machineInfo(env)
	b := &bench{cfg: cfg, env: env, res: res, logf: logf}
	steps := []struct {
		n  int
		fn func(context.Context) error
	}{
		{1, b.scenario1}, {2, b.scenario2}, {3, b.scenario3}, {4, b.scenario4}, {5, b.scenario5},
	}
	if cfg.trace != "" {
		f, err := os.Create(cfg.trace)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		defer trace.Stop()
	}
	for _, s := range steps {
		if !cfg.scenarios[s.n] {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		logf("scenario %d ...", s.n)
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("scenario %d: %w", s.n, err)
		}
		logf("scenario %d done in %v", s.n, time.Since(start).Round(time.Millisecond))
	}
	res.print(stdout, cfg)
	return nil
}
