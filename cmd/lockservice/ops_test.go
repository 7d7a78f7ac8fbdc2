package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

// serving runs serve with args until the test ends, waiting until its
// output has want (stdout, or stderr when wantLog).
type serving struct {
	out, errOut syncBuffer
	cancel      context.CancelFunc
	errc        chan error
}

func startServe(t *testing.T, args []string, want string, wantLog bool) *serving {
	t.Helper()
	s := &serving{errc: make(chan error, 1)}
	ctx, cancel := context.WithCancel(t.Context())
	s.cancel = cancel
	go func() { s.errc <- run(ctx, args, &s.out, &s.errOut) }()
	t.Cleanup(func() { s.stop(t) })
	if wantLog {
		waitFor(t, &s.errOut, want, s.errc)
	} else {
		waitFor(t, &s.out, want, s.errc)
	}
	return s
}

// stop ends serve and returns its error.
func (s *serving) stop(t *testing.T) error {
	s.cancel()
	select {
	case err := <-s.errc:
		s.errc <- err // for a second stop
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancel")
		return nil
	}
}

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"serve", "-h"}, {"lock", "-h"}, {"get", "--help"}, {"ls", "-h"}, {"help"}} {
		var out, errOut syncBuffer
		err := run(t.Context(), args, &out, &errOut)
		if code := exitStatus(err, io.Discard); code != 0 {
			t.Errorf("lockservice %s: exit status %d (%v), want 0", strings.Join(args, " "), code, err)
		}
		if !strings.Contains(out.String()+errOut.String(), "Usage") {
			t.Errorf("lockservice %s printed no usage", strings.Join(args, " "))
		}
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}, {"--version", "--store", "mysql"}} {
		var out, errOut syncBuffer
		if err := run(t.Context(), args, &out, &errOut); err != nil {
			t.Fatalf("lockservice %s = %v", strings.Join(args, " "), err)
		}
		if !strings.HasPrefix(out.String(), "lockservice "+service.Version+" (") || !strings.Contains(out.String(), runtime.Version()) {
			t.Errorf("lockservice %s printed %q, want the version and the Go version", strings.Join(args, " "), out.String())
		}
	}
	bi := &debug.BuildInfo{Main: debug.Module{Path: "github.com/lockservice/lockservice", Version: "v0.2.0"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef"}, {Key: "vcs.time", Value: "2026-11-26T01:59:31Z"}, {Key: "vcs.modified", Value: "true"}}}
	want := "lockservice " + service.Version + " (module v0.2.0, commit 0123456789abcdef+dirty of 2026-11-26T01:59:31Z, " + runtime.Version()
	if got := versionOf(bi, true); !strings.HasPrefix(got, want) {
		t.Errorf("versionOf = %q, want it to start with %q", got, want)
	}
	if got := versionOf(nil, false); !strings.HasPrefix(got, "lockservice "+service.Version+" ("+runtime.Version()) {
		t.Errorf("versionOf without build info = %q", got)
	}
}

func TestApplyEnv(t *testing.T) {
	env := map[string]string{
		"LOCKSERVICE_MAX_TTL":   "1m",
		"LOCKSERVICE_PREFIX":    "fromenv",
		"LOCKSERVICE_DATA_DIR":  "",     // empty: unset
		"LOCKSERVICE_VERSION":   "true", // never from the environment
		"LOCKSERVICE_REDIS_URL": "redis://env:6379",
		"LOCKSERVICE_ALLOW":     "true",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	maxTTL := fs.Duration("max-ttl", time.Hour, "")
	prefix := fs.String("prefix", "lock", "")
	dataDir := fs.String("data-dir", "d", "")
	version := fs.Bool("version", false, "")
	redisURL := fs.String("redis-url", "", "")
	allow := fs.Bool("allow", false, "")
	if err := fs.Parse([]string{"--prefix", "fromflag"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs, lookup); err != nil {
		t.Fatal(err)
	}
	if *maxTTL != time.Minute || *prefix != "fromflag" || *dataDir != "d" || *version || *redisURL != "redis://env:6379" || !*allow {
		t.Errorf("after applyEnv: max-ttl %v prefix %q data-dir %q version %v redis-url %q allow %v; want 1m, fromflag (the flag wins), d, false, redis://env:6379, true",
			*maxTTL, *prefix, *dataDir, *version, *redisURL, *allow)
	}
	if set := explicitFlags(fs); !set["max-ttl"] || !set["prefix"] || set["data-dir"] || set["version"] {
		t.Errorf("explicit flags = %v, want max-ttl and prefix, not data-dir or version", set)
	}

	env["LOCKSERVICE_MAX_TTL"] = "forever"
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Duration("max-ttl", time.Hour, "")
	_ = fs.Parse(nil)
	if err := applyEnv(fs, lookup); err == nil || !strings.Contains(err.Error(), `LOCKSERVICE_MAX_TTL="forever"`) || !strings.Contains(err.Error(), "--max-ttl") {
		t.Errorf("applyEnv with a bad value = %v, want an error naming the variable and the flag", err)
	}
}

// TestServeFromEnvironment: serve takes its flags from LOCKSERVICE_*
// variables; a flag on the command line wins; a bad value is an error
// naming the variable.
func TestServeFromEnvironment(t *testing.T) {
	port := testsrv.FreePort(t)
	t.Setenv("LOCKSERVICE_PORT", strconv.Itoa(port))
	t.Setenv("LOCKSERVICE_DATA_DIR", t.TempDir())
	t.Setenv("LOCKSERVICE_PREFIX", "envprefix")
	s := startServe(t, []string{"--prefix", "flagprefix"}, "req flagprefix.acquire.demo", false)
	if !strings.Contains(s.out.String(), "127.0.0.1:"+strconv.Itoa(port)) {
		t.Errorf("banner %q does not show the port of LOCKSERVICE_PORT (%d)", s.out.String(), port)
	}
	if err := s.stop(t); err != nil {
		t.Errorf("run = %v", err)
	}

	t.Setenv("LOCKSERVICE_MAX_TTL", "forever")
	err := run(t.Context(), nil, io.Discard, io.Discard)
	if code := exitStatus(err, io.Discard); code != exitUsage || !strings.Contains(fmt.Sprint(err), "LOCKSERVICE_MAX_TTL") {
		t.Errorf("run with LOCKSERVICE_MAX_TTL=forever = %v (exit %d), want exit %d naming the variable", err, code, exitUsage)
	}
}

// TestConfigFileHostKeepsItsPort: -c with --host alone keeps the file's
// port, not the flag's default 4222, and the banner names the data directory
// the server really uses, the file's store_dir.
func TestConfigFileHostKeepsItsPort(t *testing.T) {
	dir := t.TempDir()
	port := testsrv.FreePort(t)
	data := filepath.Join(dir, "from-conf")
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, "port: %d\njetstream { store_dir: %q }\n", port, data), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, []string{"-c", conf, "--host", "127.0.0.1"}, "req lock.acquire.demo", false)
	if want := fmt.Sprintf("nats://127.0.0.1:%d", port); !strings.Contains(s.out.String(), want) {
		t.Errorf("banner %q, want the file's port: %s", s.out.String(), want)
	}
	if !strings.Contains(s.out.String(), "data in "+data) {
		t.Errorf("banner %q, want the file's store_dir %s", s.out.String(), data)
	}
}

// TestNATSURLSeedList: --nats-url takes a comma-separated list of seed
// URLs, and one that is down does not stop the start.
func TestNATSURLSeedList(t *testing.T) {
	srv := testsrv.NATS(t, "")
	dead := testsrv.FreePort(t)
	startServe(t, []string{"--nats-url", fmt.Sprintf("nats://127.0.0.1:%d,%s", dead, srv.ClientURL())}, "serving", false)
}

// TestStartAndStopLogged: the JSON log's start line has the settings,
// with the Redis password redacted; stdout has no banner; shutdown is
// logged.
func TestStartAndStopLogged(t *testing.T) {
	r := testsrv.StartRedis(t)
	const password = "s3cret-pw"
	if err := r.Client(t).Do(t.Context(), "ACL", "SETUSER", "ops", "on", ">"+password, "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	port := testsrv.FreePort(t)
	dir := t.TempDir()
	s := startServe(t, []string{"--log-format", "json", "--store", "redis", "--redis-url", "redis://ops:" + password + "@" + r.Addr + "/0",
		"--port", strconv.Itoa(port), "--data-dir", dir}, `"msg":"started"`, true)
	if err := s.stop(t); err != nil {
		t.Fatalf("run = %v", err)
	}
	if s.out.String() != "" {
		t.Errorf("stdout with --log-format json = %q, want nothing", s.out.String())
	}
	logs := s.errOut.String()
	if strings.Contains(logs, password) {
		t.Errorf("the log has the Redis password:\n%s", logs)
	}
	var started map[string]any
	var msgs []string
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		msgs = append(msgs, fmt.Sprint(l["msg"]))
		if l["msg"] == "started" {
			started = l
		}
	}
	want := map[string]any{
		"store": "redis", "redis": "redis://ops:xxxxx@" + r.Addr + "/0", "prefix": "lock", "data_dir": dir,
		"nats": fmt.Sprintf("nats://127.0.0.1:%d", port), "max_waiters": float64(service.DefaultConfig().MaxWaiters),
	}
	for k, v := range want {
		if started[k] != v {
			t.Errorf("start line %s = %v, want %v (line %v)", k, started[k], v, started)
		}
	}
	for _, k := range []string{"instance", "max_ttl", "default_ttl", "max_waiters_per_key", "max_value_bytes"} {
		if started[k] == nil {
			t.Errorf("start line has no %s: %v", k, started)
		}
	}
	if !strings.Contains(strings.Join(msgs, "|"), "shutting down|stopping|stopped") {
		t.Errorf("log messages %q, want shutting down, stopping, stopped", msgs)
	}
}

// get returns the status and body of url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample of name whose labels include
// labels ("k", "v" pairs) in a text exposition, and whether there is one.
func metric(body, name string, labels ...string) (float64, bool) {
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		n, lbls, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		match := true
		for i := 0; i+1 < len(labels); i += 2 {
			if !strings.Contains(lbls, labels[i]+`="`+labels[i+1]+`"`) {
				match = false
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		return v, err == nil
	}
	return 0, false
}

// pollMetric scrapes url until the sample reaches want.
func pollMetric(t *testing.T, url string, want float64, name string, labels ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body := get(t, url)
		v, ok := metric(body, name, labels...)
		if ok && v == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s%v = %v (present %v), want %v", name, labels, v, ok, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func request(t *testing.T, nc *nats.Conn, subject, body string) map[string]any {
	t.Helper()
	m, err := nc.Request(subject, []byte(body), 30*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	var v map[string]any
	_ = json.Unmarshal(m.Data, &v)
	return v
}

// TestMetricsMoveWithTraffic scrapes /metrics before and after real
// traffic on the embedded server: a grant, a request parked and handed
// the lock by a release, one woken by an expiry, a bad request.
func TestMetricsMoveWithTraffic(t *testing.T) {
	port, mport := testsrv.FreePort(t), testsrv.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", mport)
	startServe(t, []string{"--port", strconv.Itoa(port), "--data-dir", t.TempDir(), "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", mport)}, "req lock.acquire.demo", false)
	if code, body := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz = %d %q", code, body)
	}
	_, before := get(t, base+"/metrics")
	for _, s := range []struct {
		name   string
		labels []string
	}{
		{"lockservice_grants_total", nil},
		{"lockservice_requests_total", []string{"endpoint", "acquire", "code", "200"}},
		{"lockservice_parked_requests", nil},
	} {
		if v, ok := metric(before, s.name, s.labels...); !ok || v != 0 {
			t.Errorf("before traffic %s%v = %v (present %v), want 0", s.name, s.labels, v, ok)
		}
	}

	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	first := request(t, nc, "lock.acquire.m.handoff", `{"ttl_ms":60000}`)
	parked := make(chan map[string]any, 1)
	go func() {
		m, err := nc.Request("lock.acquire.m.handoff", []byte(`{"ttl_ms":60000,"wait_ms":30000}`), 40*time.Second)
		if err != nil {
			t.Errorf("blocking acquire: %v", err)
			parked <- nil
			return
		}
		var v map[string]any
		_ = json.Unmarshal(m.Data, &v)
		parked <- v
	}()
	pollMetric(t, base+"/metrics", 1, "lockservice_parked_requests")
	request(t, nc, "lock.release.m.handoff", fmt.Sprintf(`{"lock_id":%q}`, first["lock_id"]))
	if v := <-parked; v["acquired"] != true {
		t.Fatalf("parked acquire answered %v, want acquired", v)
	}
	request(t, nc, "lock.acquire.m.expiry", `{"ttl_ms":1000}`)
	if v := request(t, nc, "lock.acquire.m.expiry", `{"ttl_ms":1000,"wait_ms":30000}`); v["acquired"] != true {
		t.Fatalf("acquire parked behind a 1 s lease answered %v, want acquired after its expiry", v)
	}
	if _, err := nc.Request("lock.acquire.m.bad", []byte(`{"ttl_ms":"soon"}`), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	_, after := get(t, base+"/metrics")
	for _, s := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"lockservice_requests_total", []string{"endpoint", "acquire", "code", "200"}, 4},
		{"lockservice_requests_total", []string{"endpoint", "acquire", "code", "400"}, 1},
		{"lockservice_requests_total", []string{"endpoint", "release", "code", "200"}, 1},
		{"lockservice_request_duration_seconds_count", []string{"endpoint", "acquire"}, 5},
		{"lockservice_grants_total", nil, 4},
		{"lockservice_handoffs_total", nil, 1},
		{"lockservice_expiry_wakeups_total", nil, 1},
		{"lockservice_events_published_total", []string{"event", "released"}, 1},
		{"lockservice_events_published_total", []string{"event", "expired"}, 1},
		{"lockservice_store_call_duration_seconds_count", []string{"op", "transfer", "outcome", "ok"}, 1},
		{"lockservice_store_call_duration_seconds_count", []string{"op", "acquire", "outcome", "ok"}, 3},
		{"lockservice_info", []string{"store", "jetstream", "prefix", "lock", "version", service.Version}, 1},
		{"go_goroutines", nil, 1},
		{"process_cpu_seconds_total", nil, 0},
		{"go_build_info", nil, 1},
	} {
		if v, ok := metric(after, s.name, s.labels...); !ok || v < s.min {
			t.Errorf("after traffic %s%v = %v (present %v), want at least %v", s.name, s.labels, v, ok, s.min)
		}
	}
	if v, _ := metric(after, "lockservice_parked_requests"); v != 0 {
		t.Errorf("lockservice_parked_requests after the hand-off = %v, want 0", v)
	}
	if v, _ := metric(after, "lockservice_store_errors_total", "kind", "unavailable"); v != 0 {
		t.Errorf("lockservice_store_errors_total{kind=unavailable} = %v, want 0", v)
	}
}

// TestReadyzFollowsTheStore: /readyz turns 503 when redis-server is killed
// (saying the store fails) and 200 again once it is back; /healthz stays
// 200; the store errors are counted.
func TestReadyzFollowsTheStore(t *testing.T) {
	r := testsrv.StartRedis(t)
	mport := testsrv.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", mport)
	startServe(t, []string{"--store", "redis", "--redis-url", "redis://" + r.Addr + "/0", "--port", strconv.Itoa(testsrv.FreePort(t)),
		"--data-dir", t.TempDir(), "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", mport), "--health-interval", "100ms", "--store-timeout", "1s"},
		"req lock.acquire.demo", false)
	ready := func(want int) string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, body := get(t, base+"/readyz")
			if code == want {
				return body
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz = %d %q, want %d", code, body, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	ready(200)
	r.Kill()
	if body := ready(503); !strings.Contains(body, "store") {
		t.Errorf("/readyz with Redis down says %q, want the store named", body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz with Redis down = %d, want 200 (the process is up)", code)
	}
	_, body := get(t, base+"/metrics")
	if v, _ := metric(body, "lockservice_store_errors_total", "kind", "unavailable"); v < 1 {
		t.Errorf("lockservice_store_errors_total{kind=unavailable} with Redis down = %v, want at least 1", v)
	}
	r.Restart(t)
	ready(200)
}

// startNATSAt runs a nats-server with JetStream on port, data in dir.
func startNATSAt(t *testing.T, port int, dir string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{ServerName: "ops", Host: "127.0.0.1", Port: port,
		JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// TestNATSDisconnectLogged: with --nats-url, losing the NATS server is
// logged, /readyz says the connection is down, and the reconnection is
// logged once the server is back; stopping logs no disconnect.
func TestNATSDisconnectLogged(t *testing.T) {
	port, mport := testsrv.FreePort(t), testsrv.FreePort(t)
	dir := t.TempDir()
	ns := startNATSAt(t, port, dir)
	base := fmt.Sprintf("http://127.0.0.1:%d", mport)
	s := startServe(t, []string{"--nats-url", ns.ClientURL(), "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", mport)}, "serving", false)
	ns.Shutdown()
	ns.WaitForShutdown()
	waitFor(t, &s.errOut, `msg="NATS disconnected: reconnecting"`, s.errc)
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "NATS connection") {
		t.Errorf("/readyz with NATS down = %d %q, want 503 naming the NATS connection", code, body)
	}
	startNATSAt(t, port, dir)
	waitFor(t, &s.errOut, `msg="NATS reconnected"`, s.errc)
	if err := s.stop(t); err != nil {
		t.Errorf("run = %v", err)
	}
	// The close's callbacks run in order: the disconnect one, if any,
	// before this.
	waitFor(t, &s.errOut, `msg="NATS connection closed"`, nil)
	if n := strings.Count(s.errOut.String(), "NATS disconnected"); n != 1 {
		t.Errorf("%d disconnect lines, want 1 (stopping is no disconnect):\n%s", n, s.errOut.String())
	}
}
