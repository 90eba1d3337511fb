package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// bundle is one test's world: an embedded Redis, the fake WeChat Pay and
// the environment a worker needs to reach both.
type bundle struct {
	mr   *miniredis.Miniredis
	fake *wechatpaytest.Server
	env  map[string]string
	ids  []string
	dir  string
}

func setup(t *testing.T, coupons int) *bundle {
	t.Helper()
	mr := miniredis.RunT(t)
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	dir := t.TempDir()
	env, err := fake.WriteEnv(dir)
	if err != nil {
		t.Fatal(err)
	}
	env["COUPONQ_REDIS_URL"] = "redis://" + mr.Addr() + "/0"
	env["COUPONQ_HTTP_ADDR"] = ""
	return &bundle{mr: mr, fake: fake, env: env, ids: fake.SeedCoupons(fake.BrandID(), coupons), dir: dir}
}

func (b *bundle) getenv(k string) string { return b.env[k] }

// result of one in-process run of the binary.
type result struct {
	code           int
	stdout, stderr string
}

func (b *bundle) run(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return runWith(t.Context(), b.getenv, stdin, args...)
}

func runWith(ctx context.Context, getenv func(string) string, stdin string, args ...string) result {
	var out, errb bytes.Buffer
	err := run(ctx, args, getenv, strings.NewReader(stdin), &out, &errb)
	code := exitCode(err, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// startWorker runs `couponq worker` in-process until the test ends.
func (b *bundle) startWorker(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	var res result
	go func() {
		defer wg.Done()
		res = runWith(ctx, b.getenv, "", append([]string{"worker", "--retry-base", "50ms", "--retry-cap", "200ms", "--rate", "0"}, args...)...)
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		if res.code != 0 {
			t.Errorf("worker exited %d: %s", res.code, res.stderr)
		}
	})
}

func (b *bundle) writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(b.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func changeLines(b *bundle, n int, prefix string) string {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		id := b.ids[i%len(b.ids)]
		switch i % 3 {
		case 0:
			fmt.Fprintf(&sb, `{"op":"update","product_coupon_id":%q,"brand_id":%q,"out_request_no":"%s%04d","display_info":{"name":"全场满100立打8折","original_price":10000}}`+"\n", id, b.fake.BrandID(), prefix, i)
		case 1:
			fmt.Fprintf(&sb, `{"op":"deactivate","product_coupon_id":%q,"brand_id":%q,"out_request_no":"%s%04d","deactivate_reason":"批次信息有误,重新创建"}`+"\n", id, b.fake.BrandID(), prefix, i)
		default:
			fmt.Fprintf(&sb, `{"op":"get","product_coupon_id":%q,"brand_id":%q}`+"\n", id, b.fake.BrandID())
		}
	}
	return sb.String()
}

func TestHelpNamesEveryFlagAndVariable(t *testing.T) {
	t.Parallel()
	b := &bundle{env: map[string]string{}}
	for _, tc := range []struct {
		cmd  string
		want []string
	}{
		{"worker", []string{"--redis", "COUPONQ_REDIS_URL", "--concurrency", "COUPONQ_CONCURRENCY", "--rate", "COUPONQ_RATE",
			"--max-retry", "COUPONQ_MAX_RETRY", "--http", "COUPONQ_HTTP_ADDR", "--result-ttl", "COUPONQ_RESULT_TTL",
			"--log-format", "COUPONQ_LOG_FORMAT", "--shutdown-timeout", "WECHATPAY_MCH_PRIVATE_KEY_FILE", "WECHATPAY_APIV3_KEY",
			"--monitoring-auth-file", "COUPONQ_MONITORING_AUTH_FILE"}},
		{"enqueue", []string{"--file", "--batch", "--queue", "--format", "exit status is 2"}},
		{"status", []string{"--batch", "--task", "--wait", "--json", "--rate", "COUPONQ_RATE"}},
		{"get", []string{"--brand", "--coupon", "WECHATPAY_MODE"}},
		{"mock", []string{"--env", "--faults", "--qps", "--qps-model", "--jitter", "--spurious-429"}},
		{"demo", []string{"--keep", "--count"}},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			t.Parallel()
			r := b.run(t, "", tc.cmd, "--help")
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("%s --help lacks %q", tc.cmd, w)
				}
			}
		})
	}
}

func TestBadUsageExitsTwoNamingTheSetting(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	bad := b.writeFile(t, "bad.pem", "not a key")
	brandCerts := map[string]string{"WECHATPAY_MODE": "brand", "WECHATPAY_BRAND_ID": "120344",
		"WECHATPAY_PUBLIC_KEY_ID": "", "WECHATPAY_PUBLIC_KEY_FILE": "", "WECHATPAY_APIV3_KEY": strings.Repeat("k", 32)}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown command", nil, []string{"frobnicate"}, "unknown command"},
		{"unknown flag", nil, []string{"worker", "--frob"}, "unknown flag"},
		{"enqueue without file", nil, []string{"enqueue"}, `"file" not set`},
		{"missing file", nil, []string{"enqueue", "--file", "/nonexistent.jsonl"}, "--file"},
		{"unknown extension", nil, []string{"enqueue", "--file", "x.txt"}, "--format"},
		{"malformed redis url", map[string]string{"COUPONQ_REDIS_URL": "mysql://x"}, []string{"status", "--batch", "x"}, "COUPONQ_REDIS_URL"},
		{"bad env number", map[string]string{"COUPONQ_CONCURRENCY": "many"}, []string{"worker"}, "COUPONQ_CONCURRENCY"},
		{"zero concurrency", nil, []string{"worker", "--concurrency", "0"}, "--concurrency (COUPONQ_CONCURRENCY) is 0: must be positive"},
		{"negative max retry", nil, []string{"worker", "--max-retry", "-1"}, "--max-retry (COUPONQ_MAX_RETRY) is -1: must be 0 (no retries) or more"},
		{"max retry over the ceiling", map[string]string{"COUPONQ_MAX_RETRY": "2000"}, []string{"worker"}, "--max-retry (COUPONQ_MAX_RETRY) is 2000: must be at most 1000"},
		{"negative rate", nil, []string{"worker", "--rate", "-1"}, "--rate (COUPONQ_RATE) is -1"},
		{"empty queue list", nil, []string{"worker", "--queues", ","}, "--queues (COUPONQ_QUEUES)"},
		{"zero result ttl", nil, []string{"worker", "--result-ttl", "0s"}, "--result-ttl (COUPONQ_RESULT_TTL) is 0"},
		{"retry cap below base", nil, []string{"worker", "--retry-base", "1m", "--retry-cap", "1s"}, "--retry-cap (COUPONQ_RETRY_CAP)"},
		{"adoption grace too short", map[string]string{"COUPONQ_ADOPT_AFTER": "1s"}, []string{"worker"}, "--adopt-after (COUPONQ_ADOPT_AFTER) is 1s: must be at least 2s"},
		{"bad monitoring auth", map[string]string{"COUPONQ_MONITORING_AUTH": "nopass"}, []string{"worker", "--http", "127.0.0.1:0"}, "--monitoring-auth (COUPONQ_MONITORING_AUTH) must be"},
		{"unknown mode", map[string]string{"WECHATPAY_MODE": "retail"}, []string{"worker"}, "WECHATPAY_MODE"},
		{"missing mchid", map[string]string{"WECHATPAY_MCHID": ""}, []string{"worker"}, "WECHATPAY_MCHID is not set"},
		{"missing key file", map[string]string{"WECHATPAY_MCH_PRIVATE_KEY_FILE": "/nonexistent.pem"}, []string{"worker"}, "WECHATPAY_MCH_PRIVATE_KEY_FILE"},
		{"unreadable key", map[string]string{"WECHATPAY_MCH_PRIVATE_KEY_FILE": bad}, []string{"worker"}, "WECHATPAY_MCH_PRIVATE_KEY_FILE"},
		{"no wechatpay key", map[string]string{"WECHATPAY_PUBLIC_KEY_ID": "", "WECHATPAY_PUBLIC_KEY_FILE": ""}, []string{"worker"}, "WECHATPAY_APIV3_KEY"},
		{"short apiv3 key", map[string]string{"WECHATPAY_APIV3_KEY": "short"}, []string{"worker"}, "WECHATPAY_APIV3_KEY must be 32"},
		{"bad base url", map[string]string{"WECHATPAY_BASE_URL": "ftp://x"}, []string{"worker"}, "WECHATPAY_BASE_URL"},
		{"base url with user info", map[string]string{"WECHATPAY_BASE_URL": "https://u:p@api.mch.weixin.qq.com"}, []string{"worker"}, "WECHATPAY_BASE_URL must not carry user info"},
		{"brand mode with platform certificates", brandCerts, []string{"worker"}, "WECHATPAY_MODE=brand requires WECHATPAY_PUBLIC_KEY_ID and WECHATPAY_PUBLIC_KEY_FILE"},
		{"get in brand mode with platform certificates", brandCerts, []string{"get", "--brand", "120344", "--coupon", "1"}, "WECHATPAY_MODE=brand requires"},
		{"status needs one", nil, []string{"status"}, "--batch or --task"},
		{"status wait task", nil, []string{"status", "--task", "x", "--wait"}, "--wait"},
		{"get needs brand", nil, []string{"get", "--coupon", "1"}, "brand"},
		{"bad faults", nil, []string{"mock", "--faults", "500=2"}, "--faults"},
		{"unknown qps model", nil, []string{"mock", "--qps-model", "leaky-bucket"}, "--qps-model"},
		{"negative jitter", nil, []string{"mock", "--jitter", "-1ms"}, "--jitter"},
		{"jitter not a duration", nil, []string{"mock", "--jitter", "20"}, "--jitter"},
		{"spurious share over 1", nil, []string{"mock", "--spurious-429", "1.5"}, "--spurious-429"},
		{"negative spurious share", nil, []string{"mock", "--spurious-429", "-0.1"}, "--spurious-429"},
		{"spurious share NaN", nil, []string{"mock", "--spurious-429", "NaN"}, "--spurious-429"},
		{"mock --env checks before detaching", nil, []string{"mock", "--env", "--qps-model", "x"}, "--qps-model"},
		{"bad batch id", nil, []string{"enqueue", "--file", "-", "--batch", "a:b"}, "--batch"},
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
			r := runWith(t.Context(), func(k string) string { return env[k] }, "", tc.args...)
			if r.code != 2 {
				t.Fatalf("exit %d, want 2; stderr: %s", r.code, r.stderr)
			}
			if !strings.Contains(r.stderr, tc.want) {
				t.Errorf("stderr %q lacks %q", r.stderr, tc.want)
			}
			if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); n > 0 {
				t.Errorf("want one line, got %d: %q", n+1, r.stderr)
			}
		})
	}
}

// A Redis that refuses the password, or is not there, at the start of
// enqueue: one line saying so, no batch ID, exit 1.
func TestEnqueueRedisUnusableAtStart(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	b.mr.RequireAuth("right")
	f := b.writeFile(t, "changes.jsonl", changeLines(b, 3, "pw"))
	for _, tc := range []struct{ name, url, want string }{
		{"wrong password", "redis://:wrong@" + b.mr.Addr() + "/0", "WRONGPASS"},
		{"nobody listening", "redis://127.0.0.1:1/0", "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := b.run(t, "", "enqueue", "--file", f, "--redis", tc.url)
			if r.code != 1 || r.stdout != "" {
				t.Errorf("exit %d, stdout %q; want 1 and no batch ID", r.code, r.stdout)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], tc.want) || !strings.Contains(lines[0], "nothing was enqueued") ||
				strings.Count(lines[0], "couponq:") != 1 || strings.Contains(lines[0], "wrong@") {
				t.Errorf("stderr = %q; want one line naming %q", r.stderr, tc.want)
			}
		})
	}
	if keys := b.mr.Keys(); len(keys) != 0 {
		t.Errorf("wrote %v", keys)
	}
}

func TestEnqueueInvalidFileEnqueuesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	lines := changeLines(b, 3, "ok") +
		`{"op":"update","product_coupon_id":"1","brand_id":"120344","out_request_no":"abc","display_info":{"name":"x"}}` + "\n" +
		`not json` + "\n" +
		changeLines(b, 1, "ok") // same task ID as line 1, same payload: fine
	f := b.writeFile(t, "bad.jsonl", lines)
	r := b.run(t, "", "enqueue", "--file", f)
	if r.code != 2 {
		t.Fatalf("exit %d, want 2: %s", r.code, r.stderr)
	}
	for _, w := range []string{"line 4:", "out_request_no", "display_info.name", "line 5:", "2 invalid line"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
		}
	}
	if keys := b.mr.Keys(); len(keys) != 0 {
		t.Errorf("Redis holds %v after an invalid file", keys)
	}

	// One task ID with two payloads in one file is invalid input too.
	conflict := changeLines(b, 1, "cf") + strings.Replace(changeLines(b, 1, "cf"), "10000", "20000", 1)
	r = b.run(t, conflict, "enqueue", "--file", "-")
	if r.code != 2 || !strings.Contains(r.stderr, "line 2:") || !strings.Contains(r.stderr, "line 1") {
		t.Errorf("conflicting lines: exit %d: %s", r.code, r.stderr)
	}
}

func TestPipelineEndToEnd(t *testing.T) {
	t.Parallel()
	b := setup(t, 30)
	b.startWorker(t, "--concurrency", "8")

	f := b.writeFile(t, "changes.jsonl", changeLines(b, 30, "e2e"))
	r := b.run(t, "", "enqueue", "--file", f)
	if r.code != 0 {
		t.Fatalf("enqueue exit %d: %s", r.code, r.stderr)
	}
	batch := strings.TrimSpace(r.stdout)
	if batch == "" || strings.Contains(batch, "\n") {
		t.Fatalf("enqueue stdout %q, want the batch ID alone", r.stdout)
	}

	r = b.run(t, "", "status", "--batch", batch, "--wait", "--json", "--interval", "20ms")
	if r.code != 0 {
		t.Fatalf("status --wait exit %d: %s", r.code, r.stderr)
	}
	// The quota line, for the mchid of the environment (its counts are
	// the worker package's to test, on an injected clock).
	if want := "quota " + b.env["WECHATPAY_MCHID"] + ": update "; !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "/20 calls/s") {
		t.Errorf("status --wait stderr lacks %q … calls/s:\n%s", want, r.stderr)
	}
	var v struct {
		Total, Succeeded, Failed, Duplicates int
		Done                                 bool
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if v.Total != 30 || v.Succeeded != 30 || v.Failed != 0 || !v.Done {
		t.Errorf("status = %+v, want 30 succeeded and done", v)
	}

	// One task's result, as text and JSON.
	task := "update:" + b.fake.BrandID() + ":e2e0000"
	r = b.run(t, "", "status", "--task", task)
	if r.code != 0 || !strings.Contains(r.stdout, "succeeded") || !strings.Contains(r.stdout, "EFFECTIVE") {
		t.Errorf("status --task: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = b.run(t, "", "status", "--task", "update:1:nope00")
	if r.code != 1 {
		t.Errorf("status of an unknown task: exit %d", r.code)
	}

	// The same file again: nothing new, all duplicates (gets get new IDs).
	r = b.run(t, "", "enqueue", "--file", f)
	if r.code != 0 || !strings.Contains(r.stderr, "20 duplicates") {
		t.Errorf("re-enqueue: exit %d: %s", r.code, r.stderr)
	}
	// Into its own batch again: already in it, not duplicates.
	r = b.run(t, "", "enqueue", "--file", f, "--batch", batch)
	if r.code != 0 || !strings.Contains(r.stderr, "20 already in the batch, 0 duplicates") || strings.TrimSpace(r.stdout) != batch {
		t.Errorf("re-enqueue into the same batch: exit %d: %s", r.code, r.stderr)
	}

	// CSV from standard input, with a change that fails permanently.
	csv := "op,product_coupon_id,brand_id,out_request_no,display_info,deactivate_reason\n" +
		"deactivate," + b.ids[29] + "," + b.fake.BrandID() + ",csv000001,,下架\n" +
		"update,99999999," + b.fake.BrandID() + ",csv000002,\"{\"\"name\"\":\"\"新客立减10元\"\"}\",\n"
	r = b.run(t, csv, "enqueue", "--file", "-", "--format", "csv", "--batch", "csv-batch")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "csv-batch" {
		t.Fatalf("csv enqueue: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	r = b.run(t, "", "status", "--batch", "csv-batch", "--wait", "--interval", "20ms")
	if r.code != 1 {
		t.Errorf("status --wait on a batch with a failure: exit %d, want 1\n%s", r.code, r.stdout)
	}
	if !strings.Contains(r.stdout, "RESOURCE_NOT_EXISTS") || !strings.Contains(r.stdout, "csv000002") {
		t.Errorf("failed task not listed:\n%s", r.stdout)
	}

	// get: one synchronous query.
	r = b.run(t, "", "get", "--brand", b.fake.BrandID(), "--coupon", b.ids[0])
	if r.code != 0 || !strings.Contains(r.stdout, `"product_coupon_id": "`+b.ids[0]+`"`) {
		t.Errorf("get: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = b.run(t, "", "get", "--brand", b.fake.BrandID(), "--coupon", "424242")
	if r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Errorf("get unknown: exit %d: %s", r.code, r.stderr)
	}
	// Every write applied exactly once.
	for _, e := range b.fake.Effects() {
		if n := b.fake.AppliedCount(e.OutRequestNo); n != 1 {
			t.Errorf("%s applied %d times", e.OutRequestNo, n)
		}
	}
}

func TestDemoRunsAndProvesExactlyOnce(t *testing.T) {
	t.Parallel()
	r := runWith(t.Context(), func(string) string { return "" }, "", "demo", "--count", "60", "--timeout", "2m")
	if r.code != 0 {
		t.Fatalf("demo exit %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	for _, w := range []string{"succeeded", "failed", "API calls", "applied exactly once  yes"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("demo summary lacks %q:\n%s", w, r.stdout)
		}
	}
}

func TestMockPrintsUsableEnv(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	dir := t.TempDir()
	ready := filepath.Join(dir, "env.sh")
	done := make(chan result, 1)
	go func() {
		done <- runWith(ctx, func(string) string { return "" }, "", "mock", "--dir", dir, "--coupons", "5", "--ready-file", ready,
			"--qps", "20", "--qps-model", "token-bucket", "--jitter", "1ms", "--spurious-429", "0")
	}()
	var env []byte
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		var err error
		if env, err = os.ReadFile(ready); err == nil && len(env) == 0 {
			err = errors.New("empty")
		}
		return err
	}, "mock never wrote its settings to --ready-file")
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(env)), "\n") {
		k, v, _ := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		vars[k] = strings.Trim(v, "'")
	}
	for _, k := range []string{"WECHATPAY_MODE", "WECHATPAY_MCHID", "WECHATPAY_MCH_CERT_SERIAL", "WECHATPAY_MCH_PRIVATE_KEY_FILE",
		"WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PUBLIC_KEY_FILE", "WECHATPAY_BASE_URL"} {
		if vars[k] == "" {
			t.Errorf("mock env lacks %s: %s", k, env)
		}
	}
	// The printed settings work: a get through them answers.
	r := runWith(t.Context(), func(k string) string { return vars[k] }, "", "get", "--brand", "120344", "--coupon", "1000000001")
	if r.code != 0 {
		t.Errorf("get against the mock: exit %d: %s", r.code, r.stderr)
	}
	cancel()
	if r := <-done; r.code != 0 {
		t.Errorf("mock exit %d: %s", r.code, r.stderr)
	}
}

func TestQuotaLines(t *testing.T) {
	t.Parallel()
	use := map[string]int{"update": 19, "deactivate": 20, "get": 0}
	tests := []struct {
		name     string
		identity string
		want     []string
	}{
		{"one line", "1900000001", []string{"quota 1900000001: update 19/20, deactivate 20/20, get 0/20 calls/s"}},
		{"long identity", strings.Repeat("9", 30), []string{"quota " + strings.Repeat("9", 30) + ":", "  update 19/20, deactivate 20/20, get 0/20 calls/s"}},
	}
	for _, tt := range tests {
		got := quotaLines(tt.identity, 20, use)
		if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
		for _, l := range got {
			if len(l) > 80 {
				t.Errorf("%s: %d columns: %q", tt.name, len(l), l)
			}
		}
	}
}

func TestLimiterIdentity(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"WECHATPAY_MCHID": "1900000001", "WECHATPAY_BRAND_ID": "120344"}, "1900000001"},
		{map[string]string{"WECHATPAY_MODE": "brand", "WECHATPAY_BRAND_ID": "120344"}, "120344"},
		{nil, ""},
	}
	for _, tt := range tests {
		if got := limiterIdentity(func(k string) string { return tt.env[k] }); got != tt.want {
			t.Errorf("%v: %q, want %q", tt.env, got, tt.want)
		}
	}
}
