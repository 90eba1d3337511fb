package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// BenchmarkRateLimit3Workers is the measurement of issue 5: 3 worker
// processes (this test binary re-executed with COUPONQ_BENCH_WORKER=1),
// each with Rate 20 and Concurrency 20, share the Redis limiter against a
// wechatpaytest server in this process with WithQPS(20): by default a
// sliding window, at most 20 admitted calls per endpoint in any one-second
// window (bench/ratelimit.txt was measured when it was a token bucket of
// capacity 20). 3000 mixed changes (1000 update, 1000
// deactivate, 1000 get) are enqueued with the Producer. From the fake's
// request log it reports, per endpoint, the calls answered 2xx per second
// over that endpoint's window (first to last call: (n-1)/span) and the
// 429s answered. Goal: ≥ 19.4/s per endpoint and zero 429s. It runs about
// 50 s; use -benchtime=1x. See bench/ratelimit.txt.
func BenchmarkRateLimit3Workers(b *testing.B) {
	srv := redistest.Start(b)
	const (
		processes   = 3
		rate        = 20
		concurrency = 20
	)
	n := envInt("COUPONQ_BENCH_RL_N", 3000)
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	rdb := srv.Client()
	defer rdb.Close()

	perOp := map[string]*opFigures{}
	for _, op := range []string{wechatpaytest.OpUpdate, wechatpaytest.OpDeactivate, wechatpaytest.OpGet} {
		perOp[op] = &opFigures{}
	}
	for b.Loop() {
		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			b.Fatal(err)
		}
		fake, upd, deact := newFake(b, n, wechatpaytest.WithQPS(rate))
		dir := b.TempDir()
		env, err := fake.WriteEnv(dir)
		if err != nil {
			b.Fatal(err)
		}
		childEnv := append(os.Environ(),
			workerEnv+"=1",
			"COUPONQ_BENCH_REDIS="+srv.URL(),
			"COUPONQ_BENCH_RATE="+strconv.Itoa(rate),
			"COUPONQ_BENCH_CONCURRENCY="+strconv.Itoa(concurrency),
		)
		for k, v := range env {
			childEnv = append(childEnv, k+"="+v)
		}
		for i := range processes {
			startWorkerProcess(b, exe, childEnv, filepath.Join(dir, fmt.Sprintf("worker%d.stderr", i)))
		}

		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		p, err := tasks.NewProducer(rdb)
		if err != nil {
			b.Fatal(err)
		}
		rep, err := p.EnqueueBatch(ctx, mixedChanges(fake.BrandID(), upd, deact, n), tasks.BatchOptions{})
		_ = p.Close()
		if err != nil || rep.Total != n {
			cancel()
			b.Fatalf("EnqueueBatch: %+v, %v", rep, err)
		}
		st, err := tasks.NewReader(rdb).Wait(ctx, rep.BatchID, 100*time.Millisecond, nil)
		cancel()
		if err != nil {
			b.Fatalf("Wait: %v", err)
		}
		if st.Succeeded != n {
			b.Errorf("batch: %+v", st)
		}
		measure(fake.Requests(), perOp)
		fake.Close()
	}
	for op, f := range perOp {
		b.ReportMetric(f.ok/f.secs, op+"_calls/s")
		b.ReportMetric(float64(f.tooMany)/float64(b.N), op+"_429s")
		b.ReportMetric(f.secs/float64(b.N), op+"_window_s")
	}
	b.ReportMetric(0, "ns/op") // each op is a whole 3000-change batch
}

// opFigures accumulates one endpoint's figures over the iterations.
type opFigures struct {
	ok      float64 // intervals between 2xx answers: n-1 per iteration
	secs    float64 // first to last 2xx answer, summed over iterations
	tooMany int     // 429s answered
}

// measure adds one run's request log to perOp.
func measure(reqs []wechatpaytest.Request, perOp map[string]*opFigures) {
	type window struct {
		first, last time.Time
		n           int
	}
	wins := map[string]*window{}
	for _, r := range reqs {
		f, ok := perOp[r.Op]
		if !ok {
			continue
		}
		if r.Status == 429 {
			f.tooMany++
			continue
		}
		if r.Status < 200 || r.Status > 299 {
			continue
		}
		w := wins[r.Op]
		if w == nil {
			w = &window{first: r.Time, last: r.Time}
			wins[r.Op] = w
		}
		if r.Time.Before(w.first) {
			w.first = r.Time
		}
		if r.Time.After(w.last) {
			w.last = r.Time
		}
		w.n++
	}
	for op, w := range wins {
		if w.n > 1 {
			perOp[op].ok += float64(w.n - 1)
			perOp[op].secs += w.last.Sub(w.first).Seconds()
		}
	}
}

// startWorkerProcess starts the test binary as a worker process with env,
// its stderr in stderrPath, and stops it through b.Cleanup: SIGTERM, then
// SIGKILL if it has not exited within 10 s. When the benchmark failed, the
// process's stderr is logged.
func startWorkerProcess(b *testing.B, exe string, env []string, stderrPath string) {
	b.Helper()
	stderr, err := os.Create(stderrPath)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = env
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		stderr.Close()
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	b.Cleanup(func() {
		defer stderr.Close()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				b.Errorf("worker process %d: %v", cmd.Process.Pid, err)
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			b.Errorf("worker process %d did not stop on SIGTERM within 10s; killed", cmd.Process.Pid)
		}
		if b.Failed() {
			out, _ := os.ReadFile(stderrPath)
			b.Logf("worker process %d stderr:\n%s", cmd.Process.Pid, out)
		}
	})
}
