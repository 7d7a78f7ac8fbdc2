// Package embedded runs a nats-server with JetStream and the lock service in
// the current process, for demos and for tests of programs that use locks.
// It is shaped like net/http/httptest:
//
//	srv, err := embedded.Start(embedded.WithDataDir(t.TempDir()))
//	if err != nil { ... }
//	defer srv.Close()
//	c, err := client.New(srv.Conn())
//
// Startup takes a few milliseconds.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// Server is a running nats-server with the lock service attached.
type Server struct {
	ns      *server.Server
	nc      *nats.Conn // for the user's clients (Conn)
	svcNC   *nats.Conn // the service's and the store's own, NoEcho
	svc     *service.Service
	store   *jsstore.Store
	tempDir string
	dataDir string   // absolute
	dirLock *dirLock // on the data directory, held until Close
	// URL is the client URL (nats://host:port), empty with WithoutListener.
	URL string
}

type options struct {
	host       string
	port       int
	dataDir    string
	noListen   bool
	configFile string
	svc        service.Config
	store      jsstore.Config
	custom     store.Store
	logger     *slog.Logger
}

// Option configures Start.
type Option func(*options)

// WithDataDir stores JetStream data in dir (kept after Close). The default is
// a temporary directory removed by Close. Start locks the directory (see
// LockFileName) until Close: one directory serves one Server at a time.
func WithDataDir(dir string) Option { return func(o *options) { o.dataDir = dir } }

// WithListen sets the client address; the default is 127.0.0.1 on a random
// free port.
func WithListen(host string, port int) Option {
	return func(o *options) { o.host, o.port = host, port }
}

// WithoutListener runs without a TCP listener; only Conn and in-process
// connections (nats.InProcessServer(srv.NATSServer())) reach the server.
func WithoutListener() Option { return func(o *options) { o.noListen = true } }

// WithConfigFile loads nats-server settings from a nats.conf file. Listen
// and data dir options given to Start override the file.
func WithConfigFile(path string) Option { return func(o *options) { o.configFile = path } }

// WithServiceConfig sets the lock service's configuration.
func WithServiceConfig(cfg service.Config) Option { return func(o *options) { o.svc = cfg } }

// WithStoreConfig sets the JetStream store's configuration.
func WithStoreConfig(cfg jsstore.Config) Option { return func(o *options) { o.store = cfg } }

// WithStore serves locks from st (for example a Redis store) instead of
// the embedded server's JetStream. st stays the caller's to close.
func WithStore(st store.Store) Option { return func(o *options) { o.custom = st } }

// WithLogger sends nats-server's log to l, warnings and errors at their
// level and notices (its start-up report) at debug, with the attribute
// component=nats-server. l is also the Logger of the service and of the
// JetStream store when WithServiceConfig and WithStoreConfig set none.
// The default is silence.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// ErrPortInUse is returned by Start when the listen address is taken.
var ErrPortInUse = errors.New("embedded: address already in use")

// Start starts nats-server and the lock service. It returns ErrPortInUse when
// the listen port is taken, and an error matching ErrDataDirInUse (a
// *DataDirInUseError naming the holder) when another process or Server runs
// on the data directory, whether given by WithDataDir or by the config
// file's jetstream store_dir.
func Start(opts ...Option) (*Server, error) {
	o := options{host: "127.0.0.1", port: -1}
	for _, opt := range opts {
		opt(&o)
	}
	sopts := &server.Options{}
	if o.configFile != "" {
		var err error
		if sopts, err = server.ProcessConfigFile(o.configFile); err != nil {
			return nil, fmt.Errorf("embedded: config %s: %w", o.configFile, err)
		}
	}
	explicitListen := o.host != "127.0.0.1" || o.port != -1
	if o.configFile == "" || explicitListen {
		sopts.Host, sopts.Port = o.host, o.port
	}
	if sopts.ServerName == "" {
		sopts.ServerName = "lockservice-embedded"
	}
	sopts.JetStream = true
	sopts.NoSigs = true
	sopts.NoLog = o.logger == nil
	sopts.DontListen = o.noListen
	srv := &Server{}
	switch {
	case o.dataDir != "":
		sopts.StoreDir = o.dataDir
	case sopts.StoreDir == "":
		dir, err := os.MkdirTemp("", "lockservice-embedded-")
		if err != nil {
			return nil, fmt.Errorf("embedded: %w", err)
		}
		srv.tempDir = dir
		sopts.StoreDir = dir
	}
	// nats-server keeps its JetStream files in StoreDir/jetstream; the
	// lock is on StoreDir itself, the directory the user named. Two servers
	// on one directory would each run the bucket from the same files and
	// grant the same lock with the same token.
	var err error
	if srv.dataDir, err = filepath.Abs(sopts.StoreDir); err != nil {
		srv.removeTemp()
		return nil, fmt.Errorf("embedded: data directory %s: %w", sopts.StoreDir, err)
	}
	if srv.dirLock, err = lockDataDir(sopts.StoreDir); err != nil {
		srv.removeTemp()
		return nil, err
	}
	if !o.noListen && sopts.Port > 0 {
		addr := net.JoinHostPort(sopts.Host, strconv.Itoa(sopts.Port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			srv.Close()
			return nil, fmt.Errorf("%w: %s: %w", ErrPortInUse, addr, err)
		}
		ln.Close()
	}
	ns, err := server.NewServer(sopts)
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("embedded: nats-server: %w", err)
	}
	if o.logger != nil {
		ns.SetLogger(natsLogger{o.logger.With(slog.String("component", "nats-server"))}, false, false)
		if o.svc.Logger == nil {
			o.svc.Logger = o.logger
		}
		if o.store.Logger == nil {
			o.store.Logger = o.logger.With(slog.String("component", "store"))
		}
	}
	srv.ns = ns
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		srv.Close()
		return nil, errors.New("embedded: nats-server not ready after 10s")
	}
	if !o.noListen {
		srv.URL = ns.ClientURL()
	}
	if err := srv.dirLock.record(srv.URL); err != nil {
		srv.Close()
		return nil, err
	}
	// The service gets a connection of its own with NoEcho: its events are
	// not delivered back to it (it would drop them). Clients get another,
	// since NoEcho would also hide the service from requests sent on it.
	srv.svcNC, err = nats.Connect("", nats.InProcessServer(ns), nats.Name("lockservice-embedded"), nats.NoEcho())
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("embedded: connect: %w", err)
	}
	srv.nc, err = nats.Connect("", nats.InProcessServer(ns), nats.Name("lockservice-embedded-clients"))
	if err != nil {
		srv.Close()
		return nil, fmt.Errorf("embedded: connect: %w", err)
	}
	var st store.Store = o.custom
	if st == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if o.store.MarkerTTL == 0 {
			// Markers must outlive the longest lease the service grants,
			// with the lock-delay every acquire gets by default.
			o.store.MarkerTTL = max(o.svc.MaxTTL, jsstore.DefaultMarkerTTL)
			if o.svc.LockDelay > 0 {
				o.store.MarkerTTL = jsstore.MarkerTTLFor(o.store.MarkerTTL, o.svc.LockDelay)
			}
		}
		srv.store, err = jsstore.New(ctx, srv.svcNC, o.store)
		if err != nil {
			srv.Close()
			return nil, err
		}
		st = srv.store
	}
	srv.svc, err = service.New(srv.svcNC, st, o.svc)
	if err != nil {
		srv.Close()
		return nil, err
	}
	return srv, nil
}

// Conn returns an in-process connection for clients, opened by Start and
// closed by Close (do not close it yourself). The service has its own.
func (s *Server) Conn() *nats.Conn { return s.nc }

// Store returns the JetStream store of the service, or nil when Start was
// given WithStore.
func (s *Server) Store() *jsstore.Store { return s.store }

// DataDir returns the JetStream data directory the server uses, absolute:
// WithDataDir's, else the config file's jetstream store_dir, else the
// temporary directory Close removes. nats-server keeps its files in its
// jetstream subdirectory.
func (s *Server) DataDir() string { return s.dataDir }

// NATSServer returns the embedded nats-server.
func (s *Server) NATSServer() *server.Server { return s.ns }

// Service returns the lock service.
func (s *Server) Service() *service.Service { return s.svc }

// Connect opens a new in-process connection to the server, closed by the
// caller.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect("", append([]nats.Option{nats.InProcessServer(s.ns)}, opts...)...)
}

// Close stops the service (parked waiters get 503), the store, the
// connection and nats-server, unlocks the data directory and removes a
// temporary one.
func (s *Server) Close() error {
	if s.svc != nil {
		s.svc.Stop()
	}
	if s.store != nil {
		s.store.Close()
	}
	if s.nc != nil {
		s.nc.Close()
	}
	if s.svcNC != nil {
		s.svcNC.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	s.dirLock.release()
	s.removeTemp()
	return nil
}

func (s *Server) removeTemp() {
	if s.tempDir != "" {
		os.RemoveAll(s.tempDir)
	}
}

// natsLogger is nats-server's logger writing to a slog.Logger.
type natsLogger struct{ l *slog.Logger }

func (n natsLogger) log(level slog.Level, format string, v []any) {
	if n.l.Enabled(context.Background(), level) {
		n.l.Log(context.Background(), level, fmt.Sprintf(format, v...))
	}
}

func (n natsLogger) Noticef(format string, v ...any) { n.log(slog.LevelDebug, format, v) }
func (n natsLogger) Warnf(format string, v ...any)   { n.log(slog.LevelWarn, format, v) }
func (n natsLogger) Errorf(format string, v ...any)  { n.log(slog.LevelError, format, v) }
func (n natsLogger) Fatalf(format string, v ...any)  { n.log(slog.LevelError, "fatal: "+format, v) }
func (n natsLogger) Debugf(format string, v ...any)  { n.log(slog.LevelDebug, format, v) }
func (n natsLogger) Tracef(format string, v ...any)  { n.log(slog.LevelDebug, format, v) }
