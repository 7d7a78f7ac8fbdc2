package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
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
