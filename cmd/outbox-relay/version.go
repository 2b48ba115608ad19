package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// commit may be set at build time with -ldflags "-X main.commit=..." where
// Go cannot stamp the build with the commit itself (a git worktree, a
// source tarball); the stamp, when present, wins.
var commit = "unknown"

// versionText is what --version and `outbox-relay version` print after the
// name: the version, the commit it was built from and the Go version.
func versionText() string {
	rev, modified := commit, ""
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					modified = " (with uncommitted changes)"
				}
			}
		}
	}
	return fmt.Sprintf("%s, commit %s%s, %s", version, rev, modified, runtime.Version())
}

// versionCommand is `outbox-relay version`, the same as --version.
func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print the version, the commit it was built from and the Go version",
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usagef("version takes no arguments")
			}
			cli.ShowVersion(c)
			return nil
		},
	}
}
