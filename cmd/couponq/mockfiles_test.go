package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/testutil"
)

// runMockUntilReady runs couponq mock in-process with args until its
// settings are written to ready, and returns a stop that ends it.
func runMockUntilReady(t *testing.T, ready string, args ...string) (stop func() result) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan result, 1)
	go func() {
		done <- runWith(ctx, func(string) string { return "" }, "", append([]string{"mock", "--coupons", "1", "--ready-file", ready}, args...)...)
	}()
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		select {
		case r := <-done:
			done <- r
			t.Fatalf("mock exited %d: %s", r.code, r.stderr)
		default:
		}
		if b, err := os.ReadFile(ready); err != nil || !strings.Contains(string(b), "WECHATPAY_") {
			return errors.New("no settings yet")
		}
		return nil
	}, "mock never wrote its settings")
	return func() result { cancel(); return <-done }
}

// TestMockDirKeyFilesPrivate: --dir gets its key files anew with mode 0600:
// an existing 0644 apiclient_key.pem ends 0600 holding the new key, and a
// symlink planted there is replaced, its target untouched.
func TestMockDirKeyFilesPrivate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, dir string) (target string)
	}{
		{"existing 0644 files", func(t *testing.T, dir string) string {
			for _, n := range []string{"apiclient_key.pem", "pub_key.pem", "env.sh"} {
				if err := os.WriteFile(filepath.Join(dir, n), []byte("old"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(filepath.Join(dir, n), 0o644); err != nil { // whatever the umask
					t.Fatal(err)
				}
			}
			return ""
		}},
		{"symlinks", func(t *testing.T, dir string) string {
			target := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(target, []byte("victim"), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{"apiclient_key.pem", "pub_key.pem", "env.sh"} {
				if err := os.Symlink(target, filepath.Join(dir, n)); err != nil {
					t.Fatal(err)
				}
			}
			return target
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			target := tc.plant(t, dir)
			stop := runMockUntilReady(t, filepath.Join(dir, "env.sh"), "--dir", dir)
			for n, kind := range map[string]string{"apiclient_key.pem": "PRIVATE KEY", "pub_key.pem": "PUBLIC KEY", "env.sh": "WECHATPAY_MCH_PRIVATE_KEY_FILE"} {
				p := filepath.Join(dir, n)
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatal(err)
				}
				if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v, want a regular file 0600", n, fi.Mode())
				}
				if b, _ := os.ReadFile(p); !strings.Contains(string(b), kind) {
					t.Errorf("%s does not hold the new %s: %.40q", n, kind, b)
				}
			}
			if target != "" {
				if b, _ := os.ReadFile(target); string(b) != "victim" {
					t.Errorf("the symlink's target was written: %.40q", b)
				}
			}
			if r := stop(); r.code != 0 {
				t.Errorf("mock exit %d: %s", r.code, r.stderr)
			}
			// --dir is the user's: it stays, with the keys.
			if _, err := os.Stat(filepath.Join(dir, "apiclient_key.pem")); err != nil {
				t.Errorf("--dir emptied at exit: %v", err)
			}
		})
	}
}

// TestCreatePrivate: the background mock's log is created the same way: an
// existing 0644 mock.log ends 0600 and empty, a symlink is not followed.
func TestCreatePrivate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(target, []byte("victim"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "old.log")
	if err := os.WriteFile(old, []byte("old secrets"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "mock.log")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{old, link, filepath.Join(dir, "new.log")} {
		f, err := createPrivate(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("log line\n"); err != nil {
			t.Fatal(err)
		}
		f.Close()
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want a regular file 0600", p, fi.Mode())
		}
		if b, _ := os.ReadFile(p); string(b) != "log line\n" {
			t.Errorf("%s holds %q", p, b)
		}
	}
	if b, _ := os.ReadFile(target); string(b) != "victim" {
		t.Errorf("the symlink's target was written: %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 3 {
		t.Errorf("temporary files left: %v", ents)
	}
}

// TestMockRemovesTheDirItMade: without --dir, the couponq-mock-* directory
// the mock made goes when it stops (SIGTERM, as `kill $COUPONQ_MOCK_PID`);
// the background mock of --env is told so by --remove-dir.
func TestMockRemovesTheDirItMade(t *testing.T) {
	t.Parallel()
	tmp, out := t.TempDir(), t.TempDir()
	ready := filepath.Join(out, "env.sh")
	cmd := couponqProcess(t, tmp, nil, "mock", "--coupons", "1", "--ready-file", ready)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		if fi, err := os.Stat(ready); err != nil || fi.Size() == 0 {
			return errors.New("no settings yet")
		}
		return nil
	}, "mock never wrote its settings")
	made, _ := filepath.Glob(filepath.Join(tmp, "couponq-mock-*", "apiclient_key.pem"))
	if len(made) != 1 {
		t.Fatalf("key files in TMPDIR: %v", made)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mock after SIGTERM: %v", err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("TMPDIR holds %v after the mock stopped", ents)
	}

	// The background mock gets --remove-dir only for a directory its
	// parent made; --remove-dir removes it at exit, in process too.
	if args := (&mockConfig{Dir: "/x"}).childArgs("r"); strings.Contains(strings.Join(args, " "), "--remove-dir") {
		t.Errorf("--remove-dir for a --dir of the user's: %q", args)
	}
	if args := (&mockConfig{Dir: "/x", removeDir: true}).childArgs("r"); !strings.Contains(strings.Join(args, " "), "--remove-dir") {
		t.Errorf("no --remove-dir for a directory the parent made: %q", args)
	}
	dir := t.TempDir()
	stop := runMockUntilReady(t, filepath.Join(out, "env2.sh"), "--dir", dir, "--remove-dir")
	if r := stop(); r.code != 0 {
		t.Fatalf("mock exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("--remove-dir left %s: %v", dir, err)
	}
}
