package redis

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockservice/lockservice/store"
)

var _ store.Admin = (*Store)(nil)

// maxScanCount bounds SCAN's COUNT, which List doubles after each batch
// without a match so that a sparse prefix costs fewer round trips.
const maxScanCount = 1024

// List returns the live leases of the keys that start with prefix, at most
// limit of them, in SCAN's order. It never uses KEYS and never reads state
// objects: it scans for the lease keys (SCAN MATCH <ns>:{<prefix>*}:lock,
// with the glob characters of the namespace and prefix escaped) and reads
// the leases it finds with one pipeline of lease.lua. A page costs an
// INFO (the run_id of each node that takes writes), about one SCAN per
// limit matching keys (more when matches are sparse: each batch examines
// about COUNT keys of the node, so a whole listing examines every key of
// every node once) and one pipelined read per batch.
//
// On a Redis Cluster (and a Ring) List scans every master (shard) in turn,
// ordered by run_id. The cursor is opaque: the run_id of the node being
// scanned, its SCAN cursor, and the keys of the last SCAN batch the page had
// no room for (at most about one hash bucket's worth, as the batch is
// scanned again with a smaller COUNT before any is left over). A SCAN
// cursor means nothing to another server process, so when that node has
// restarted or is no longer a master (a failover), List fails with store.ErrInvalid
// (the cursor is no longer good): list again from the start. Keys moved
// between nodes during a listing (resharding) may be missed or returned
// twice.
//
// As SCAN may return a key more than once, a key can be on two pages (never
// twice on one). It returns store.ErrInvalid for a limit below 1, a prefix
// with '{' or '}' (no key has them) or a cursor it cannot read, and errors
// wrapping store.ErrUnavailable when Redis cannot serve.
func (s *Store) List(ctx context.Context, prefix, cursor string, limit int) ([]store.Held, string, error) {
	if limit < 1 {
		return nil, "", fmt.Errorf("%w: limit must be at least 1, got %d", store.ErrInvalid, limit)
	}
	if strings.ContainsAny(prefix, "{}") {
		return nil, "", fmt.Errorf("%w: prefix %q contains '{' or '}', which no key has", store.ErrInvalid, prefix)
	}
	cur, err := decodeCursor(cursor)
	if err != nil {
		return nil, "", err
	}
	for _, k := range cur.Pending {
		if !strings.HasPrefix(k, prefix) {
			return nil, "", fmt.Errorf("%w: cursor %q is not one List returned for prefix %q", store.ErrInvalid, cursor, prefix)
		}
	}
	nodes, err := s.scanNodes(ctx)
	if err != nil {
		return nil, "", err
	}
	i := 0
	switch {
	case cur.Done:
		i = len(nodes)
	case cur.Node != "":
		if i = slices.IndexFunc(nodes, func(n scanNode) bool { return n.id == cur.Node }); i < 0 {
			return nil, "", fmt.Errorf("%w: redis: the cursor names a node (run_id %s) that is not a master now (restarted, failed over, or never was); list again from the start",
				store.ErrInvalid, cur.Node)
		}
	}
	match := globEscape(s.cfg.Namespace+":{"+prefix) + "*}:lock"
	var (
		out  []store.Held
		todo = cur.Pending
		scan = cur.Scan
		grow = 0 // doublings of COUNT after batches without a match
		seen = make(map[string]bool)
	)
	for _, key := range todo {
		seen[key] = true
	}
	for {
		for len(todo) > 0 && len(out) < limit {
			n := min(len(todo), limit-len(out))
			held, err := s.leases(ctx, todo[:n])
			if err != nil {
				return nil, "", err
			}
			out = append(out, held...)
			todo = todo[n:]
		}
		if len(out) == limit || i == len(nodes) {
			break
		}
		need := limit - len(out)
		count := min(need, maxScanCount)
		for range grow {
			count = min(2*count, maxScanCount)
		}
		keys, next, err := nodes[i].c.Scan(ctx, scan, match, int64(count)).Result()
		if err != nil {
			return nil, "", mapErr(err)
		}
		if len(keys) > need && count > need {
			grow = 0 // more than the page has room for: scan this batch again, smaller
			continue
		}
		grow = min(grow+1, 10)
		for _, rk := range keys {
			if key, ok := s.keyOf(rk); ok && strings.HasPrefix(key, prefix) && !seen[key] {
				seen[key] = true
				todo = append(todo, key)
				grow = 0
			}
		}
		if scan = next; scan == 0 {
			i++
		}
	}
	if len(todo) == 0 && i == len(nodes) {
		return out, "", nil
	}
	next := listCursor{Scan: scan, Pending: todo, Done: i == len(nodes)}
	if !next.Done {
		next.Node = nodes[i].id
	}
	return out, next.encode(), nil
}

// listCursor is where a listing stands between pages.
type listCursor struct {
	Node    string   `json:"n,omitempty"` // run_id of the node being scanned ("": the first)
	Scan    uint64   `json:"c,omitempty"` // its SCAN cursor
	Done    bool     `json:"d,omitempty"` // every node scanned: only Pending is left
	Pending []string `json:"p,omitempty"` // keys found but not yet read
}

func (c listCursor) encode() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (listCursor, error) {
	var c listCursor
	if s == "" {
		return c, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil {
		return listCursor{}, fmt.Errorf("%w: cursor %q is not one List returned", store.ErrInvalid, s)
	}
	return c, nil
}

// scanNode is a server that holds a share of the keys.
type scanNode struct {
	id string // run_id: a SCAN cursor is good for this process only
	c  goredis.Cmdable
}

// scanNodes returns the servers that take writes, sorted by run_id: every
// Cluster master, every live Ring shard, or the one server.
func (s *Store) scanNodes(ctx context.Context) ([]scanNode, error) {
	var (
		mu    sync.Mutex
		nodes []scanNode
	)
	add := func(ctx context.Context, c goredis.Cmdable) error {
		info, err := c.Info(ctx, "server").Result()
		if err != nil {
			return err
		}
		id := ""
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(line, "run_id:"); ok {
				id = strings.TrimSpace(v)
			}
		}
		if id == "" {
			return fmt.Errorf("redis: INFO server has no run_id")
		}
		mu.Lock()
		nodes = append(nodes, scanNode{id: id, c: c})
		mu.Unlock()
		return nil
	}
	var err error
	switch c := s.rdb.(type) {
	case *goredis.ClusterClient:
		err = c.ForEachMaster(ctx, func(ctx context.Context, n *goredis.Client) error { return add(ctx, n) })
	case *goredis.Ring:
		err = c.ForEachShard(ctx, func(ctx context.Context, n *goredis.Client) error { return add(ctx, n) })
	default:
		err = add(ctx, s.rdb)
	}
	if err != nil {
		return nil, mapErr(err)
	}
	slices.SortFunc(nodes, func(a, b scanNode) int { return strings.Compare(a.id, b.id) })
	return nodes, nil
}

// globEscape escapes the characters that SCAN MATCH's glob treats
// specially, so that s matches itself only.
func globEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// keyOf returns the lock key of the lease key rk (<ns>:{<key>}:lock).
func (s *Store) keyOf(rk string) (string, bool) {
	rest, ok := strings.CutPrefix(rk, s.cfg.Namespace+":{")
	if !ok {
		return "", false
	}
	key, ok := strings.CutSuffix(rest, "}:lock")
	return key, ok && key != "" && !strings.ContainsAny(key, "{}")
}

// leases reads the leases of keys with lease.lua, in one pipeline (split by
// node on a Cluster), leaving out the keys whose lease has gone.
func (s *Store) leases(ctx context.Context, keys []string) ([]store.Held, error) {
	sent := time.Now()
	cmds := make([]*goredis.Cmd, len(keys))
	_, _ = s.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, key := range keys {
			lock, _, _ := s.keys(key)
			cmds[i] = leaseScript.EvalSha(ctx, p, []string{lock})
		}
		return nil
	}) // the errors are the commands'
	var out []store.Held
	for i, cmd := range cmds {
		raw, err := cmd.Result()
		if err != nil && goredis.HasErrorPrefix(err, "NOSCRIPT") {
			lock, _, _ := s.keys(keys[i])
			raw, err = leaseScript.Run(ctx, s.rdb, []string{lock}).Result()
		}
		if err != nil {
			return nil, mapErr(err)
		}
		if a, ok := raw.([]any); ok && len(a) == 0 {
			continue // gone since the scan
		}
		r := decode(raw, 4)
		l, _ := r.lease(0, sent)
		if r.err != nil {
			return nil, r.err
		}
		out = append(out, store.Held{Key: keys[i], Lease: l})
	}
	return out, nil
}

// Force ends the live lease of key, whoever holds it, with force.lua: the
// fence counter and the state object stay, so the next grant's token is
// higher. The store has no Notifier: whoever waits for key learns that it
// is free from Force's caller, or when its timer for the ended lease's
// expiry fires. It returns the lease it ended (ExpiresAt: when it would
// have ended), store.ErrNotHeld when key has no live lease,
// store.ErrInvalid for a bad key, and errors wrapping store.ErrUnavailable
// (ErrNotReplicated among them) when Redis cannot serve.
func (s *Store) Force(ctx context.Context, key string) (store.Lease, error) {
	if err := checkKey(key); err != nil {
		return store.Lease{}, err
	}
	lock, _, _ := s.keys(key)
	sent := time.Now()
	raw, err := s.run(ctx, forceScript, statusNonZero, []string{lock, s.delayKey(key)})
	if err != nil {
		return store.Lease{}, err
	}
	r := decode(raw, 1)
	if r.int(0) == 0 {
		if r.err != nil {
			return store.Lease{}, r.err
		}
		return store.Lease{}, store.ErrNotHeld
	}
	if len(r.a) < 5 {
		return store.Lease{}, fmt.Errorf("redis: unexpected force reply %v", raw)
	}
	l, _ := r.lease(1, sent)
	return l, r.err
}
