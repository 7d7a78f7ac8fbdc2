package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"
	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/embedded"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	"github.com/lockservice/lockservice/service/api"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
	redisstore "github.com/lockservice/lockservice/store/redis"
)

// env is what the scenarios run against.
type env struct {
	srv      *embedded.Server // nats-server + lockservice on JetStream (prefix "lock")
	jsSvc    *service.Service // the measured JetStream instance
	jsPrefix string
	jsNC     *nats.Conn       // with -service-conn tcp: the JetStream service's connection
	jsStore  *jsstore.Store   // the measured instance's store
	redisSvc *service.Service // lockservice on Redis (prefix "lockr")
	redisNC  *nats.Conn       // the Redis service's connection
	storeRDB *goredis.Client  // the Redis store's client
	redis    *testsrv.Redis   // nil with -redis-url
	redisOpt *goredis.Options // for peer clients
	tempDir  string
}

const redisPrefix = "lockr"

func setup(ctx context.Context, cfg *config, logf func(string, ...any)) (_ *env, err error) {
	e := &env{}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.tempDir, err = os.MkdirTemp("", "lockbench-"); err != nil {
		return nil, err
	}
	dataDir := cfg.dataDir
	if dataDir == "" {
		dataDir = filepath.Join(e.tempDir, "jetstream")
	}
	if e.srv, err = embedded.Start(embedded.WithDataDir(dataDir)); err != nil {
		return nil, fmt.Errorf("embedded lockservice: %w", err)
	}
	logf("embedded nats-server + lockservice (JetStream) at %s", e.srv.URL)
	e.jsSvc, e.jsPrefix, e.jsStore = e.srv.Service(), api.DefaultPrefix, e.srv.Store()
	// serviceConn connects a service instance: in-process (net.Pipe), as
	// embedded.Start and cmd/lockservice without --nats-url do, or over
	// TCP loopback, as cmd/lockservice --nats-url does. NoEcho, as both do.
	serviceConn := func(name string) (*nats.Conn, error) {
		if cfg.serviceConn == "tcp" {
			return e.natsConn(name, nats.NoEcho())
		}
		return e.srv.Connect(nats.Name(name), nats.NoEcho())
	}
	if cfg.serviceConn == "tcp" {
		// The embedded instance stays idle; a second JetStream instance on
		// its own bucket serves the benchmark over TCP.
		if e.jsNC, err = serviceConn("lockbench-js-service"); err != nil {
			return nil, err
		}
		jctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		e.jsStore, err = jsstore.New(jctx, e.jsNC, jsstore.Config{Bucket: "lockbench"})
		cancel()
		if err != nil {
			return nil, err
		}
		e.jsPrefix = "lockj"
		if e.jsSvc, err = service.New(e.jsNC, e.jsStore, service.Config{Prefix: e.jsPrefix}); err != nil {
			e.jsSvc = nil
			return nil, err
		}
	}

	redisURL := cfg.redisURL
	if redisURL == "" {
		if e.redis, err = testsrv.LaunchRedis(filepath.Join(e.tempDir, "redis"), false); err != nil {
			return nil, err
		}
		redisURL = "redis://" + e.redis.Addr + "/0"
		logf("redis-server pid %d at %s", e.redis.Pid(), e.redis.Addr)
	}
	if e.redisOpt, err = goredis.ParseURL(redisURL); err != nil {
		return nil, fmt.Errorf("-redis-url %q: %w", redisURL, err)
	}
	// The store's client as cmd/lockservice makes it: go-redis defaults,
	// retries off.
	so := *e.redisOpt
	so.MaxRetries = -1
	e.storeRDB = goredis.NewClient(&so)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := redisstore.New(sctx, e.storeRDB, redisstore.Config{Namespace: "lockbench"})
	if err != nil {
		return nil, err
	}
	if e.redisNC, err = serviceConn("lockbench-redis-service"); err != nil {
		return nil, err
	}
	if e.redisSvc, err = service.New(e.redisNC, st, service.Config{Prefix: redisPrefix, Metadata: map[string]string{"store": "redis"}}); err != nil {
		return nil, err
	}
	return e, nil
}

func (e *env) close() {
	if e.jsNC != nil {
		if e.jsSvc != nil {
			e.jsSvc.Stop()
		}
		if e.jsStore != nil {
			e.jsStore.Close()
		}
		e.jsNC.Close()
	}
	if e.redisSvc != nil {
		e.redisSvc.Stop()
	}
	if e.redisNC != nil {
		e.redisNC.Close()
	}
	if e.storeRDB != nil {
		e.storeRDB.Close()
	}
	if e.srv != nil {
		e.srv.Close()
	}
	if e.redis != nil {
		e.redis.Kill()
	}
	if e.tempDir != "" {
		os.RemoveAll(e.tempDir)
	}
}

// natsConn opens a client connection over TCP loopback, as a client process
// would have.
func (e *env) natsConn(name string, opts ...nats.Option) (*nats.Conn, error) {
	return nats.Connect(e.srv.URL, append([]nats.Option{nats.Name(name), nats.MaxReconnects(-1)}, opts...)...)
}

// peerRedis returns a go-redis client with the library defaults, for one
// simulated peer client.
func (e *env) peerRedis() *goredis.Client {
	o := *e.redisOpt
	return goredis.NewClient(&o)
}
