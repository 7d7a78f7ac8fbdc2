package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	redsyncgoredis "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/nats-io/nats.go"
	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/client"
)

// locker is one simulated client of a target, with its own connection.
type locker interface {
	// try takes key once, without waiting. ttl 0 is the target's lease
	// in this run (-ttl; redsync: its default 8s).
	try(ctx context.Context, key string, ttl time.Duration) (unlock, error)
	// acquire waits for key with the target's usual strategy until it is
	// taken or ctx ends.
	acquire(ctx context.Context, key string, ttl time.Duration) (unlock, error)
	close()
}

// unlock releases a held lock.
type unlock func(ctx context.Context) error

func (b *bench) newLocker(target, name string) (locker, error) {
	switch target {
	case tJetStream, tRedis:
		nc, err := b.env.natsConn("lockbench-" + name)
		if err != nil {
			return nil, err
		}
		opts := []client.Option{client.WithPrefix(b.env.jsPrefix)}
		if target == tRedis {
			opts = []client.Option{client.WithPrefix(redisPrefix)}
		}
		c, err := client.New(nc, opts...)
		if err != nil {
			nc.Close()
			return nil, err
		}
		return &svcLocker{nc: nc, c: c, ttl: b.cfg.ttl}, nil
	case tRedislock:
		rdb := b.env.peerRedis()
		return &redislockLocker{rdb: rdb, c: redislock.New(rdb), ttl: b.cfg.ttl, backoff: b.cfg.redislockBackoff}, nil
	case tRedsync:
		rdb := b.env.peerRedis()
		return &redsyncLocker{rdb: rdb, rs: redsync.New(redsyncgoredis.NewPool(rdb))}, nil
	}
	return nil, fmt.Errorf("no locker for target %q", target)
}

// svcLocker is a lockservice Go client on its own NATS connection.
type svcLocker struct {
	nc  *nats.Conn
	c   *client.Client
	ttl time.Duration
}

func (l *svcLocker) lease(ttl time.Duration) client.AcquireOption {
	if ttl == 0 {
		ttl = l.ttl
	}
	return client.WithTTL(ttl)
}

func (l *svcLocker) try(ctx context.Context, key string, ttl time.Duration) (unlock, error) {
	lk, err := l.c.TryAcquire(ctx, key, l.lease(ttl))
	if err != nil {
		return nil, err
	}
	return lk.Release, nil
}

// acquire parks the request on the service, which grants it when a release
// or an expiry wakes it (pushed, no polling).
func (l *svcLocker) acquire(ctx context.Context, key string, ttl time.Duration) (unlock, error) {
	lk, err := l.c.Acquire(ctx, key, l.lease(ttl))
	if err != nil {
		return nil, err
	}
	return lk.Release, nil
}

func (l *svcLocker) close() { l.nc.Close() }

// redislockLocker is bsm/redislock on its own go-redis client (library
// defaults). It waits by polling: RetryStrategy LinearBackoff(backoff)
// until ctx ends.
type redislockLocker struct {
	rdb     *goredis.Client
	c       *redislock.Client
	ttl     time.Duration
	backoff time.Duration
}

func (l *redislockLocker) obtain(ctx context.Context, key string, ttl time.Duration, opt *redislock.Options) (unlock, error) {
	if ttl == 0 {
		ttl = l.ttl
	}
	lk, err := l.c.Obtain(ctx, key, ttl, opt)
	if err != nil {
		return nil, err
	}
	return lk.Release, nil
}

func (l *redislockLocker) try(ctx context.Context, key string, ttl time.Duration) (unlock, error) {
	return l.obtain(ctx, key, ttl, nil)
}

func (l *redislockLocker) acquire(ctx context.Context, key string, ttl time.Duration) (unlock, error) {
	return l.obtain(ctx, key, ttl, &redislock.Options{RetryStrategy: redislock.LinearBackoff(l.backoff)})
}

func (l *redislockLocker) close() { l.rdb.Close() }

// redsyncLocker is go-redsync on one pool (its own go-redis client) with
// default options: expiry 8s, 32 tries, a random 50-250 ms delay between
// tries. A Lock that runs out of tries (ErrFailed) is called again until
// ctx ends, as an application that must get the lock would.
type redsyncLocker struct {
	rdb *goredis.Client
	rs  *redsync.Redsync
}

func (l *redsyncLocker) mutex(key string, ttl time.Duration) *redsync.Mutex {
	if ttl == 0 {
		return l.rs.NewMutex(key)
	}
	return l.rs.NewMutex(key, redsync.WithExpiry(ttl))
}

func redsyncUnlock(m *redsync.Mutex) unlock {
	return func(ctx context.Context) error {
		ok, err := m.UnlockContext(ctx)
		if err == nil && !ok {
			err = errors.New("redsync: unlock: not held")
		}
		return err
	}
}

func (l *redsyncLocker) try(ctx context.Context, key string, ttl time.Duration) (unlock, error) {
	m := l.mutex(key, ttl)
	if err := m.TryLockContext(ctx); err != nil {
		return nil, err
	}
	return redsyncUnlock(m), nil
}

func (l *redsyncLocker) acquire(ctx context.Context, key string, ttl time.Duration) (unlock, error) {
	for {
		m := l.mutex(key, ttl)
		err := m.LockContext(ctx)
		if err == nil {
			return redsyncUnlock(m), nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var taken *redsync.ErrTaken
		var nodeTaken *redsync.ErrNodeTaken
		if !errors.Is(err, redsync.ErrFailed) && !errors.As(err, &taken) && !errors.As(err, &nodeTaken) {
			return nil, err
		}
	}
}

func (l *redsyncLocker) close() { l.rdb.Close() }
