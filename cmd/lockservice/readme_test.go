package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
)

var updateREADME = flag.Bool("update", false, "rewrite the README's configuration table from the flags")

const (
	tableBegin = "<!-- flags:begin: generated from the flags of serve; go test ./cmd/lockservice -run TestREADMEConfigTable -update -->"
	tableEnd   = "<!-- flags:end -->"
)

// flagTable renders the flags of fs as the README's table: flag, variable,
// default, meaning.
func flagTable(fs *flag.FlagSet) string {
	var b strings.Builder
	b.WriteString("| flag | environment | default | meaning |\n|---|---|---|---|\n")
	cell := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	code := func(s string) string {
		if s == "" {
			return ""
		}
		return "`" + s + "`"
	}
	fs.VisitAll(func(f *flag.Flag) {
		env := code(envName(f.Name))
		if noEnv[f.Name] {
			env = "(none)"
		}
		fmt.Fprintf(&b, "| `-%s` | %s | %s | %s |\n", dashes(f.Name), env, cell(code(f.DefValue)), cell(f.Usage))
	})
	return b.String()
}

// TestREADMEConfigTable: the README's configuration table is the flags of
// serve, so it cannot drift from them. -update rewrites it.
func TestREADMEConfigTable(t *testing.T) {
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := flagTable(c.ops.flags)
	const path = "../../README.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i, j := strings.Index(readme, tableBegin), strings.Index(readme, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q block", tableBegin, tableEnd)
	}
	got := readme[i+len(tableBegin)+1 : j]
	if got == want {
		return
	}
	if *updateREADME {
		readme = readme[:i+len(tableBegin)+1] + want + readme[j:]
		if err := os.WriteFile(path, []byte(readme), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's configuration table differs from the flags; run go test ./cmd/lockservice -run TestREADMEConfigTable -update\ngot:\n%s\nwant:\n%s", got, want)
}

// TestREADMEQuickStartPastes sends the README quick start's nats req
// lines, in order, to a fresh embedded server, and checks each answer has
// the fields printed under it with the same values (expires_at: a time,
// not the same one): the example works when pasted.
func TestREADMEQuickStartPastes(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	i := strings.Index(readme, "## Quick start")
	j := strings.Index(readme[i+1:], "\n## ")
	if i < 0 || j < 0 {
		t.Fatal("README.md has no Quick start section")
	}
	lines := strings.Split(readme[i:i+1+j], "\n")
	port := testsrv.FreePort(t)
	startServe(t, []string{"--port", strconv.Itoa(port), "--data-dir", t.TempDir()}, "req lock.acquire.demo", false)
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	n := 0
	for k, line := range lines {
		cmd, ok := strings.CutPrefix(line, "$ nats req ")
		if !ok {
			continue
		}
		subject, body, ok := strings.Cut(cmd, " ")
		if !ok || len(body) < 2 || body[0] != '\'' || body[len(body)-1] != '\'' || k+1 >= len(lines) {
			t.Fatalf("README line %q: want $ nats req SUBJECT 'BODY' and the answer below", line)
		}
		n++
		m, err := nc.Request(subject, []byte(body[1:len(body)-1]), 10*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		var got, want map[string]any
		if err := json.Unmarshal(m.Data, &got); err != nil {
			t.Fatalf("%s: answer %q (%v)", line, m.Data, m.Header)
		}
		if err := json.Unmarshal([]byte(lines[k+1]), &want); err != nil {
			t.Fatalf("README answer to %s is not JSON: %q", line, lines[k+1])
		}
		for key := range got {
			if _, ok := want[key]; !ok {
				t.Errorf("%s: the answer has %s, the README does not print it", line, key)
			}
		}
		for key, w := range want {
			g, ok := got[key]
			switch {
			case !ok:
				t.Errorf("%s: the README prints %s, the answer has none", line, key)
			case key == "expires_at":
				if _, err := time.Parse(time.RFC3339, fmt.Sprint(g)); err != nil {
					t.Errorf("%s: expires_at %v", line, g)
				}
			case fmt.Sprint(g) != fmt.Sprint(w):
				t.Errorf("%s: %s = %v, the README prints %v", line, key, g, w)
			}
		}
	}
	if n < 4 {
		t.Errorf("%d nats req lines in the Quick start, want at least 4", n)
	}
}
