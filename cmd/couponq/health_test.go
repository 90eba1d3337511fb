package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// realBundle is a bundle on a real redis-server (miniredis never evicts
// and cannot be paused or started late).
func realBundle(t *testing.T, srv *redistest.Server, coupons int, fakeOpts ...wechatpaytest.Option) *bundle {
	t.Helper()
	fake := wechatpaytest.NewServer(t, append([]wechatpaytest.Option{wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError)}, fakeOpts...)...)
	dir := t.TempDir()
	env, err := fake.WriteEnv(dir)
	if err != nil {
		t.Fatal(err)
	}
	env["COUPONQ_REDIS_URL"] = srv.URL()
	env["COUPONQ_HTTP_ADDR"] = ""
	return &bundle{fake: fake, env: env, ids: fake.SeedCoupons(fake.BrandID(), coupons), dir: dir}
}

// proc is `couponq worker` run in-process until stop.
type proc struct {
	stderr *syncBuffer
	done   chan result
	cancel context.CancelFunc
	once   sync.Once
	res    result
}

// startProc runs couponq with args in-process; the test's end stops it.
func (b *bundle) startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{stderr: &syncBuffer{}, done: make(chan result, 1), cancel: cancel}
	go func() {
		var out syncBuffer
		err := run(ctx, args, b.getenv, strings.NewReader(""), &out, p.stderr)
		code := exitCode(err, p.stderr)
		p.done <- result{code: code, stdout: out.String(), stderr: p.stderr.String()}
	}()
	t.Cleanup(func() {
		r := p.stop()
		if t.Failed() {
			t.Logf("couponq %s: exit %d\n%s", args[0], r.code, r.stderr)
		}
	})
	return p
}

// stop ends the process as SIGTERM would and returns its result.
func (p *proc) stop() result {
	p.once.Do(func() {
		p.cancel()
		select {
		case p.res = <-p.done:
		case <-time.After(60 * time.Second):
			p.res = result{code: -1, stderr: "did not exit 60s after SIGTERM\n" + p.stderr.String()}
		}
	})
	return p.res
}

// exited returns the result if the process has exited.
func (p *proc) exited() (result, bool) {
	select {
	case r := <-p.done:
		p.done <- r
		return r, true
	default:
		return result{}, false
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func getReadyz(addr string) (int, string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestEvictingRedisRefused: couponq worker and couponq enqueue refuse a
// Redis whose maxmemory-policy evicts, exit 1 with one line naming the
// setting and noeviction, and enqueue nothing; --allow-eviction (or its
// variable) runs them anyway.
func TestEvictingRedisRefused(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	if err := rdb.ConfigSet(t.Context(), "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	b := realBundle(t, srv, 6)
	f := b.writeFile(t, "changes.jsonl", changeLines(b, 6, "evict"))
	oneLine := func(name string, r result) {
		t.Helper()
		if r.code != 1 {
			t.Errorf("%s: exit %d, want 1: %s", name, r.code, r.stderr)
		}
		var lines []string
		for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
			if strings.Contains(l, "maxmemory-policy") {
				lines = append(lines, l)
			}
		}
		if len(lines) != 1 || !strings.Contains(lines[0], "allkeys-lru") || !strings.Contains(lines[0], "noeviction") ||
			!strings.Contains(lines[0], "--allow-eviction") {
			t.Errorf("%s: want one line naming allkeys-lru, noeviction and --allow-eviction, got:\n%s", name, r.stderr)
		}
	}

	w := b.startProc(t, "worker", "--rate", "0", "--http", "")
	select {
	case r := <-w.done:
		w.done <- r
		oneLine("worker", r)
	case <-time.After(30 * time.Second):
		t.Fatal("couponq worker ran on an evicting Redis")
	}
	r := b.run(t, "", "enqueue", "--file", f)
	oneLine("enqueue", r)
	if strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("enqueue: stderr is not one line:\n%s", r.stderr)
	}
	if n, err := rdb.DBSize(t.Context()).Result(); err != nil || n != 0 {
		t.Errorf("Redis holds %d keys after a refused enqueue (%v)", n, err)
	}

	// Allowed: by flag for enqueue, by variable for the worker.
	r = b.run(t, "", "enqueue", "--file", f, "--allow-eviction")
	if r.code != 0 {
		t.Fatalf("enqueue --allow-eviction: exit %d: %s", r.code, r.stderr)
	}
	batch := strings.TrimSpace(r.stdout)
	b.env["COUPONQ_ALLOW_EVICTION"] = "true"
	b.startProc(t, "worker", "--rate", "0", "--http", "", "--retry-base", "50ms", "--retry-cap", "200ms")
	r = b.run(t, "", "status", "--batch", batch, "--wait", "--interval", "20ms")
	if r.code != 0 {
		t.Errorf("status --wait with the eviction allowed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestWorkerReadyzDuringDrain: once couponq worker is told to stop, its
// /readyz answers 503 while in-flight tasks finish.
func TestWorkerReadyzDuringDrain(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	b := realBundle(t, srv, 1, wechatpaytest.WithLatency(2*time.Second))
	addr := freeAddr(t)
	w := b.startProc(t, "worker", "--rate", "0", "--http", addr, "--shutdown-timeout", "30s")
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		if r, ok := w.exited(); ok {
			t.Fatalf("worker exited %d: %s", r.code, r.stderr)
		}
		code, body, err := getReadyz(addr)
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	}, "the worker never became ready")
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"couponq_worker_ready 1", "couponq_wechatpay_clock_skew_seconds "} {
		if !strings.Contains(string(m), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	f := b.writeFile(t, "one.jsonl", changeLines(b, 1, "drain"))
	if r := b.run(t, "", "enqueue", "--file", f); r.code != 0 {
		t.Fatalf("enqueue: exit %d: %s", r.code, r.stderr)
	}
	task := "update:" + b.fake.BrandID() + ":drain0000"
	waitStatus(t, rdb, task, "running")

	w.cancel() // SIGTERM
	testutil.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
		if r, ok := w.exited(); ok {
			t.Fatalf("worker exited (%d) before /readyz said 503", r.code)
		}
		code, body, err := getReadyz(addr)
		if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
			return fmt.Errorf("%d %q %v", code, body, err)
		}
		return nil
	}, "/readyz did not answer 503 during the drain")
	if r := w.stop(); r.code != 0 {
		t.Errorf("worker exit %d: %s", r.code, r.stderr)
	}
	waitStatus(t, rdb, task, "succeeded") // the in-flight task finished
}

func waitStatus(t *testing.T, rdb redis.UniversalClient, task, want string) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
		st, err := rdb.HGet(t.Context(), results.ResultKey(task), results.FieldStatus).Result()
		if err != nil || st != want {
			return fmt.Errorf("status %q, %v", st, err)
		}
		return nil
	}, "%s never %s", task, want)
}

// TestWorkerWaitsForRedis: couponq worker started before its Redis waits,
// logging every few seconds, and works once Redis is up.
func TestWorkerWaitsForRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Reserve(t)
	b := realBundle(t, srv, 3)
	w := b.startProc(t, "worker", "--rate", "0", "--http", "", "--retry-base", "50ms", "--retry-cap", "200ms", "--log-format", "json")
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		if r, ok := w.exited(); ok {
			t.Fatalf("worker exited %d before Redis was up: %s", r.code, r.stderr)
		}
		if !strings.Contains(w.stderr.String(), "waiting for Redis") {
			return fmt.Errorf("no waiting line")
		}
		return nil
	}, "the worker did not wait for Redis, logging")
	srv.Launch()
	f := b.writeFile(t, "late.jsonl", changeLines(b, 3, "late"))
	r := b.run(t, "", "enqueue", "--file", f)
	if r.code != 0 {
		t.Fatalf("enqueue: exit %d: %s", r.code, r.stderr)
	}
	r = b.run(t, "", "status", "--batch", strings.TrimSpace(r.stdout), "--wait", "--interval", "20ms")
	if r.code != 0 {
		t.Errorf("status --wait: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
