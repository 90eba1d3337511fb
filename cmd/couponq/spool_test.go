package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/testutil"
)

// TestCouponqProcess is not a test: run by another test with
// COUPONQ_TEST_PROCESS=1, the test binary is couponq, its arguments after --.
func TestCouponqProcess(t *testing.T) {
	if os.Getenv("COUPONQ_TEST_PROCESS") != "1" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, flag.Args(), os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// couponqProcess starts the test binary as couponq with args, TMPDIR set
// to tmp.
func couponqProcess(t *testing.T, tmp string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestCouponqProcess$", "--"}, args...)...)
	cmd.Env = append(append(os.Environ(), "COUPONQ_TEST_PROCESS=1", "TMPDIR="+tmp), env...)
	return cmd
}

// TestEnqueueSIGKILLLeavesNoSpool: an enqueue reading standard input and
// SIGKILLed while it spools leaves no copy of the change data in TMPDIR.
func TestEnqueueSIGKILLLeavesNoSpool(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("the spool is unlinked through /proc/self/fd, on Linux only")
	}
	tmp := t.TempDir()
	cmd := couponqProcess(t, tmp, []string{"COUPONQ_REDIS_URL=redis://127.0.0.1:1/0"}, "enqueue", "--file", "-")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := `{"op":"get","product_coupon_id":"1000000013","brand_id":"120344"}` + "\n"
	if _, err := stdin.Write([]byte(strings.Repeat(line, 20000))); err != nil {
		t.Fatal(err)
	}
	// Standard input stays open: the process is inside the spool's copy.
	fds := fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid)
	var spool string
	testutil.Eventually(t, 20*time.Second, 10*time.Millisecond, func() error {
		ents, err := os.ReadDir(fds)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if target, err := os.Readlink(filepath.Join(fds, e.Name())); err == nil && strings.Contains(target, "couponq-stdin-") {
				spool = target
				return nil
			}
		}
		return fmt.Errorf("no spool open yet")
	}, "the enqueue never opened its spool")
	if !strings.HasSuffix(spool, " (deleted)") {
		t.Errorf("the spool %q has a name while the enqueue runs", spool)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("the enqueue exited 0 before the SIGKILL")
	}
	ents, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("TMPDIR holds %v after SIGKILL", ents)
	}
}

// TestStdinSpoolReadTwice: the unlinked spool reads whole, twice, and its
// cleanup releases it.
func TestStdinSpoolReadTwice(t *testing.T) {
	t.Parallel()
	want := strings.Repeat("x", 200_000)
	path, cleanup, err := changeFile("-", strings.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		b, err := os.ReadFile(path)
		if err != nil || string(b) != want {
			t.Fatalf("read %d: %d bytes, %v", i, len(b), err)
		}
	}
	cleanup()
	if _, err := os.Stat(path); err == nil && runtime.GOOS == "linux" {
		t.Errorf("%s still opens after cleanup", path)
	}
}

// TestRedisDownIsOneLine: a command that cannot reach Redis says so in
// one line of its own, without go-redis' line per failed dial.
func TestRedisDownIsOneLine(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"status", "--batch", "b1"},
		{"batches"},
		{"retry", "--batch", "b1"},
		{"cancel", "--batch", "b1"},
	} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			cmd := couponqProcess(t, t.TempDir(), []string{"COUPONQ_REDIS_URL=redis://127.0.0.1:1/0"}, args...)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit = %v, want status 1; output:\n%s", err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "couponq: ") || !strings.Contains(lines[0], "connection refused") {
				t.Errorf("output is %d lines, want one naming the refused connection:\n%s", len(lines), out)
			}
		})
	}
}
