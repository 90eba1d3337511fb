package wechatpaytest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriteEnvKeyFilesPrivate: WriteEnv's key files end 0600 with the new
// keys whatever was at their paths: a 0644 file, or a symlink, whose target
// stays untouched.
func TestWriteEnvKeyFilesPrivate(t *testing.T) {
	t.Parallel()
	s := NewServer(t)
	for _, tc := range []string{"0644 file", "symlink"} {
		t.Run(tc, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			target := filepath.Join(t.TempDir(), "victim")
			if err := os.WriteFile(target, []byte("victim"), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, n := range []string{"apiclient_key.pem", "pub_key.pem"} {
				p := filepath.Join(dir, n)
				var err error
				if tc == "symlink" {
					err = os.Symlink(target, p)
				} else if err = os.WriteFile(p, []byte("old"), 0o644); err == nil {
					err = os.Chmod(p, 0o644)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			env, err := s.WriteEnv(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"WECHATPAY_MCH_PRIVATE_KEY_FILE", "WECHATPAY_PUBLIC_KEY_FILE"} {
				fi, err := os.Lstat(env[k])
				if err != nil {
					t.Fatal(err)
				}
				if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
					t.Errorf("%s: mode %v, want a regular file 0600", k, fi.Mode())
				}
				if b, _ := os.ReadFile(env[k]); !strings.HasPrefix(string(b), "-----BEGIN ") {
					t.Errorf("%s holds %.20q", k, b)
				}
			}
			if b, _ := os.ReadFile(target); string(b) != "victim" {
				t.Errorf("the symlink's target was written: %.40q", b)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 2 {
				t.Errorf("files left in dir: %v", ents)
			}
		})
	}
}
