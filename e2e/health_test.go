package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// childProc runs the test binary as one worker process (TestMain) on the
// Redis redisURL names, with env on top of the WeChat Pay settings; the
// test's end kills it.
func childProc(t *testing.T, redisURL string, env map[string]string, name string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "E2E_REDIS_URL="+redisURL)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s log:\n%s", name, b)
		}
	})
	return cmd
}

// TestMisconfiguredWorkerProcess: a worker process started with a wrong
// certificate serial, a wrong APIv3 key or a clock 10 minutes off WeChat
// Pay's takes nothing of a batch — no call, no attempt, no retry, nothing
// failed — while it probes; stopped and started again with the right
// settings, it finishes the batch, every write applied once.
func TestMisconfiguredWorkerProcess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		keyMode wechatpaytest.KeyMode
		skew    time.Duration
		bad     map[string]string
	}{
		{name: "wrong serial", bad: map[string]string{"WECHATPAY_MCH_CERT_SERIAL": "5157F09EFDC096DE15EBE81A47057A72"}},
		{name: "wrong APIv3 key", keyMode: wechatpaytest.CertificateMode, bad: map[string]string{"WECHATPAY_APIV3_KEY": strings.Repeat("k", 32)}},
		{name: "clock off", skew: -10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			rdb := srv.Client()
			fake := wechatpaytest.NewServer(t, wechatpaytest.WithKeyMode(tt.keyMode), wechatpaytest.WithClockSkew(tt.skew),
				wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
			env, err := fake.WriteEnv(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			badEnv := map[string]string{}
			for k, v := range env {
				badEnv[k] = v
			}
			for k, v := range tt.bad {
				badEnv[k] = v
			}
			ids := fake.SeedCoupons(fake.BrandID(), 40)
			cs, permanent := mixed(ids, fake.BrandID(), "mis")
			rep := enqueue(t, rdb, cs, "misconfigured")

			bad := childProc(t, srv.URL(), badEnv, "bad-worker")
			testutil.Eventually(t, time.Minute, 20*time.Millisecond, func() error {
				n := 0
				for _, q := range fake.Requests() {
					if q.Path == wechatpay.CertificatesPath {
						n++
					}
				}
				if n < 4 {
					return fmt.Errorf("%d probes", n)
				}
				return nil
			}, "the misconfigured worker did not probe")
			for _, q := range fake.Requests() {
				if q.Path != wechatpay.CertificatesPath {
					t.Fatalf("the misconfigured worker called %s %s", q.Method, q.Path)
				}
			}
			r := tasks.NewReader(rdb)
			ids2, err := r.BatchTaskIDs(t.Context(), "misconfigured")
			if err != nil || len(ids2) != rep.Total {
				t.Fatalf("batch tasks: %d, %v", len(ids2), err)
			}
			for _, id := range ids2 {
				res, err := r.Result(t.Context(), id)
				if err != nil {
					t.Fatal(err)
				}
				if res.Status != tasks.StatusQueued || res.Attempts != 0 {
					t.Errorf("%s: %s, %d attempts; want queued, none", id, res.Status, res.Attempts)
				}
			}
			if err := bad.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := bad.Wait(); err != nil {
				t.Errorf("the misconfigured worker exited: %v", err)
			}

			fake.SetClockSkew(0)
			childProc(t, srv.URL(), env, "good-worker")
			st := wait(t, rdb, "misconfigured", 2*time.Minute)
			verify(t, rdb, fake, "misconfigured", st, permanent)
			if st.Failed != len(permanent) {
				t.Errorf("%d failed, want only the %d permanent ones", st.Failed, len(permanent))
			}
		})
	}
}
