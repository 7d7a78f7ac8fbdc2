package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/lockservice/lockservice/service"
)

// opsConfig holds the flags of serve about operating it (log, metrics,
// health, version), and which flags were set.
type opsConfig struct {
	logFormat, logLevel string
	metricsAddr         string
	version             bool
	flags               *flag.FlagSet
	// explicit names the flags set on the command line or by a variable.
	explicit map[string]bool
	// fromEnv names the flags set by their LOCKSERVICE_ variable.
	fromEnv map[string]bool
}

// register adds the flags of o, and of the service's settings that are
// about operating it, to fs.
func (o *opsConfig) register(fs *flag.FlagSet, svc *service.Config) {
	d := service.DefaultConfig()
	fs.StringVar(&o.logFormat, "log-format", "text", "log format on stderr: text or json (json also drops the start banner on stdout)")
	fs.StringVar(&o.logLevel, "log-level", "info", "lowest level logged: debug, info, warn or error")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address, e.g. :9464 (empty: off)")
	fs.DurationVar(&svc.HealthInterval, "health-interval", d.HealthInterval, "log a repeated store error or overload once per interval; /readyz asks the store when it has not answered for this long")
	fs.DurationVar(&svc.StoreTimeout, "store-timeout", d.StoreTimeout, "longest store operation; a longer one fails with 503 (outcome unknown)")
	fs.IntVar(&svc.MaxInflight, "max-inflight", d.MaxInflight, "store operations in progress per instance before 503")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
}

// parsed takes the flags of fs not given on the command line from the
// environment, remembers what was set, and checks o's flags.
func (o *opsConfig) parsed(fs *flag.FlagSet) error {
	onCommandLine := explicitFlags(fs)
	if err := applyEnv(fs, os.LookupEnv); err != nil {
		return err
	}
	o.flags = fs
	o.explicit = explicitFlags(fs)
	o.fromEnv = map[string]bool{}
	for name := range o.explicit {
		o.fromEnv[name] = !onCommandLine[name]
	}
	if err := checkLogFlags(o.logFormat, o.logLevel, o.setting); err != nil {
		return err
	}
	return checkNotNegative(fs, o.setting)
}

// setting names flag name for a message about its value: "--max-ttl", or
// "LOCKSERVICE_MAX_TTL (--max-ttl)" when its variable set it.
func (o *opsConfig) setting(name string) string {
	flag := "-" + dashes(name)
	if o.fromEnv[name] {
		return envName(name) + " (" + flag + ")"
	}
	return flag
}

// canBeNegative lists the number flags with a meaning below zero:
// nats-server's port -1 picks a free one.
var canBeNegative = map[string]bool{"port": true}

// checkNotNegative refuses a negative duration or count in a flag of fs,
// naming it with setting.
func checkNotNegative(fs *flag.FlagSet, setting func(string) string) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		g, ok := f.Value.(flag.Getter)
		if err != nil || !ok || canBeNegative[f.Name] {
			return
		}
		negative := false
		switch v := g.Get().(type) {
		case time.Duration:
			negative = v < 0
		case int:
			negative = v < 0
		case int64:
			negative = v < 0
		}
		if negative {
			err = fmt.Errorf("%s must not be negative, got %s", setting(f.Name), f.Value)
		}
	})
	return err
}

// embeddedListen is the embedded server's listen address when --host or
// --port is set: with -c, the one not set keeps the config file's value
// (nats-server's default when the file has none: "" and 0), not the
// flag's default.
func embeddedListen(c *config) (host string, port int, err error) {
	host, port = c.host, c.port
	if c.confFile == "" || (c.ops.explicit["host"] && c.ops.explicit["port"]) {
		return host, port, nil
	}
	opts, err := server.ProcessConfigFile(c.confFile)
	if err != nil {
		return "", 0, fmt.Errorf("-c %s: %w", c.confFile, err)
	}
	if !c.ops.explicit["host"] {
		host = opts.Host
	}
	if !c.ops.explicit["port"] {
		port = opts.Port
	}
	return host, port, nil
}
