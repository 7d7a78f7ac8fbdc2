package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/store"
)

// ErrEvictionPolicy means New refused a Redis node whose maxmemory-policy
// is not noeviction, or whose policy it could not read (CONFIG GET
// refused). Config.AllowEviction turns the refusal into a warning.
var ErrEvictionPolicy = errors.New("redis: maxmemory-policy must be noeviction")

// nodeSettings are the server settings New reads on one node.
type nodeSettings struct {
	addr                     string
	policy, appendonly, save string
	refused                  error // CONFIG GET answered with an error reply
	err                      error // the node could not be asked
}

// checkServer reads the eviction policy and persistence settings of every
// node that takes writes: the client's server (for a Sentinel client, the
// current master), every Cluster master, every Ring shard. It returns an
// error for a policy that can evict lock keys (unless AllowEviction) and
// warnings for the risks it lets through.
func (s *Store) checkServer(ctx context.Context) (warnings []string, err error) {
	var (
		mu    sync.Mutex
		nodes []nodeSettings
	)
	read := func(ctx context.Context, c *goredis.Client) error {
		n := readSettings(ctx, c, c.Options().Addr)
		mu.Lock()
		nodes = append(nodes, n)
		mu.Unlock()
		return nil
	}
	switch c := s.rdb.(type) {
	case *goredis.Client:
		nodes = append(nodes, readSettings(ctx, c, nodeAddr(ctx, c.Options().Addr, c)))
	case *goredis.ClusterClient:
		err = c.ForEachMaster(ctx, read)
	case *goredis.Ring:
		err = c.ForEachShard(ctx, read)
	default:
		nodes = append(nodes, readSettings(ctx, c, addrOf(c)))
	}
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: redis at %s: list the nodes to check: %w", store.ErrUnavailable, addrOf(s.rdb), err)
	}
	slices.SortFunc(nodes, func(a, b nodeSettings) int { return strings.Compare(a.addr, b.addr) })
	var errs []error
	for _, n := range nodes {
		w, err := s.checkNode(n)
		warnings = append(warnings, w...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return warnings, errors.Join(errs...)
}

// readSettings reads maxmemory-policy, appendonly and save on c.
func readSettings(ctx context.Context, c goredis.Cmdable, addr string) nodeSettings {
	n := nodeSettings{addr: addr}
	for _, p := range []struct {
		name string
		dst  *string
	}{{"maxmemory-policy", &n.policy}, {"appendonly", &n.appendonly}, {"save", &n.save}} {
		m, err := c.ConfigGet(ctx, p.name).Result()
		var rerr goredis.Error
		switch {
		case err == nil:
			*p.dst = m[p.name]
		case errors.As(err, &rerr) && !transient(err):
			n.refused = err
			return n
		default:
			n.err = err
			return n
		}
	}
	return n
}

// checkNode judges one node's settings.
func (s *Store) checkNode(n nodeSettings) (warnings []string, err error) {
	switch {
	case n.err != nil:
		if errors.Is(n.err, context.Canceled) {
			return nil, n.err
		}
		return nil, fmt.Errorf("%w: redis at %s: CONFIG GET: %w", store.ErrUnavailable, n.addr, n.err)
	case n.refused != nil && !s.cfg.AllowEviction:
		return nil, fmt.Errorf("%w: redis at %s refused CONFIG GET maxmemory-policy (%w), as managed Redis services and ACL users without +config|get do, so New cannot check that Redis never evicts lock keys; "+
			"allow it (ACL SETUSER <user> +config|get), or make sure the policy is noeviction in the service's settings and set Config.AllowEviction to start without the check",
			ErrEvictionPolicy, n.addr, n.refused)
	case n.refused != nil:
		return []string{fmt.Sprintf("redis at %s refused CONFIG GET (%v): its eviction policy and persistence are unchecked (AllowEviction is set); "+
			"with a policy other than noeviction Redis can evict live leases and fence counters", n.addr, n.refused)}, nil
	}
	if n.policy != "noeviction" {
		harm := evictionHarm(n.policy)
		if !s.cfg.AllowEviction {
			return nil, fmt.Errorf("%w: redis at %s has maxmemory-policy %s: %s; "+
				"set maxmemory-policy noeviction (CONFIG SET maxmemory-policy noeviction, and in redis.conf; a full Redis then refuses writes, which the store reports as unavailable), "+
				"or set Config.AllowEviction to accept losing locks",
				ErrEvictionPolicy, n.addr, n.policy, harm)
		}
		warnings = append(warnings, fmt.Sprintf("redis at %s has maxmemory-policy %s (allowed by AllowEviction): %s", n.addr, n.policy, harm))
	}
	if n.appendonly == "no" {
		if n.save == "" {
			warnings = append(warnings, fmt.Sprintf(`redis at %s has no persistence (appendonly no, save ""): a restart empties it, so live leases vanish and tokens start again at 1; set appendonly yes and appendfsync always`, n.addr))
		} else {
			warnings = append(warnings, fmt.Sprintf(`redis at %s persists by RDB snapshots only (save %q, appendonly no): a restart loses the writes since the last snapshot, so leases can vanish and tokens repeat; set appendonly yes and appendfsync always`, n.addr, n.save))
		}
	}
	return warnings, nil
}

// evictionHarm says what policy does to the store's keys when memory
// fills.
func evictionHarm(policy string) string {
	switch {
	case strings.HasPrefix(policy, "volatile-"):
		return "when memory fills Redis evicts keys with a TTL, and a lease is the only lockservice key with one, so a live lease can vanish and a second holder be granted"
	case strings.HasPrefix(policy, "allkeys-"):
		return "when memory fills Redis evicts any key: a live lease (a second holder is granted) or a fence counter (tokens start again at 1)"
	}
	return "Redis may evict lock keys when memory fills (lockservice knows only noeviction to be safe)"
}

// nodeAddr is the address of the node c (a client, or one of its
// connections) talks to: addr, its client's Options().Addr. A Sentinel
// (failover) client's options say "FailoverClient"; the node itself says
// where it listens (CLIENT INFO laddr).
func nodeAddr(ctx context.Context, addr string, c interface {
	ClientInfo(context.Context) *goredis.ClientInfoCmd
}) string {
	if addr != "FailoverClient" {
		return addr
	}
	if info, err := c.ClientInfo(ctx).Result(); err == nil && info.LAddr != "" {
		return "Sentinel primary " + info.LAddr
	}
	return "the Sentinel primary"
}
