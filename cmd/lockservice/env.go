package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// Every flag of every command can come from the environment: --max-ttl
// from LOCKSERVICE_MAX_TTL, -c from LOCKSERVICE_C. A flag on the command
// line wins over its variable; an empty variable counts as unset.

// envPrefix starts the name of every variable that sets a flag.
const envPrefix = "LOCKSERVICE_"

// noEnv lists the flags no variable sets: a variable left in the
// environment must not turn a server into a command that prints and exits.
var noEnv = map[string]bool{"version": true}

// envName is the variable that sets the flag name: LOCKSERVICE_ and the
// name in upper case, dashes as underscores.
func envName(name string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// applyEnv sets each flag of fs that args did not set from its variable,
// read with lookup (os.LookupEnv). A value the flag refuses is an error
// naming the variable.
func applyEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] || noEnv[f.Name] {
			return
		}
		v, ok := lookup(envName(f.Name))
		if !ok || v == "" {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("%s=%q: %v (the variable sets -%s)", envName(f.Name), v, e, dashes(f.Name))
		}
	})
	return err
}

// dashes is how a flag is written: -c, --max-ttl.
func dashes(name string) string {
	if len(name) == 1 {
		return name
	}
	return "-" + name
}

// explicitFlags returns the flags of fs set on the command line or by a
// variable.
func explicitFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// parseWithEnv parses args with fs, then sets the flags args did not set
// from the environment.
func parseWithEnv(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	return applyEnv(fs, os.LookupEnv)
}
