// Command otter ships Nix closures to fleets of small ARM devices as
// signed, reproducible OCI artifacts. See README.md and docs/cli.md.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// run executes otter with args and returns the process's exit code.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app := newApp(stdout, stderr)
	defer cleanupArchives()
	err := app.RunContext(ctx, reorderArgs(app, args))
	if err == nil {
		return 0
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("%w: %w", errInterrupted, err)
	}
	code := exitCode(err)
	reportError(stdout, stderr, args, err, code)
	return code
}

// commonFlags are accepted before and after the command name.
func commonFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "json", Usage: "print a typed JSON result on stdout (for CI)"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "say more on stderr"},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print only errors and the result"},
		&cli.BoolFlag{Name: "no-progress", Usage: "no progress bars, even on a terminal"},
	}
}

func newApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                 "otter",
		Usage:                "small, signed, atomic updates of Nix closures for fleets of ARM devices",
		Writer:               stdout,
		ErrWriter:            stderr,
		Flags:                commonFlags(),
		HideVersion:          true,
		EnableBashCompletion: true,
		// Errors come back to run, which maps them to exit codes.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageErrorf("%v", err)
		},
		Commands: []*cli.Command{
			versionCommand(),
			bundleCommand(),
			pushCommand(),
			inspectCommand(),
			extractCommand(),
			demoCommand(),
			binfmtCommand(),
			buildCommand(),
			keygenCommand(),
			signCommand(),
			haltCommand(),
			verifyCommand(),
			trustCommand(),
			exportCommand(),
			deltaCommand(),
			diffCommand(),
			applyCommand(),
			updateCommand(),
			confirmCommand(),
			agentCommand(),
			statusCommand(),
			rollbackCommand(),
			gcCommand(),
			recoverCommand(),
			imageCommand(),
			releaseCommand(),
			manCommand(),
		},
	}
	var addCommon func([]*cli.Command)
	addCommon = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.Flags = append(c.Flags, commonFlags()...)
			c.OnUsageError = app.OnUsageError
			addCommon(c.Subcommands)
		}
	}
	addCommon(app.Commands)
	return app
}
