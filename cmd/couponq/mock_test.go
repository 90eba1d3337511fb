package main

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spf13/pflag"
)

// TestHelpFitsEightyColumns: every command's --help reads on an 80-column
// terminal.
func TestHelpFitsEightyColumns(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"", "worker", "enqueue", "status", "get", "mock", "demo"} {
		args := []string{"--help"}
		if cmd != "" {
			args = []string{cmd, "--help"}
		}
		r := (&bundle{env: map[string]string{}}).run(t, "", args...)
		if r.code != 0 {
			t.Fatalf("%s: exit %d: %s", cmd, r.code, r.stderr)
		}
		for _, line := range strings.Split(r.stdout, "\n") {
			if n := utf8.RuneCountInString(line); n > 80 {
				t.Errorf("couponq %s --help: %d columns: %s", cmd, n, line)
			}
		}
	}
}

// TestMockEnvPassesEveryFlag: the background process of --env gets every
// setting, so a flag added later is not silently dropped there.
func TestMockEnvPassesEveryFlag(t *testing.T) {
	t.Parallel()
	c := mockConfig{PublicURL: "http://127.0.0.1:8443"}
	args := c.childArgs("/tmp/ready")
	newMockCmd(&env{}).Flags().VisitAll(func(f *pflag.Flag) {
		switch f.Name {
		case "env", "check", "help": // what the background process must not do
			return
		case "remove-dir": // only when the parent made the directory: TestMockRemovesTheDirItMade
			return
		}
		if !slices.Contains(args, "--"+f.Name) {
			t.Errorf("--%s is not passed to the background mock: %q", f.Name, args)
		}
	})
}
