package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/lockservice/lockservice/service"
)

// versionText is what --version prints: the service version, then the
// module version and the commit the binary was built from
// (runtime/debug.ReadBuildInfo: "(devel)" for a build inside the
// repository, the tag for go install ...@version; the commit is there when
// go build ran in a git checkout, "+dirty" when it had local changes), and
// the Go version.
func versionText() string { return versionOf(debug.ReadBuildInfo()) }

// versionOf is versionText for the build information bi (ok false: none).
func versionOf(bi *debug.BuildInfo, ok bool) string {
	var parts []string
	if ok {
		if bi.Main.Version != "" {
			parts = append(parts, "module "+bi.Main.Version)
		}
		var rev, at string
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if rev != "" {
			if dirty {
				rev += "+dirty"
			}
			if at != "" {
				rev += " of " + at
			}
			parts = append(parts, "commit "+rev)
		}
	}
	parts = append(parts, runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH)
	return fmt.Sprintf("lockservice %s (%s)", service.Version, strings.Join(parts, ", "))
}
