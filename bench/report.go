package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// results collects the measured numbers.
type results struct {
	machine [][2]string
	rows    []*row
	checks  []check
	notes   []string
}

// row is one metric across targets.
type row struct {
	scen, name, unit string
	vals             map[string]float64
	ratio            bool // print ratios to redislock
}

// check is one of the targets.
type check struct {
	scen, target, want, got string
	pass                    bool
}

func newResults() *results { return &results{} }

func (r *results) row(scen, name, unit string, ratio bool) *row {
	for _, x := range r.rows {
		if x.scen == scen && x.name == name {
			return x
		}
	}
	x := &row{scen: scen, name: name, unit: unit, vals: map[string]float64{}, ratio: ratio}
	r.rows = append(r.rows, x)
	return x
}

// set records v for target in the metric (scen, name).
func (r *results) set(scen, name, unit, target string, v float64, ratio bool) {
	r.row(scen, name, unit, ratio).vals[target] = v
}

func (r *results) get(scen, name, target string) (float64, bool) {
	for _, x := range r.rows {
		if x.scen == scen && x.name == name {
			v, ok := x.vals[target]
			return v, ok
		}
	}
	return 0, false
}

func (r *results) note(format string, a ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, a...))
}

func (r *results) check(scen, target, want, got string, pass bool) {
	r.checks = append(r.checks, check{scen, target, want, got, pass})
}

func fmtVal(v float64, unit string) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case math.IsInf(v, 1):
		return "∞"
	}
	switch unit {
	case "µs", "/s", "B", "":
		return strconv.FormatFloat(v, 'f', 0, 64)
	case "ms":
		return strconv.FormatFloat(v, 'f', 1, 64)
	case "x":
		return strconv.FormatFloat(v, 'f', 2, 64)
	case "%":
		return strconv.FormatFloat(v, 'f', 0, 64) + "%"
	case "MiB":
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// print writes the machine, the table and the targets as Markdown.
func (r *results) print(w io.Writer, cfg *config) {
	fmt.Fprintf(w, "## Machine\n\n")
	for _, kv := range r.machine {
		fmt.Fprintf(w, "- %s: %s\n", kv[0], kv[1])
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(w, "- load average at end (1, 5, 15 min): %s\n", strings.Join(strings.Fields(string(b))[:3], " "))
	}
	fmt.Fprintf(w, "- settings: -duration %v, -clients %d, -hot-clients %d, -hold %v, -ttl %v, -expiry-ttl %v, -expiry-rounds %d, -scale-locks %d, -scale-waiters %d\n",
		cfg.duration, cfg.clients, cfg.hotClients, cfg.hold, cfg.ttl, cfg.expiryTTL, cfg.expiryRounds, cfg.scaleLocks, cfg.scaleWaiters)
	fmt.Fprintf(w, "- lockservice instances connect to nats-server: %s\n", map[string]string{"inprocess": "in-process (net.Pipe), as embedded.Start does", "tcp": "over TCP loopback (-service-conn tcp)"}[cfg.serviceConn])
	fmt.Fprintf(w, "- strategies: lockservice client.Acquire (parked, pushed grant) / TryAcquire for pairs; redislock Obtain with LinearBackoff(%v); redsync default options (8s expiry, 32 tries, 50-250 ms random delay; Lock called again after ErrFailed)\n\n", cfg.redislockBackoff)

	var cols []string
	for _, t := range targetOrder {
		for _, x := range r.rows {
			if _, ok := x.vals[t]; ok {
				cols = append(cols, t)
				break
			}
		}
	}
	var ratioCols []string
	for _, t := range cols {
		if t != tRedislock && t != tRawKV && t != tFloor {
			ratioCols = append(ratioCols, t)
		}
	}
	fmt.Fprintf(w, "## Results\n\n| # | metric | unit |")
	for _, c := range cols {
		fmt.Fprintf(w, " %s |", c)
	}
	for _, c := range ratioCols {
		fmt.Fprintf(w, " %s ÷ redislock |", shortName(c))
	}
	fmt.Fprintf(w, "\n|---|---|---|")
	for range len(cols) + len(ratioCols) {
		fmt.Fprintf(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, x := range r.rows {
		fmt.Fprintf(w, "| %s | %s | %s |", x.scen, x.name, x.unit)
		for _, c := range cols {
			if v, ok := x.vals[c]; ok {
				fmt.Fprintf(w, " %s |", fmtVal(v, x.unit))
			} else {
				fmt.Fprintf(w, " |")
			}
		}
		base, hasBase := x.vals[tRedislock]
		for _, c := range ratioCols {
			v, ok := x.vals[c]
			if !x.ratio || !ok || !hasBase || base == 0 || math.IsInf(base, 0) || math.IsNaN(base) || math.IsInf(v, 0) {
				fmt.Fprintf(w, " |")
				continue
			}
			fmt.Fprintf(w, " %.2f |", v/base)
		}
		fmt.Fprintln(w)
	}
	if len(r.checks) > 0 {
		fmt.Fprintf(w, "\n## Targets (issue 13)\n\n| # | target | wanted | measured | |\n|---|---|---|---|---|\n")
		met := 0
		for _, c := range r.checks {
			verdict := "MISS"
			if c.pass {
				verdict = "PASS"
				met++
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", c.scen, c.target, c.want, c.got, verdict)
		}
		fmt.Fprintf(w, "\n%d of %d targets met.\n", met, len(r.checks))
	}
	if len(r.notes) > 0 {
		fmt.Fprintf(w, "\n## Notes\n\n")
		for _, n := range r.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}

func shortName(t string) string {
	switch t {
	case tJetStream:
		return "js"
	case tRedis:
		return "redis"
	}
	return t
}

// machineInfo records what the numbers were measured on.
func machineInfo(e *env) [][2]string {
	m := [][2]string{
		{"nproc", strconv.Itoa(runtime.NumCPU())},
		{"GOMAXPROCS", strconv.Itoa(runtime.GOMAXPROCS(0))},
		{"cpu", cpuModel()},
		{"go", runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH},
		{"nats-server", server.VERSION + " (embedded, in this process; JetStream file storage in a temp dir)"},
	}
	if out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
		rev := strings.TrimSpace(string(out))
		if st, err := exec.Command("git", "status", "--porcelain", "--", "service", "store", "client", "embedded").Output(); err == nil && len(bytes.TrimSpace(st)) > 0 {
			rev += " (service/store/client/embedded modified in the work tree)"
		}
		m = append(m, [2]string{"lockservice commit", rev})
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m = append(m, [2]string{"load average at start (1, 5, 15 min)", strings.Join(strings.Fields(string(b))[:3], " ")})
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m = append(m, [2]string{"kernel", strings.TrimSpace(string(b))})
	}
	if mem := memTotal(); mem != "" {
		m = append(m, [2]string{"memory", mem})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rdb := e.peerRedis()
	defer rdb.Close()
	info, err := rdb.Info(ctx, "server").Result()
	ver := "?"
	if err == nil {
		ver = infoField(info, "redis_version")
	}
	where := "started by lockbench on " + e.redisOpt.Addr + ", no persistence"
	if e.redis == nil {
		where = "given by -redis-url " + e.redisOpt.Addr
	}
	m = append(m, [2]string{"redis-server", ver + " (" + where + ")"})
	m = append(m, [2]string{"libraries", libVersions()})
	return m
}

func infoField(info, name string) string {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+":"); ok {
			return v
		}
	}
	return "?"
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

func memTotal() string {
	kb := procStatusKB("/proc/meminfo", "MemTotal")
	if kb == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
}

// procStatusKB reads a "Name: N kB" line of a /proc file.
func procStatusKB(path, name string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// libVersions lists the module versions of the compared libraries.
func libVersions() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "?"
	}
	want := map[string]bool{"github.com/bsm/redislock": true, "github.com/go-redsync/redsync/v4": true,
		"github.com/redis/go-redis/v9": true, "github.com/nats-io/nats.go": true}
	var out []string
	for _, d := range bi.Deps {
		if want[d.Path] {
			out = append(out, d.Path+" "+d.Version)
		}
	}
	return strings.Join(out, ", ")
}

// percentile returns the p-th percentile (0-100) of ds by nearest rank.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
