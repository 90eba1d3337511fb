package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lmittmann/tint"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// Exit statuses, as the README lists them.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// exitError carries an exit status. A nil err prints nothing.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageErrorf reports bad usage or invalid input: exit status 2.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// exitCode maps run's error to the process exit status, printing it once.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	code := exitFailure
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		if ee.err == nil {
			return code
		}
	}
	// Library errors start with "couponq: " too: say it once.
	fmt.Fprintf(stderr, "couponq: %s\n", strings.TrimPrefix(err.Error(), "couponq: "))
	return code
}

// env is what every subcommand may read of the process.
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// run is the whole binary, testable in-process.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) error {
	quietRedisLogOnce.Do(func() { redis.SetLogger(quietRedisLog{}) })
	e := &env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "couponq",
		Short: "Reliable bulk changes to WeChat Pay product coupons through a Redis queue",
		Long: `couponq applies bulk changes to WeChat Pay product coupons (商品券) reliably.

Producers enqueue coupon:update, coupon:deactivate and coupon:get tasks into Redis
(couponq enqueue); workers call the signed WeChat Pay API v3 with retries and
exponential backoff (couponq worker); each outcome lands in the Redis hash
couponq:result:<task_id>, which producers poll (couponq status).

Every flag also reads an environment variable, named in its help.
Exit status: 0 success; 1 runtime failure, or (enqueue, status --wait) a batch
where something did not succeed: a task failed or canceled, a conflict, or a
duplicate of a failed or canceled task; 2 bad usage or invalid input.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unknown command %q (see couponq --help)", args[0])
			}
			return cmd.Help()
		},
	}
	// Flag help is wrapped, and the prose of every command's help
	// reflowed, so that --help fits 80 columns.
	root.SetUsageTemplate(strings.ReplaceAll(root.UsageTemplate(), ".FlagUsages", ".FlagUsagesWrapped 80"))
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErrorf("%v", err) })
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(
		newWorkerCmd(e),
		newEnqueueCmd(e),
		newStatusCmd(e),
		newBatchesCmd(e),
		newRetryCmd(e),
		newCancelCmd(e),
		newGetCmd(e),
		newMockCmd(e),
		newDemoCmd(e),
	)
	for _, c := range root.Commands() {
		c.Long = reflow(c.Long, 80)
	}
	root.Long = reflow(root.Long, 80)
	err := root.ExecuteContext(ctx)
	var ee *exitError
	if err != nil && !errors.As(err, &ee) {
		// cobra's own usage errors are plain errors; give them status 2.
		for _, p := range []string{"unknown command", "required flag", "unknown flag", "unknown shorthand", "if any flags in the group", "flag needs an argument"} {
			if strings.HasPrefix(err.Error(), p) {
				return usageErrorf("%v (see couponq --help)", err)
			}
		}
	}
	return err
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q (see %s --help)", cmd.CommandPath(), args, cmd.CommandPath())
	}
	return nil
}

// envFlag names a flag, the environment variable it falls back to and, for
// commands that build a worker.Config, the field it sets.
type envFlag struct{ flag, env, field string }

// envFlags binds flags to environment variables: a flag not given on the
// command line takes the variable's value, validated like the flag.
type envFlags []envFlag

func (ef *envFlags) add(fs *pflag.FlagSet, flag, env string) {
	*ef = append(*ef, envFlag{flag: flag, env: env})
	fs.Lookup(flag).Usage += " (env " + env + ")"
}

// describe adds each variable to its flag's help.
func (ef envFlags) describe(fs *pflag.FlagSet) {
	for _, b := range ef {
		fs.Lookup(b.flag).Usage += " (env " + b.env + ")"
	}
}

func (ef envFlags) apply(fs *pflag.FlagSet, getenv func(string) string) error {
	for _, b := range ef {
		if fs.Changed(b.flag) {
			continue
		}
		v := getenv(b.env)
		if v == "" {
			continue
		}
		if err := fs.Set(b.flag, v); err != nil {
			return usageErrorf("invalid %s=%q: %v", b.env, v, err)
		}
	}
	return nil
}

// newLogger returns the slog logger of --log-format: colour text (tint) on a
// terminal, JSON otherwise ("auto"), or as forced by "text"/"json".
func newLogger(format string, w io.Writer, level slog.Level) (*slog.Logger, error) {
	switch format {
	case "auto", "":
		if isTerminal(w) {
			return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly})), nil
		}
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), nil
	case "text":
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly, NoColor: !isTerminal(w)})), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})), nil
	}
	return nil, usageErrorf("invalid --log-format %q: use auto, text or json", format)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// reflow wraps each paragraph of prose in s to width columns; indented lines
// (lists, examples) are kept as they are.
func reflow(s string, width int) string {
	lines := strings.Split(s, "\n")
	var out, para []string
	flush := func() {
		if len(para) == 0 {
			return
		}
		line := ""
		for _, w := range strings.Fields(strings.Join(para, " ")) {
			switch {
			case line == "":
				line = w
			case utf8.RuneCountInString(line)+1+utf8.RuneCountInString(w) > width:
				out = append(out, line)
				line = w
			default:
				line += " " + w
			}
		}
		out = append(out, line)
		para = para[:0]
	}
	for _, l := range lines {
		if l == "" || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t") {
			flush()
			out = append(out, l)
			continue
		}
		para = append(para, l)
	}
	flush()
	return strings.Join(out, "\n")
}
