package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/embedded"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
	redisstore "github.com/lockservice/lockservice/store/redis"
)

type config struct {
	// --store-nats-creds, --store-nats-nkey, --store-nats-user,
	// --store-nats-password-file
	storeCreds, storeNkey, storeUser, storePasswordFile string
	natsFlags
	host, dataDir, confFile string
	port                    int
	account                 string
	allowNoAuth             bool
	maxStore                byteSize
	storeKind, bucket       string
	replicas                int
	bucketMaxMsgs           int64
	redisURL, redisMode     string
	redisReplicas           int
	redisAllowEviction      bool
	objectTTL, markerTTL    time.Duration
	svc                     service.Config
	ops                     opsConfig
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	d := service.DefaultConfig()
	fs := flag.NewFlagSet("lockservice", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "%s\nserve with no flags: an embedded nats-server with JetStream on 127.0.0.1:4222,\ndata in ./lockservice-data, locks on subjects lock.<op>.<key>.\n\nFlags of serve:\n", usageText)
		fs.PrintDefaults()
	}
	fs.StringVar(&c.host, "host", "127.0.0.1", "embedded nats-server: listen address")
	fs.IntVar(&c.port, "port", 4222, "embedded nats-server: client port")
	fs.StringVar(&c.dataDir, "data-dir", "lockservice-data", "embedded nats-server: JetStream data directory (with -c: the file's store_dir unless given); keep it, it holds the fencing-token sequence; locked (lockservice.lock) while in use")
	fs.StringVar(&c.confFile, "c", "", "embedded nats-server: nats.conf file (--host/--port/--data-dir given explicitly override it)")
	fs.StringVar(&c.account, "account", "", "embedded nats-server: the account of the config file whose users use the locks; the service's own user joins it (default: the one account the config's users are in, else the global account $G)")
	fs.BoolVar(&c.allowNoAuth, "allow-no-auth", false, "embedded nats-server: listen beyond loopback even though the config requires no authentication (anyone who reaches the port can take every lock)")
	c.maxStore = embedded.DefaultMaxStore
	fs.Var(&c.maxStore, "max-store", "embedded nats-server: JetStream storage cap (K, M, G, T: powers of 1024); overrides the config file's max_file_store")
	c.natsFlags.register(fs, "", "use this NATS instead of the embedded server: a URL, or a comma-separated list of a cluster's seed URLs; needs nats-server 2.12+ with JetStream")
	fs.StringVar(&c.storeCreds, "store-nats-creds", "", "credentials file of the NATS user for the store and the events (a user of their own, so that the service's may publish only answers: docs/HARDENING.md); default: the service's login")
	fs.StringVar(&c.storeNkey, "store-nats-nkey", "", "nkey seed file of the NATS user for the store and the events (see --store-nats-creds)")
	fs.StringVar(&c.storeUser, "store-nats-user", "", "NATS user for the store and the events (see --store-nats-creds); its password from --store-nats-password-file")
	fs.StringVar(&c.storePasswordFile, "store-nats-password-file", "", "file holding the password of --store-nats-user")
	fs.StringVar(&c.svc.Prefix, "prefix", d.Prefix, "first subject token of every endpoint and event")
	fs.DurationVar(&c.svc.DefaultTTL, "default-ttl", d.DefaultTTL, "lease length when a request gives no ttl_ms")
	fs.DurationVar(&c.svc.MaxTTL, "max-ttl", d.MaxTTL, "longest lease a request may ask for")
	fs.DurationVar(&c.svc.MaxWait, "max-wait", d.MaxWait, "longest wait_ms a request may ask for")
	fs.DurationVar(&c.svc.LockDelay, "lock-delay", d.LockDelay, "lock-delay of leases whose acquire gives no lock_delay_ms: after such a lease expires or is forced, nobody gets the key for this long (a release hands over at once); 0: none")
	fs.DurationVar(&c.svc.MaxLockDelay, "max-lock-delay", d.MaxLockDelay, "longest lock_delay_ms a request may ask for")
	fs.IntVar(&c.svc.MaxWaiters, "max-waiters", d.MaxWaiters, "parked acquire/wait requests per instance before 503")
	fs.IntVar(&c.svc.MaxWaitersPerKey, "max-waiters-per-key", d.MaxWaitersPerKey, "parked acquire/wait requests per key on an instance before 503")
	fs.IntVar(&c.svc.MaxValueBytes, "max-value-bytes", d.MaxValueBytes, "largest state object accepted")
	fs.DurationVar(&c.objectTTL, "object-ttl", 0, "state objects expire this long after their last write (0 = never)")
	fs.DurationVar(&c.markerTTL, "marker-ttl", 0, "jetstream: how long release and expiry markers stay (get reports the last token while they do); at least --max-ttl plus --lock-delay, which it defaults to (a marker must outlive the leases it ends: see docs/STORES.md)")
	fs.StringVar(&c.storeKind, "store", "jetstream", "where lock state lives: jetstream or redis")
	fs.StringVar(&c.bucket, "bucket", jsstore.DefaultBucket, "jetstream: KV bucket name (never delete it: tokens restart)")
	fs.IntVar(&c.replicas, "replicas", jsstore.DefaultReplicas, "jetstream: bucket replicas (3 or 5 on a cluster for fault tolerance)")
	fs.Int64Var(&c.bucketMaxMsgs, "bucket-max-msgs", 1_000_000, "jetstream: most messages a new bucket holds (one per key, one per state object; 0 = no limit); at the limit new keys get 503")
	fs.StringVar(&c.redisURL, "redis-url", "redis://127.0.0.1:6379/0", "redis: URL, redis:// or rediss:// (TLS), with user:password@ if needed")
	fs.StringVar(&c.redisMode, "redis-mode", "single", "redis: single, cluster (more nodes as &addr=host:port) or sentinel (?master_name=...&addr=...)")
	fs.IntVar(&c.redisReplicas, "redis-replicas", 0, "redis: replicas each write must reach (WAIT) before it is acknowledged")
	fs.BoolVar(&c.redisAllowEviction, "redis-allow-eviction", false, "redis: start even if maxmemory-policy is not noeviction or cannot be read (evicted leases mean two holders, evicted fence counters repeated tokens)")
	c.ops.register(fs, &c.svc)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := c.ops.parsed(fs); err != nil {
		return nil, err
	}
	c.natsFlags.fromEnvironment()
	if c.ops.version {
		return c, nil
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (flags start with -; the commands are serve, lock, get and ls)", fs.Arg(0))
	}
	if c.storeKind != "jetstream" && c.storeKind != "redis" {
		return nil, fmt.Errorf("%s must be jetstream or redis, got %q", c.ops.setting("store"), c.storeKind)
	}
	if c.storeKind == "redis" && c.redisMode != "single" && c.redisMode != "cluster" && c.redisMode != "sentinel" {
		return nil, fmt.Errorf("%s must be single, cluster or sentinel, got %q", c.ops.setting("redis-mode"), c.redisMode)
	}
	if c.port < -1 || c.port > 65535 {
		return nil, fmt.Errorf("%s must be a TCP port, 1 to 65535 (-1: any free port), got %d", c.ops.setting("port"), c.port)
	}
	if c.natsURL != "" {
		from, unset := c.ops.setting("nats-url"), "NATS_URL"
		switch {
		case !c.given("nats-url"):
			from = "$NATS_URL"
		case c.ops.fromEnv["nats-url"]:
			unset = envName("nats-url")
		}
		for _, name := range []string{"c", "host", "port", "data-dir", "account", "allow-no-auth", "max-store"} {
			if c.given(name) {
				return nil, fmt.Errorf("%s configures the embedded nats-server, but %s (%s) selects an existing NATS: drop one of them (unset %s to embed a server)", c.ops.setting(name), from, redactNATSURL(c.natsURL), unset)
			}
		}
	}
	c.svc.Metadata = map[string]string{"store": c.storeKind}
	c.svc.SetDefaults()
	if err := c.svc.Validate(); err != nil {
		return nil, err
	}
	if c.markerTTL == 0 {
		c.markerTTL = max(c.svc.MaxTTL, time.Second)
		if c.svc.LockDelay > 0 {
			// Every acquire that gives no lock_delay_ms gets --lock-delay:
			// the longest lease plus it must fit.
			c.markerTTL = jsstore.MarkerTTLFor(c.markerTTL, c.svc.LockDelay)
		}
	}
	if c.markerTTL < c.svc.MaxTTL || c.markerTTL < time.Second {
		return nil, fmt.Errorf("--marker-ttl must be at least --max-ttl (%v) and 1s, got %v: a release or expiry marker must outlive the longest lease, or a file store that loses removals in a crash can bring a lease back (docs/STORES.md)", c.svc.MaxTTL, c.markerTTL)
	}
	if need := jsstore.MarkerTTLFor(c.svc.MaxTTL, c.svc.LockDelay); c.svc.LockDelay > 0 && c.markerTTL < need {
		return nil, fmt.Errorf("--marker-ttl must be at least --max-ttl plus --lock-delay (%v, each rounded up to whole seconds), got %v: a lease message lives for its lease and its lock-delay, and every acquire without lock_delay_ms gets --lock-delay", need, c.markerTTL)
	}
	return c, nil
}

// serve runs the service until ctx ends.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if c.ops.version {
		_, err := fmt.Fprintln(stdout, versionText())
		return err
	}
	log := newLogger(stderr, c.ops.logFormat, c.ops.logLevel)
	c.svc.Logger = log
	if c.ops.logFormat == "json" {
		stdout = io.Discard // the banner is for people; the start line has it all
	}
	mon, err := startMonitor(c.ops.metricsAddr, log)
	if err != nil {
		return err
	}
	defer mon.close()
	c.svc.Observer = mon.observer()
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	var st store.Store
	var closeStore func()
	if c.storeKind == "redis" {
		useRedisLogger(log)
		rdb, err := redisClient(c.redisURL, c.redisMode)
		if err != nil {
			return err
		}
		defer rdb.Close()
		rs, err := redisstore.New(setupCtx, rdb, redisstore.Config{ObjectTTL: c.objectTTL, Replicas: c.redisReplicas, AllowEviction: c.redisAllowEviction})
		if errors.Is(err, redisstore.ErrEvictionPolicy) {
			return fmt.Errorf("redis at %s: %w (Config.AllowEviction is the flag --redis-allow-eviction)", redactURL(c.redisURL), err)
		}
		if err != nil {
			return fmt.Errorf("redis at %s: %w", redactURL(c.redisURL), err)
		}
		for _, w := range rs.Warnings() {
			log.Warn(w)
		}
		st, closeStore = rs, func() { rs.Close() }
		defer closeStore()
	}
	jsCfg := jsstore.Config{Bucket: c.bucket, Replicas: c.replicas, ObjectTTL: c.objectTTL, MarkerTTL: c.markerTTL, MaxMsgs: c.bucketMaxMsgs,
		// Records lockservice did not write, leases the server failed to
		// expire, watcher rebuilds.
		Logger: log.With(slog.String("component", "store"))}

	if c.natsURL == "" {
		opts := []embedded.Option{embedded.WithServiceConfig(c.svc), embedded.WithStoreConfig(jsCfg), embedded.WithLogger(log), embedded.WithAccount(c.account)}
		if c.confFile != "" {
			opts = append(opts, embedded.WithConfigFile(c.confFile))
		}
		explicit := c.ops.explicit
		if c.confFile == "" || explicit["max-store"] {
			opts = append(opts, embedded.WithMaxStore(int64(c.maxStore)))
		}
		if c.allowNoAuth {
			opts = append(opts, embedded.WithAllowNoAuth())
		}
		// NATS credentials given as flags (or LOCKSERVICE_* variables) are
		// the embedded service's own (a config that trusts operators needs
		// them); without, it logs in as a user generated at start.
		own := c.natsFlags.commandLineOnly()
		if own.ca != "" || own.cert != "" || own.key != "" {
			return errors.New("--nats-tls-ca, --nats-tls-cert and --nats-tls-key are for --nats-url: the embedded service connects in-process")
		}
		svcOpts, _, err := own.options(false)
		if err != nil {
			return err
		}
		opts = append(opts, embedded.WithServiceConnOptions(svcOpts...))
		if c.storeLogin() {
			sf := own
			sf.natsCreds, sf.nkey, sf.user, sf.passwordFile, sf.tokenFile = c.storeCreds, c.storeNkey, c.storeUser, c.storePasswordFile, ""
			storeOpts, _, err := sf.options(false)
			if err != nil {
				return fmt.Errorf("store login: %w", err)
			}
			opts = append(opts, embedded.WithStoreConnOptions(storeOpts...))
		}
		if c.confFile == "" || explicit["host"] || explicit["port"] {
			host, port, err := embeddedListen(c)
			if err != nil {
				return err
			}
			opts = append(opts, embedded.WithListen(host, port))
		}
		if c.confFile == "" || explicit["data-dir"] {
			opts = append(opts, embedded.WithDataDir(c.dataDir))
		}
		if st != nil {
			opts = append(opts, embedded.WithStore(st))
		}
		srv, err := embedded.Start(opts...)
		if errors.Is(err, embedded.ErrPortInUse) {
			return fmt.Errorf("port %d on %s is in use (another nats-server or lockservice?): pick another with --port, or use that server with --nats-url nats://%s:%d", c.port, c.host, c.host, c.port)
		}
		var inUse *embedded.DataDirInUseError
		if errors.As(err, &inUse) {
			return dataDirInUse(inUse, c, explicit["data-dir"])
		}
		if err != nil {
			return err
		}
		defer srv.Close()
		c.dataDir = srv.DataDir()
		mon.serving(srv.Service(), c.storeKind, c.svc.Prefix)
		logStarted(log, c, srv.URL, srv.Service().ID())
		fmt.Fprintf(stdout, "lockservice %s: embedded nats-server on %s (%s)\n", service.Version, srv.URL, storeLine(c))
		fmt.Fprintf(stdout, "try:  nats -s %s req %s.acquire.demo '{\"ttl_ms\":5000}'\n", srv.URL, c.svc.Prefix)
		fmt.Fprintf(stdout, "      nats -s %s micro info lockservice\n", srv.URL)
		if srv.AuthRequired() {
			fmt.Fprintf(stdout, "      (clients must authenticate: add a user of %s, e.g. --user U --password P, and --inbox-prefix if its permissions confine its inbox)\n", c.confFile)
		}
		<-ctx.Done()
		log.Info("shutting down")
		fmt.Fprintln(stdout, "lockservice: shutting down")
		return nil
	}

	// NoEcho: the instance's own events are not delivered back to it. The
	// connection is the instance's alone, so nothing else is hidden.
	c.natsFlags.warn = func(msg string) { log.Warn(msg) }
	nc, err := connectNATS(&c.natsFlags, "lockservice", append(natsLogOptions(log), nats.NoEcho())...)
	if errors.Is(err, errNATSUnreachable) {
		return fmt.Errorf("%w (is nats-server running? start one, or drop --nats-url and NATS_URL to use the embedded server)", err)
	}
	if err != nil {
		return err
	}
	defer nc.Close()
	// The store and the events on a connection of their own, as another
	// NATS user when one is given: the service's user then needs to
	// publish only answers, so that no reply subject a client chooses can
	// make it write anywhere else (docs/HARDENING.md).
	sf := c.natsFlags
	sf.warn = func(string) {} // the service's connection said them
	if c.storeLogin() {
		sf.natsCreds, sf.nkey, sf.user, sf.passwordFile, sf.tokenFile = c.storeCreds, c.storeNkey, c.storeUser, c.storePasswordFile, ""
		sf.explicitOnly = true
	}
	snc, err := connectNATS(&sf, "lockservice-store", storeNATSLogOptions(log)...)
	if err != nil {
		return fmt.Errorf("store connection: %w", err)
	}
	defer snc.Close()
	c.svc.EventConn = snc
	if st == nil {
		js, err := jsstore.New(setupCtx, snc, jsCfg)
		if err != nil {
			return err
		}
		defer js.Close()
		st = js
	}
	svc, err := service.New(nc, st, c.svc)
	if err != nil {
		return err
	}
	mon.serving(svc, c.storeKind, c.svc.Prefix)
	logStarted(log, c, connectedURL(nc), svc.ID())
	fmt.Fprintf(stdout, "lockservice %s: serving %s.<op>.<key> on %s (%s), instance %s\n", service.Version, c.svc.Prefix, connectedURL(nc), storeLine(c), svc.ID())
	<-ctx.Done()
	log.Info("shutting down")
	fmt.Fprintln(stdout, "lockservice: shutting down")
	return svc.Stop()
}

// dataDirInUse tells the operator which process has the data directory and
// what to do instead.
func dataDirInUse(e *embedded.DataDirInUseError, c *config, dataDirFlag bool) error {
	var who []string
	if e.PID > 0 {
		who = append(who, fmt.Sprintf("pid %d", e.PID))
	}
	if e.URL != "" {
		who = append(who, e.URL)
	}
	holder := "another lockservice"
	if len(who) > 0 {
		holder += " (" + strings.Join(who, ", ") + ")"
	}
	choose := "choose another --data-dir"
	if c.confFile != "" && !dataDirFlag {
		choose = "choose another jetstream store_dir in " + c.confFile + " (or --data-dir)"
	}
	msg := fmt.Sprintf("data directory %s is in use by %s; stop it or %s", e.Dir, holder, choose)
	if e.URL != "" {
		msg += fmt.Sprintf(", or run this instance against it with --nats-url %s", e.URL)
	}
	return errors.New(msg + " (two servers on one directory would both grant the same locks)")
}

func storeLine(c *config) string {
	if c.storeKind == "redis" {
		return fmt.Sprintf("store redis at %s", redactStoreURL(c.redisURL))
	}
	if c.natsURL == "" {
		return fmt.Sprintf("store jetstream bucket %s, data in %s", c.bucket, c.dataDir)
	}
	return fmt.Sprintf("store jetstream bucket %s, replicas %d", c.bucket, c.replicas)
}

func redisClient(rawURL, mode string) (goredis.UniversalClient, error) {
	switch mode {
	case "single":
		o, err := goredis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("--redis-url %q: %w (want redis://[user:password@]host:port/db or rediss:// for TLS)", redactURL(rawURL), urlError(err))
		}
		o.MaxRetries = -1 // a retried script could report an applied release as not held
		return goredis.NewClient(o), nil
	case "cluster":
		o, err := goredis.ParseClusterURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("--redis-url %q: %w (want redis://host:port?addr=host2:port2&addr=...)", redactURL(rawURL), urlError(err))
		}
		o.MaxRetries = -1
		return goredis.NewClusterClient(o), nil
	case "sentinel":
		o, err := goredis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("--redis-url %q: %w (want redis://sentinel:26379?master_name=mymaster&addr=sentinel2:26379)", redactURL(rawURL), urlError(err))
		}
		o.MaxRetries = -1
		return goredis.NewFailoverClient(o), nil
	}
	return nil, fmt.Errorf("--redis-mode must be single, cluster or sentinel, got %q", mode)
}

// byteSize is a flag of bytes: a number with an optional unit K, M, G or
// T (powers of 1024, as in nats.conf; KB, KiB, MB, ... mean the same).
type byteSize int64

func (b *byteSize) String() string {
	n := int64(*b)
	for i := 4; i > 0; i-- {
		if unit := int64(1) << (10 * i); n >= unit && n%unit == 0 {
			return strconv.FormatInt(n/unit, 10) + string("KMGT"[i-1])
		}
	}
	return strconv.FormatInt(n, 10)
}

func (b *byteSize) Set(s string) error {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult = 1 << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return fmt.Errorf("want a positive size such as 512M or 2G, got %q", s)
	}
	*b = byteSize(n * mult)
	return nil
}

// storeLogin reports whether the store and the events log in as a user of
// their own.
func (c *config) storeLogin() bool {
	return c.storeCreds != "" || c.storeNkey != "" || c.storeUser != ""
}
