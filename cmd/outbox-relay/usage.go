package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// oneLineUsageErrors makes every command answer bad usage the same way: one
// line saying what is wrong (with "did you mean --sink?" when a flag is
// close to a real one), exit code 2, and no help text pasted after it.
func oneLineUsageErrors(cmds []*cli.Command) {
	for _, cmd := range cmds {
		cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error {
			return usageErr(explainFlagError(commandPath(c), c.Command, err))
		}
		if len(cmd.Subcommands) == 0 {
			cmd.Before = noArguments(cmd.Before)
		} else if cmd.Action == nil {
			cmd.Action = unknownSubcommand
		}
		oneLineUsageErrors(cmd.Subcommands)
	}
}

// noArguments makes a command that takes only flags refuse an argument
// before anything else: flags after it would go unread ("migrate x
// --pg-url URL" parses no --pg-url) and a later error would mislead.
func noArguments(next cli.BeforeFunc) cli.BeforeFunc {
	return func(c *cli.Context) error {
		if c.Args().Present() {
			return usagef("%s takes no arguments, got %q; values go with their flags (%s --help lists them)",
				commandPath(c), c.Args().First(), commandPath(c))
		}
		if next != nil {
			return next(c)
		}
		return nil
	}
}

var (
	undefinedFlag = regexp.MustCompile(`^flag provided but not defined: -+(.+)$`)
	needsArgument = regexp.MustCompile(`^flag needs an argument: -+(.+)$`)
	invalidValue  = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-+([^:]+): (.*)$`)
)

// explainFlagError rewrites the flag package's messages ("flag provided but
// not defined: -sinkk") in the command's terms.
func explainFlagError(name string, cmd *cli.Command, err error) error {
	help := fmt.Sprintf("`%s --help` lists the flags", name)
	msg := err.Error()
	if m := undefinedFlag.FindStringSubmatch(msg); m != nil {
		if s := closest(m[1], flagNames(cmd)); s != "" {
			return fmt.Errorf("unknown flag --%s for %s; did you mean --%s?", m[1], name, s)
		}
		return fmt.Errorf("unknown flag --%s for %s; %s", m[1], name, help)
	}
	if m := needsArgument.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("--%s needs a value%s", m[1], wantFor(cmd, m[1]))
	}
	if m := invalidValue.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("--%s %q: not a valid value%s", m[2], m[1], wantFor(cmd, m[2]))
	}
	return fmt.Errorf("%s (%s)", strings.TrimSpace(msg), help)
}

// commandPath is the command line up to c's command: "outbox-relay slot drop".
func commandPath(c *cli.Context) string {
	var names []string
	for _, ctx := range c.Lineage() {
		if ctx.Command == nil || ctx.Command.Name == "" || ctx.Command.Name == c.App.Name {
			continue
		}
		if len(names) == 0 || names[len(names)-1] != ctx.Command.Name {
			names = append(names, ctx.Command.Name)
		}
	}
	slices.Reverse(names)
	return strings.Join(append([]string{c.App.Name}, names...), " ")
}

// wantFor says what kind of value a flag takes.
func wantFor(cmd *cli.Command, flag string) string {
	if cmd == nil {
		return ""
	}
	for _, f := range cmd.Flags {
		if !slices.Contains(f.Names(), flag) {
			continue
		}
		switch f.(type) {
		case *cli.DurationFlag:
			return "; want a duration with its unit, such as 10s, 500ms or 2m"
		case *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag:
			return "; want a whole number"
		case *cli.Float64Flag:
			return "; want a number"
		case *cli.BoolFlag:
			return "; want true or false"
		}
	}
	return ""
}

func flagNames(cmd *cli.Command) []string {
	if cmd == nil {
		return nil
	}
	var names []string
	for _, f := range cmd.Flags {
		names = append(names, f.Names()...)
	}
	return names
}

// closest returns the candidate nearest to s by edit distance, if it is
// near enough to be a typo (or s is a prefix of it), else "".
func closest(s string, candidates []string) string {
	best, bestD := "", 0
	for _, c := range candidates {
		d := editDistance(s, c)
		if strings.HasPrefix(c, s) && len(s) >= 3 {
			d = min(d, 1)
		}
		if best == "" || d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" || bestD > max(2, len(s)/4) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// unknownSubcommand answers `outbox-relay config` and `config exmaple`.
func unknownSubcommand(c *cli.Context) error {
	var names []string
	for _, sub := range c.Command.Subcommands {
		names = append(names, sub.Name)
	}
	path := commandPath(c)
	if !c.Args().Present() {
		return usagef("%s needs a command: %s", path, strings.Join(names, ", "))
	}
	arg := c.Args().First()
	if s := closest(arg, names); s != "" {
		return usagef("unknown command %s %s; did you mean %s %s?", path, arg, path, s)
	}
	return usagef("unknown command %s %s: want %s", path, arg, strings.Join(names, ", "))
}

// unknownCommand is the root's answer to `outbox-relay stauts`.
func unknownCommand(c *cli.Context) error {
	if !c.Args().Present() {
		return cli.ShowAppHelp(c)
	}
	var names []string
	for _, cmd := range c.App.Commands {
		names = append(names, cmd.Names()...)
	}
	arg := c.Args().First()
	if s := closest(arg, names); s != "" {
		return usagef("unknown command %q; did you mean %s?", arg, s)
	}
	return usagef("unknown command %q; `outbox-relay --help` lists the commands", arg)
}

// oneLine is err's message on one line: the lines of errors.Join's and of
// servers' multi-line messages joined with "; ", each repeated line once.
func oneLine(err error) string {
	var parts []string
	seen := map[string]bool{}
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !seen[l] {
			seen[l] = true
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}
