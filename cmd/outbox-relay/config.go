package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
	"go.yaml.in/yaml/v3"
)

// configFlag names a YAML file whose keys are the command's flag names:
//
//	pg-url: postgres://relay@db/app?sslmode=verify-full
//	kafka-brokers: [k1:9092, k2:9092]
//
// Precedence: flag > environment > file > default.
func configFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "config",
		Usage:   "YAML config file; keys are flag names (precedence: flag > env > file > default)",
		EnvVars: env("CONFIG"),
	}
}

// applyConfigFile sets every flag the file names that was given neither on
// the command line nor in the environment. It runs as the command's Before.
func applyConfigFile(c *cli.Context) error {
	path := c.String("config")
	if path == "" {
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return usagef("reading config file: %w", err)
	}
	values, err := parseConfigFile(path, data)
	if err != nil {
		return usageErr(err)
	}
	known := map[string]cli.Flag{}
	for _, f := range c.Command.Flags {
		for _, name := range f.Names() {
			known[name] = f
		}
	}
	// One file serves every command: each takes the keys it has flags for
	// and passes over the other commands' (kafka-brokers means nothing to
	// migrate).
	elsewhere := map[string]bool{}
	walkCommands(c.App.Commands, func(cmd *cli.Command) {
		for _, f := range cmd.Flags {
			for _, name := range f.Names() {
				elsewhere[name] = true
			}
		}
	})
	for _, v := range values {
		f, ok := known[v.key]
		if !ok && elsewhere[v.key] && v.key != "config" && v.key != "help" {
			continue
		}
		if !ok || v.key == "config" || v.key == "help" {
			return usagef("%s:%d:%d: unknown key %q (keys are flag names, as `outbox-relay %s --help` lists them)", path, v.line, v.col, v.key, c.Command.FullName())
		}
		if c.IsSet(v.key) || envSet(f) {
			continue // flag and environment win over the file
		}
		for _, s := range v.values {
			if err := c.Set(v.key, s); err != nil {
				return usagef("%s:%d:%d: key %q: %q is not a valid value%s", path, v.line, v.col, v.key, s, wantFor(c.Command, v.key))
			}
		}
	}
	return nil
}

// walkCommands calls fn for each command and subcommand.
func walkCommands(cmds []*cli.Command, fn func(*cli.Command)) {
	for _, cmd := range cmds {
		fn(cmd)
		walkCommands(cmd.Subcommands, fn)
	}
}

// sharedSettings gives a command that takes some of run's settings (the
// PostgreSQL URL, slot, publication, table...) the same sources as run: a
// --config file besides the flags and OUTBOX_RELAY_* variables.
func sharedSettings(cmd *cli.Command) *cli.Command {
	cmd.Flags = append([]cli.Flag{configFlag()}, cmd.Flags...)
	cmd.Before = applyConfigFile
	return cmd
}

type configValue struct {
	key       string
	values    []string
	line, col int
}

// parseConfigFile reads a flat YAML mapping of flag names to scalars or
// lists of scalars. Errors carry the file's line and column.
func parseConfigFile(path string, data []byte) ([]configValue, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parsing config file %s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil, nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d:%d: config file must be a mapping of flag names to values", path, root.Line, root.Column)
	}
	seen := map[string]bool{}
	var out []configValue
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if seen[k.Value] {
			return nil, fmt.Errorf("%s:%d:%d: key %q given twice", path, k.Line, k.Column, k.Value)
		}
		seen[k.Value] = true
		cv := configValue{key: k.Value, line: k.Line, col: k.Column}
		switch v.Kind {
		case yaml.ScalarNode:
			cv.values = []string{v.Value}
		case yaml.SequenceNode:
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("%s:%d:%d: key %q: list items must be plain values", path, item.Line, item.Column, k.Value)
				}
				cv.values = append(cv.values, item.Value)
			}
		default:
			return nil, fmt.Errorf("%s:%d:%d: key %q: want a value or a list of values", path, v.Line, v.Column, k.Value)
		}
		out = append(out, cv)
	}
	return out, nil
}

func envSet(f cli.Flag) bool {
	ef, ok := f.(interface{ GetEnvVars() []string })
	if !ok {
		return false
	}
	for _, name := range ef.GetEnvVars() {
		if _, ok := os.LookupEnv(name); ok {
			return true
		}
	}
	return false
}

// exampleConfig renders every flag of cmd as a commented YAML file; it
// backs relay.example.yaml so the example cannot drift from the flags.
func exampleConfig(cmd *cli.Command) string {
	var b strings.Builder
	b.WriteString("# outbox-relay " + cmd.Name + " configuration. Keys are flag names; every key is optional.\n")
	b.WriteString("# Precedence: command-line flag > OUTBOX_RELAY_* environment variable > this file > default.\n")
	for _, f := range cmd.Flags {
		name := f.Names()[0]
		if name == "config" || name == "help" {
			continue
		}
		usage := ""
		if df, ok := f.(cli.DocGenerationFlag); ok {
			usage = df.GetUsage()
			if ev := df.GetEnvVars(); len(ev) > 0 {
				usage += " (env " + strings.Join(ev, ", ") + ")"
			}
		}
		b.WriteString("\n## " + usage + "\n")
		b.WriteString("# " + name + ": " + defaultText(f) + "\n")
	}
	return b.String()
}

func defaultText(f cli.Flag) string {
	df, ok := f.(cli.DocGenerationFlag)
	if !ok {
		return ""
	}
	if bf, ok := f.(*cli.BoolFlag); ok {
		return strconv.FormatBool(bf.Value)
	}
	if sf, ok := f.(*cli.StringSliceFlag); ok {
		if sf.Value == nil || len(sf.Value.Value()) == 0 {
			return "[]"
		}
		return "[" + strings.Join(sf.Value.Value(), ", ") + "]"
	}
	v := df.GetValue()
	if v == "" {
		return `""`
	}
	if _, err := strconv.ParseFloat(v, 64); err == nil || v == "true" || v == "false" {
		return v
	}
	return strconv.Quote(v)
}

// configCommand is `outbox-relay config example`: prints a config file
// listing every run flag with its default and environment variable.
func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "configuration helpers",
		Subcommands: []*cli.Command{{
			Name:  "example",
			Usage: "print a YAML config file listing every `run` flag with its default",
			Action: func(c *cli.Context) error {
				_, err := io.WriteString(c.App.Writer, exampleConfig(runCommand()))
				return err
			},
		}},
	}
}
