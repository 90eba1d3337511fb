package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/testutil"
)

// monitoringStatus GETs /monitoring/api/queues on addr, with user:pass when given.
func monitoringStatus(addr string, auth ...string) (int, error) {
	req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/monitoring/api/queues", nil)
	if err != nil {
		return 0, err
	}
	if len(auth) == 2 {
		req.SetBasicAuth(auth[0], auth[1])
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestMonitoringPasswordOutOfPs: the monitoring password can come from a
// file or the environment, without a warning (a file others can read gets
// one); given on the command line it works but is warned about, as ps
// shows it. The password never reaches the log.
func TestMonitoringPasswordOutOfPs(t *testing.T) {
	t.Parallel()
	const secret = "pw-7f3a9c"
	tests := []struct {
		name     string
		env      map[string]string
		args     func(b *bundle) []string
		warn     string // in stderr; "" = no warning line at all
		fileMode os.FileMode
	}{
		{"file", nil, func(b *bundle) []string {
			return []string{"--monitoring-auth-file", b.writeFile(t, "auth-file", "ops:"+secret+"\n")}
		}, "", 0},
		{"file others can read", nil, func(b *bundle) []string {
			f := b.writeFile(t, "auth-open", "ops:"+secret+"\r\n")
			if err := os.Chmod(f, 0o644); err != nil {
				t.Fatal(err)
			}
			return []string{"--monitoring-auth-file", f}
		}, "readable by other users", 0},
		{"file by variable", nil, func(b *bundle) []string {
			b.env["COUPONQ_MONITORING_AUTH_FILE"] = b.writeFile(t, "auth-env", "ops:"+secret)
			return nil
		}, "", 0},
		{"variable", map[string]string{"COUPONQ_MONITORING_AUTH": "ops:" + secret}, func(*bundle) []string { return nil }, "", 0},
		{"command line", nil, func(*bundle) []string { return []string{"--monitoring-auth", "ops:" + secret} }, "visible to every user of this host", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, 1)
			for k, v := range tt.env {
				b.env[k] = v
			}
			addr := freeAddr(t)
			p := b.startProc(t, append([]string{"worker", "--rate", "0", "--http", addr, "--log-format", "json"}, tt.args(b)...)...)
			testutil.Eventually(t, 20*time.Second, 20*time.Millisecond, func() error {
				if r, done := p.exited(); done {
					t.Fatalf("worker exited %d: %s", r.code, r.stderr)
				}
				if code, err := monitoringStatus(addr, "ops", secret); err != nil || code != http.StatusOK {
					return fmt.Errorf("with the password: %d %v", code, err)
				}
				return nil
			}, "monitoring with the password")
			if code, err := monitoringStatus(addr, "ops", "wrong"); err != nil || code != http.StatusUnauthorized {
				t.Errorf("a wrong password: %d %v, want 401", code, err)
			}
			r := p.stop()
			if strings.Contains(r.stderr, secret) {
				t.Errorf("the password reached the log:\n%s", r.stderr)
			}
			warnings := strings.Count(r.stderr, `"level":"WARN"`)
			switch {
			case tt.warn == "" && warnings != 0:
				t.Errorf("unexpected warnings:\n%s", r.stderr)
			case tt.warn != "" && (warnings != 1 || !strings.Contains(r.stderr, tt.warn)):
				t.Errorf("want one warning with %q:\n%s", tt.warn, r.stderr)
			}
		})
	}
}

// TestMonitoringAuthFileErrors: a bad --monitoring-auth-file is one usage
// line (exit 2) that names the flag and never repeats the file's content.
func TestMonitoringAuthFileErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	const secret = "pw-91be0d"
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"missing file", nil, []string{"--monitoring-auth-file", "/nonexistent/auth"}, "--monitoring-auth-file (COUPONQ_MONITORING_AUTH_FILE): open /nonexistent/auth"},
		{"no colon", nil, []string{"--monitoring-auth-file", b.writeFile(t, "nocolon", secret+"\n")}, "must hold one line user:password"},
		{"empty password", nil, []string{"--monitoring-auth-file", b.writeFile(t, "nopass", "ops:\n")}, "must hold one line user:password"},
		{"two lines", nil, []string{"--monitoring-auth-file", b.writeFile(t, "twolines", "ops:"+secret+"\nmore\n")}, "must hold one line"},
		{"both set", map[string]string{"COUPONQ_MONITORING_AUTH": "ops:" + secret}, []string{"--monitoring-auth-file", b.writeFile(t, "both", "ops:"+secret)}, "are both set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{}
			for k, v := range b.env {
				env[k] = v
			}
			for k, v := range tc.env {
				env[k] = v
			}
			r := runWith(t.Context(), func(k string) string { return env[k] }, "", append([]string{"worker", "--http", "127.0.0.1:0"}, tc.args...)...)
			if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", r.code, r.stderr, tc.want)
			}
			if strings.Contains(r.stderr, secret) {
				t.Errorf("the error repeats the file's content: %q", r.stderr)
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 0 {
				t.Errorf("want one line, got %d: %q", n+1, r.stderr)
			}
		})
	}
}

// TestWarnListener: the worker's start logs one warning for a listener
// other hosts reach without monitoring auth (the test does not bind one:
// ListenerWarnings reads the address the listener reports).
func TestWarnListener(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr string
		auth bool
		want string
	}{
		{"0.0.0.0:9090", false, "has no authentication"},
		{"[::]:9090", false, "has no authentication"},
		{"0.0.0.0:9090", true, "plain HTTP"},
		{"127.0.0.1:9090", false, ""},
	} {
		var buf bytes.Buffer
		a, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		warnListener(slog.New(slog.NewJSONHandler(&buf, nil)), a, tc.auth)
		n := strings.Count(buf.String(), `"level":"WARN"`)
		if tc.want == "" && n != 0 || tc.want != "" && (n != 1 || !strings.Contains(buf.String(), tc.want)) {
			t.Errorf("%s auth=%v: logged %q, want one warning with %q", tc.addr, tc.auth, buf.String(), tc.want)
		}
	}
}
