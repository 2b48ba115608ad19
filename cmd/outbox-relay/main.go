// Command outbox-relay streams transactional-outbox rows from PostgreSQL's
// write-ahead log to Kafka.
//
// It is the only place that knows every package: it turns flags, the
// environment and config files into config structs and wires the parts.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes, as the README documents them.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int { return runTo(args, os.Stdout, os.Stderr) }

// runTo is run with the output and error streams given.
func runTo(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	app := newApp()
	app.Writer, app.ErrWriter = stdout, stderr
	err := app.RunContext(ctx, args)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "outbox-relay: %s\n", oneLine(err))
	if isUsage(err) {
		return exitUsage
	}
	return exitFailure
}

func newApp() *cli.App {
	app := &cli.App{
		Name:    "outbox-relay",
		Usage:   "stream transactional-outbox rows from the PostgreSQL WAL to Kafka",
		Version: versionText(),
		Action:  unknownCommand,
		// Errors are printed once, by run, with the exit code it chooses.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageErr(explainFlagError(c.App.Name, c.Command, err))
		},
		Commands: []*cli.Command{
			runCommand(),
			sharedSettings(migrateCommand()),
			slotCommand(),
			demoCommand(),
			configCommand(),
			sharedSettings(statusCommand()),
			versionCommand(),
		},
	}
	oneLineUsageErrors(app.Commands)
	return app
}

// usageError marks an error as bad usage or configuration: exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usageErr(err error) error {
	if err == nil {
		return nil
	}
	return usageError{err}
}

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func isUsage(err error) bool {
	var u usageError
	if errors.As(err, &u) {
		return true
	}
	var p interface{ ConfigProblem() bool }
	return errors.As(err, &p) && p.ConfigProblem()
}
