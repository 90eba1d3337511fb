package redistest_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/couponq/couponq/internal/redistest"
)

const childEnv = "REDISTEST_REQUIRE_CHILD"

// TestRequireChild is run by TestRequire in a child process whose PATH
// holds no redis-server; on its own it does nothing.
func TestRequireChild(t *testing.T) {
	if os.Getenv(childEnv) != "1" {
		return
	}
	redistest.Require(t)
	t.Log("redis-server found")
}

// Require's three rules, which make test-short and .ci/run rely on.
func TestRequire(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		short    bool
		ci       string
		wantFail bool
		want     string
	}{
		{name: "-short skips, even under CI", short: true, ci: "true", want: "not run under -short"},
		{name: "missing server skips as an integration test", want: "integration test skipped"},
		{name: "missing server fails under CI", ci: "true", wantFail: true, want: "CI must run the integration tests"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := []string{"-test.run=^TestRequireChild$", "-test.v"}
			if tt.short {
				args = append(args, "-test.short")
			}
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = append(os.Environ(), childEnv+"=1", "PATH="+t.TempDir(), "CI="+tt.ci)
			out, err := cmd.CombinedOutput()
			if failed := err != nil; failed != tt.wantFail || !strings.Contains(string(out), tt.want) {
				t.Errorf("child: err %v (want failure: %v), output lacks %q or is wrong:\n%s", err, tt.wantFail, tt.want, out)
			}
		})
	}
}
