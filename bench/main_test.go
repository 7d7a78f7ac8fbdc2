package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestRunShort runs every scenario with tiny counts against real servers
// (embedded nats-server, a redis-server process), so CI proves the harness
// works; the numbers mean nothing at this size.
func TestRunShort(t *testing.T) {
	var out, errOut bytes.Buffer
	args := []string{
		"-duration", "300ms", "-scenarios", "1,2,3,4,5",
		"-clients", "4", "-hot-clients", "3",
		"-expiry-ttl", "1s", "-expiry-rounds", "1", "-expiry-busy", "20",
		"-scale-locks", "300", "-scale-waiters", "30",
	}
	if err := run(t.Context(), args, &out, &errOut); err != nil {
		t.Fatalf("run(%q) = %v; stderr:\n%s", args, err, errOut.String())
	}
	got := out.String()
	for _, want := range []string{
		"## Machine", "nproc", "## Results", "## Targets (issue 13)",
		"| 1 | pair latency p50 | µs |",
		"| 2 | pairs/s (4 clients × 4 keys) | /s |",
		"| 3 hold 0 | acquisitions/s |", "| 3 hold 1ms | handoff p50",
		"one at a time: grant after the server's lease end, max",
		"bytes per parked waiter",
		tJetStream, tRedis, tRedislock, tRedsync, tRawKV,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output has no %q:\n%s", want, got)
		}
	}
	t.Logf("output:\n%s", got)
}

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-scenarios", "6"},
		{"-scenarios", "x"},
		{"-targets", "etcd"},
		{"-duration", "0s"},
		{"-hot-clients", "1"},
		{"-scale-waiters", "10", "-scale-locks", "5"},
		{"-service-conn", "udp"},
		{"extra"},
	} {
		if _, err := parseFlags(args, &bytes.Buffer{}); err == nil {
			t.Errorf("parseFlags(%q) = nil error, want one", args)
		}
	}
	c, err := parseFlags([]string{"-scenarios", "1,3", "-targets", "js,redislock"}, &bytes.Buffer{})
	if err != nil {
		t.Fatalf("parseFlags = %v", err)
	}
	if !c.scenarios[1] || !c.scenarios[3] || c.scenarios[2] || !c.targets[tJetStream] || !c.targets[tRedislock] || c.targets[tRedis] {
		t.Errorf("parseFlags: scenarios %v targets %v", c.scenarios, c.targets)
	}
}
