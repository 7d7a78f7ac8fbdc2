package tests

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"
	goredis "github.com/redis/go-redis/v9"
)

// deploy is one system under test: NATS, a store, service processes.
type deploy struct {
	t         *testing.T
	nats      []*proc // nats-server processes (1, or 3 for a cluster)
	natsAddrs []string
	redis     *proc
	replica   *proc
	redisAddr string
	services  []*proc
	// svcProxy sits between every service instance and its store
	// (Redis), or NATS (JetStream: the store lives in NATS).
	svcProxy *proxy
	// clientProxy sits between the workload's clients and NATS.
	clientProxy *proxy
}

func writeFile(t testing.TB, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// startNATS starts n nats-server processes with JetStream (file storage,
// fsync on every write), clustered when n > 1.
func startNATS(t *testing.T, n int) ([]*proc, []string) {
	var ports, cports []int
	for i := 0; i < n; i++ {
		ports = append(ports, freePort(t))
		cports = append(cports, freePort(t))
	}
	var procs []*proc
	var addrs []string
	for i := 0; i < n; i++ {
		conf := fmt.Sprintf("server_name: n%d\nlisten: 127.0.0.1:%d\njetstream { store_dir: %q, sync_interval: always }\n", i, ports[i], t.TempDir())
		if n > 1 {
			var routes []string
			for _, p := range cports {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
			}
			conf += fmt.Sprintf("cluster { name: faults, listen: 127.0.0.1:%d, routes: [%s] }\n", cports[i], strings.Join(routes, ", "))
		}
		addr := fmt.Sprintf("127.0.0.1:%d", ports[i])
		procs = append(procs, startProc(t, fmt.Sprintf("nats%d", i), bins.natsServer, []string{"-c", writeFile(t, fmt.Sprintf("n%d.conf", i), conf)}, dialable(addr)))
		addrs = append(addrs, addr)
	}
	// Wait until JetStream answers (a meta leader exists on a cluster).
	nc, err := nats.Connect(natsURL(addrs), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := natsjs.New(nc)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return procs, addrs
}

func natsURL(addrs []string) string {
	var urls []string
	for _, a := range addrs {
		urls = append(urls, "nats://"+a)
	}
	return strings.Join(urls, ",")
}

func startRedis(t *testing.T, args ...string) (*proc, string) {
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	base := []string{"--port", itoa(port), "--bind", "127.0.0.1", "--dir", t.TempDir(), "--save", "",
		"--appendonly", "yes", "--appendfsync", "always"}
	p := startProc(t, "redis-"+itoa(port), bins.redisServer, append(base, args...), func(*proc) error {
		c := goredis.NewClient(&goredis.Options{Addr: addr})
		defer c.Close()
		return c.Ping(context.Background()).Err()
	})
	return p, addr
}

// newDeploy starts NATS (natsNodes servers), the store and n service
// processes, with proxies for partitions.
func newDeploy(t *testing.T, storeKind string, natsNodes, services int, extraSvcArgs ...string) *deploy {
	needBinaries(t)
	d := &deploy{t: t}
	d.nats, d.natsAddrs = startNATS(t, natsNodes)
	d.clientProxy = newProxy(t, d.natsAddrs[0])
	var svcArgs []string
	svcNATS := natsURL(d.natsAddrs)
	switch storeKind {
	case "redis":
		d.redis, d.redisAddr = startRedis(t)
		d.svcProxy = newProxy(t, d.redisAddr)
		svcArgs = []string{"--store", "redis", "--redis-url", "redis://" + d.svcProxy.Addr() + "/0"}
	default:
		if natsNodes == 1 {
			d.svcProxy = newProxy(t, d.natsAddrs[0])
			svcNATS = "nats://" + d.svcProxy.Addr()
		}
		svcArgs = []string{"--store", "jetstream", "--replicas", itoa(natsNodes)}
	}
	svcArgs = append(svcArgs, extraSvcArgs...)
	for i := 0; i < services; i++ {
		args := append([]string{"--nats-url", svcNATS, "--default-ttl", "20s"}, svcArgs...)
		d.services = append(d.services, startProc(t, fmt.Sprintf("svc%d", i), bins.lockservice, args, logContains("serving")))
	}
	return d
}

// scenario is a workload under one nemesis.
type scenario struct {
	name    string
	store   string
	nodes   int // nats-servers
	nemesis func(ctx context.Context, d *deploy, note func(string))
}

// every runs fault then heal repeatedly until ctx ends.
func every(ctx context.Context, period time.Duration, fault func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fault()
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func killServices(ctx context.Context, d *deploy, note func(string)) {
	i := 0
	every(ctx, 700*time.Millisecond, func() {
		p := d.services[i%len(d.services)]
		i++
		p.Kill()
		note("kill -9 " + p.name)
		sleepCtx(ctx, 300*time.Millisecond)
		p.Restart()
	})
}

func restartNATS(ctx context.Context, d *deploy, note func(string)) {
	every(ctx, 2*time.Second, func() {
		d.nats[0].Kill()
		note("kill -9 nats-server")
		sleepCtx(ctx, 400*time.Millisecond)
		d.nats[0].Restart()
	})
}

func restartRedis(ctx context.Context, d *deploy, note func(string)) {
	every(ctx, 2*time.Second, func() {
		d.redis.Kill()
		note("kill -9 redis-server (AOF, appendfsync always)")
		sleepCtx(ctx, 400*time.Millisecond)
		d.redis.Restart()
	})
}

func partitionStore(ctx context.Context, d *deploy, note func(string)) {
	every(ctx, 1500*time.Millisecond, func() {
		d.svcProxy.Cut()
		note("partition service <-> store")
		sleepCtx(ctx, 600*time.Millisecond)
		d.svcProxy.Heal()
	})
}

func partitionClients(ctx context.Context, d *deploy, note func(string)) {
	every(ctx, 1200*time.Millisecond, func() {
		d.clientProxy.Cut()
		note("partition clients <-> NATS (replies in flight are lost)")
		sleepCtx(ctx, 400*time.Millisecond)
		d.clientProxy.Heal()
	})
}

// killLeader kills the JetStream stream leader of the lock bucket and
// restarts it.
func killLeader(ctx context.Context, d *deploy, note func(string)) {
	nc, err := nats.Connect(natsURL(d.natsAddrs), nats.MaxReconnects(-1))
	if err != nil {
		return
	}
	defer nc.Close()
	js, _ := natsjs.New(nc)
	every(ctx, 2500*time.Millisecond, func() {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		s, err := js.Stream(sctx, "KV_lockservice")
		if err != nil {
			return
		}
		info, err := s.Info(sctx)
		if err != nil || info.Cluster == nil {
			return
		}
		for i, p := range d.nats {
			if fmt.Sprintf("n%d", i) == info.Cluster.Leader {
				p.Kill()
				note("kill -9 stream leader " + info.Cluster.Leader)
				sleepCtx(ctx, 500*time.Millisecond)
				p.Restart()
			}
		}
	})
}

var scenarios = []scenario{
	{"jetstream/kill-services", "jetstream", 1, killServices},
	{"jetstream/restart-nats", "jetstream", 1, restartNATS},
	{"jetstream/partition-service-store", "jetstream", 1, partitionStore},
	{"jetstream/partition-clients", "jetstream", 1, partitionClients},
	{"jetstream-r3/kill-leader", "jetstream", 3, killLeader},
	{"redis/kill-services", "redis", 1, killServices},
	{"redis/restart-redis-aof", "redis", 1, restartRedis},
	{"redis/restart-nats", "redis", 1, restartNATS},
	{"redis/partition-service-store", "redis", 1, partitionStore},
	{"redis/partition-clients", "redis", 1, partitionClients},
}

// TestFaults runs the history-checked workload under each nemesis.
// -fault.duration sets the workload length per scenario (default 6s; CI's
// short mode), -fault.report appends the figures to a file.
func TestFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("fault scenarios start real processes for several seconds each")
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			d := newDeploy(t, sc.store, sc.nodes, 3)
			ctx, cancel := context.WithTimeout(t.Context(), *faultDuration)
			defer cancel()
			var mu sync.Mutex
			faults := map[string]int{}
			note := func(s string) { mu.Lock(); faults[s]++; mu.Unlock() }
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); sc.nemesis(ctx, d, note) }()
			w := &workload{natsURL: "nats://" + d.clientProxy.Addr(), clients: 6, keys: 3, ttl: 20 * time.Second,
				opBudget: 6 * time.Second, resource: newFencedResource()}
			h := w.run(t, ctx)
			wg.Wait()
			summary := h.check(t, strings.ReplaceAll(sc.name, "/", "-"))
			var fs []string
			for f, n := range faults {
				fs = append(fs, fmt.Sprintf("%d× %s", n, f))
			}
			t.Logf("%s: %s; faults: %s", sc.name, summary, strings.Join(fs, ", "))
			report(t, sc.name, summary, fs)
		})
	}
}

func report(t *testing.T, name, summary string, faults []string) {
	if *faultReport == "" {
		return
	}
	f, err := os.OpenFile(*faultReport, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Error(err)
		return
	}
	defer f.Close()
	status := "ok"
	if t.Failed() {
		status = "VIOLATION"
	}
	fmt.Fprintf(f, "| %s | %v | %s | %s | %s |\n", name, *faultDuration, strings.Join(faults, ", "), summary, status)
}
