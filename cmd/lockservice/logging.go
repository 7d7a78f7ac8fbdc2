package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"
	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/service"
)

// serve logs on stderr through one slog handler (--log-format,
// --log-level): its own start and stop, the service's lines (store errors
// and recovery, overload; see service/logging.go), the NATS connection's
// disconnects and reconnects, the store's warnings, and nats-server's
// warnings and errors when it is embedded.

// newLogger returns the logger of --log-format and --log-level, writing to
// w. The flags were checked by checkLogFlags.
func newLogger(w io.Writer, format, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// checkLogFlags checks --log-format and --log-level; setting names a flag
// in the error (opsConfig.setting).
func checkLogFlags(format, level string, setting func(string) string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("%s must be text or json, got %q", setting("log-format"), format)
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("%s must be debug, info, warn or error, got %q", setting("log-level"), level)
	}
	return nil
}

// natsLogOptions log the service's NATS connection: disconnects (WARN),
// reconnects and the close (INFO), asynchronous errors such as a slow
// consumer (ERROR).
func natsLogOptions(log *slog.Logger) []nats.Option {
	return natsConnLog(log, slog.LevelWarn, slog.LevelInfo)
}

// storeNATSLogOptions are natsLogOptions for the store's connection, to
// the same servers: its disconnects and reconnects at debug level (the
// service's connection reports them), its errors as errors.
func storeNATSLogOptions(log *slog.Logger) []nats.Option {
	return natsConnLog(log.With(slog.String("conn", "store")), slog.LevelDebug, slog.LevelDebug)
}

func natsConnLog(log *slog.Logger, down, up slog.Level) []nats.Option {
	ctx := context.Background()
	return []nats.Option{
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsClosed() {
				return // closed by Close: ClosedHandler says so
			}
			log.Log(ctx, down, "NATS disconnected: reconnecting", slog.Any("err", err))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Log(ctx, up, "NATS reconnected", slog.String("url", connectedURL(nc)), slog.String("server", nc.ConnectedServerName()))
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Log(ctx, up, "NATS connection closed") }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			attrs := []any{slog.Any("err", err)}
			if sub != nil {
				attrs = append(attrs, slog.String("subject", sub.Subject))
			}
			log.Error("NATS error", attrs...)
		}),
	}
}

// redisLogger takes go-redis's own log lines (a failed dial, once per
// request during an outage) to debug level: the service logs the store's
// failures once per cause per --health-interval.
type redisLogger struct{ log *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	if r.log.Enabled(ctx, slog.LevelDebug) {
		r.log.Debug(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
	}
}

// useRedisLogger sends go-redis's log (process-wide: the library has one)
// to log.
func useRedisLogger(log *slog.Logger) {
	goredis.SetLogger(redisLogger{log.With(slog.String("component", "go-redis"))})
}

// redactStoreURL is rawURL with its password, and any query parameter
// whose name contains "password", replaced by xxxxx.
func redactStoreURL(rawURL string) string {
	s := redactURL(rawURL)
	u, err := url.Parse(s)
	if err != nil || u.RawQuery == "" {
		return s
	}
	q := u.Query()
	changed := false
	for k := range q {
		if strings.Contains(strings.ToLower(k), "password") {
			q[k] = []string{"xxxxx"}
			changed = true
		}
	}
	if !changed {
		return s
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// logStarted logs the instance's settings once it serves: where (the NATS
// URL, the data directory), the store, the prefix and the limits.
func logStarted(log *slog.Logger, c *config, natsURL, instance string) {
	attrs := []any{
		slog.String("version", service.Version),
		slog.String("instance", instance),
		slog.String("nats", natsURL),
		slog.String("prefix", c.svc.Prefix),
		slog.String("store", c.storeKind),
	}
	if c.storeKind == "redis" {
		attrs = append(attrs, slog.String("redis", redactStoreURL(c.redisURL)), slog.String("redis_mode", c.redisMode),
			slog.Int("redis_replicas", c.redisReplicas))
	} else {
		attrs = append(attrs, slog.String("bucket", c.bucket), slog.Int("replicas", c.replicas), slog.Duration("marker_ttl", c.markerTTL))
	}
	if c.natsURL == "" {
		attrs = append(attrs, slog.String("data_dir", c.dataDir))
	}
	attrs = append(attrs,
		slog.Duration("default_ttl", c.svc.DefaultTTL), slog.Duration("max_ttl", c.svc.MaxTTL),
		slog.Duration("max_wait", c.svc.MaxWait), slog.Duration("object_ttl", c.objectTTL),
		slog.Int("max_waiters", c.svc.MaxWaiters), slog.Int("max_waiters_per_key", c.svc.MaxWaitersPerKey),
		slog.Int("max_inflight", c.svc.MaxInflight), slog.Int("max_value_bytes", c.svc.MaxValueBytes),
		slog.Duration("store_timeout", c.svc.StoreTimeout), slog.Duration("health_interval", c.svc.HealthInterval),
		slog.String("metrics_addr", c.ops.metricsAddr))
	log.Info("started", attrs...)
}
