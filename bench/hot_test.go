package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// The hot-path benchmarks of issue 14: `couponq enqueue` as a user runs it
// against a plain asynq loop, and the memory of the worker and of enqueue
// as child processes. Figures and commands: bench/hot.txt.

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// couponqBinary builds cmd/couponq once per benchmark process (into a
// temporary directory TestMain removes) and returns its path; or returns
// COUPONQ_BENCH_BIN when set (a couponq built from another commit, for a
// before/after comparison).
func couponqBinary(b *testing.B) string {
	b.Helper()
	if bin := os.Getenv("COUPONQ_BENCH_BIN"); bin != "" {
		return bin
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "couponq-bench-bin-*")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "couponq")
		cmd := exec.Command("go", "build", "-trimpath", "-o", builtBin, "../cmd/couponq")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/couponq: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		b.Fatal(buildErr)
	}
	return builtBin
}

// removeBinary deletes what couponqBinary built; TestMain calls it.
func removeBinary() {
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
}

// writeChangeFile writes n mixed change lines (update, deactivate, get;
// every line its own out_request_no) to a .jsonl file in dir.
func writeChangeFile(b *testing.B, dir string, n int) (string, []tasks.Change) {
	b.Helper()
	upd := make([]string, 1000)
	deact := make([]string, 1000)
	for i := range upd {
		upd[i] = strconv.Itoa(1000000000 + i)
		deact[i] = strconv.Itoa(2000000000 + i)
	}
	path := filepath.Join(dir, fmt.Sprintf("changes-%d.jsonl", n))
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	var keep []tasks.Change
	if n <= 200_000 {
		keep = make([]tasks.Change, 0, n)
	}
	for c := range mixedChanges("120344", upd, deact, n) {
		line, err := json.Marshal(c)
		if err != nil {
			b.Fatal(err)
		}
		w.Write(line)
		w.WriteByte('\n')
		if keep != nil {
			keep = append(keep, c)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path, keep
}

// childRun is one finished child process.
type childRun struct {
	secs   float64
	cpu    float64 // seconds of CPU, user and system
	maxRSS float64 // MiB (getrusage ru_maxrss of the child)
	stdout string
	stderr string
}

// runChild runs exe with args and env to its end and reports its wall
// time and peak RSS. A non-zero exit fails b unless allowFail.
func runChild(b *testing.B, exe string, args, env []string, allowFail bool) childRun {
	b.Helper()
	cmd := exec.Command(exe, args...)
	cmd.Env = env
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	hwm := watchHWM(cmd.Process.Pid)
	err := cmd.Wait()
	secs := time.Since(start).Seconds()
	peak := hwm()
	if err != nil && !allowFail {
		b.Fatalf("%s %s: %v\n%s", exe, strings.Join(args, " "), err, stderr.String())
	}
	var cpu float64
	if cmd.ProcessState != nil {
		cpu = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	}
	return childRun{secs: secs, cpu: cpu, maxRSS: peak, stdout: stdout.String(), stderr: stderr.String()}
}

// watchHWM reads the peak resident set (VmHWM, MiB) of process pid every
// 10 ms until the returned function is called, which returns the last
// reading: the peak of the child's own memory. getrusage's ru_maxrss
// (ProcessState.SysUsage) would not do: Linux carries the high-water mark
// of the memory a process had before exec into it, and Go starts children
// with CLONE_VM, so a child's ru_maxrss is at least this benchmark
// process's own peak (the 100 000 tasks of the asynq loop, the fake's
// coupons), whatever the child used. A peak reached in the last 10 ms
// before exit is missed.
func watchHWM(pid int) (stop func() float64) {
	var (
		mu   sync.Mutex
		peak float64
	)
	read := func() {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
				mu.Lock()
				peak = max(peak, kb/1024)
				mu.Unlock()
			}
		}
	}
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			read()
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() float64 {
		close(done)
		<-exited
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

// childEnv is this process's environment without COUPONQ_* and
// WECHATPAY_* settings, plus extra.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "COUPONQ_") || strings.HasPrefix(kv, "WECHATPAY_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// asynqLoop enqueues the changes' tasks as a plain program would: 32
// goroutines calling asynq.Client.Enqueue (one per task, the same type,
// payload, task ID, queue, MaxRetry and Timeout as couponq's), and returns
// the seconds taken.
func asynqLoop(b *testing.B, redisURL string, changes []tasks.Change, workers int) float64 {
	b.Helper()
	opt, err := asynq.ParseRedisURI(redisURL)
	if err != nil {
		b.Fatal(err)
	}
	if o, ok := opt.(asynq.RedisClientOpt); ok {
		o.PoolSize = 2 * workers
		opt = o
	}
	client := asynq.NewClient(opt)
	defer client.Close()
	ts := make([]*asynq.Task, len(changes))
	for i, c := range changes {
		payload, err := c.Payload()
		if err != nil {
			b.Fatal(err)
		}
		ts[i] = asynq.NewTaskWithHeaders(c.Op.TaskType(), payload, map[string]string{tasks.HeaderRun: "bench"},
			asynq.TaskID(c.TaskID()), asynq.Queue(tasks.DefaultQueue), asynq.MaxRetry(results.MaxRetry),
			asynq.Timeout(tasks.DefaultTaskTimeout))
	}
	var (
		next   atomic.Int64
		failed atomic.Int64
		wg     sync.WaitGroup
	)
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(len(ts)) {
					return
				}
				if _, err := client.Enqueue(ts[i]); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	if f := failed.Load(); f > 0 {
		b.Fatalf("asynq loop: %d of %d enqueues failed", f, len(ts))
	}
	return secs
}

// BenchmarkEnqueueCommand compares `couponq enqueue --file F` run as a
// user runs it (the built binary, a child process: its start, reading,
// validation, accepting and enqueuing, timed around the command) with 32
// goroutines calling asynq.Client.Enqueue for the same tasks (built in
// memory beforehand, not timed), on the same redis-server in the same run
// (FLUSHALL before each side). Sub-benchmarks by the number of lines.
// Run with -benchtime=1x; see bench/hot.txt.
func BenchmarkEnqueueCommand(b *testing.B) {
	srv := redistest.Start(b)
	exe := couponqBinary(b)
	for _, n := range []int{20_000, 100_000} {
		b.Run(fmt.Sprintf("lines=%d", n), func(b *testing.B) {
			path, changes := writeChangeFile(b, b.TempDir(), n)
			rdb := srv.Client()
			defer rdb.Close()
			env := childEnv("COUPONQ_REDIS_URL=" + srv.URL())
			var asynqSecs, cmdSecs, rss, asynqCPU, cmdCPU float64
			for b.Loop() {
				if err := rdb.FlushAll(context.Background()).Err(); err != nil {
					b.Fatal(err)
				}
				before := cpuNow(b, rdb)
				asynqSecs += asynqLoop(b, srv.URL(), changes, 32)
				asynqCPU += cpuNow(b, rdb) - before
				if err := rdb.FlushAll(context.Background()).Err(); err != nil {
					b.Fatal(err)
				}
				redisBefore := redisCPU(b, rdb)
				run := runChild(b, exe, []string{"enqueue", "--file", path}, env, false)
				cmdCPU += run.cpu + redisCPU(b, rdb) - redisBefore
				cmdSecs += run.secs
				rss = max(rss, run.maxRSS)
				if !strings.Contains(run.stderr, fmt.Sprintf(": %d enqueued,", n)) {
					b.Fatalf("enqueue did not enqueue %d changes:\n%s", n, run.stderr)
				}
			}
			asynqRate := float64(n*b.N) / asynqSecs
			cmdRate := float64(n*b.N) / cmdSecs
			b.ReportMetric(asynqRate, "asynq_tasks/s")
			b.ReportMetric(cmdRate, "enqueue_tasks/s")
			b.ReportMetric(cmdRate/asynqRate, "ratio")
			b.ReportMetric(rss, "enqueue_maxrss_MiB")
			// CPU per task, the process (this one for the loop, the child
			// for the command) and redis-server: on a shared host, steadier
			// than the rates; cpu_ratio is the rate ratio of a CPU-bound host.
			b.ReportMetric(asynqCPU/float64(n*b.N)*1e6, "asynq_cpu_µs/task")
			b.ReportMetric(cmdCPU/float64(n*b.N)*1e6, "enqueue_cpu_µs/task")
			b.ReportMetric(asynqCPU/cmdCPU, "cpu_ratio")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkEnqueueMemory runs `couponq enqueue` of COUPONQ_BENCH_MEM_LINES
// lines (default 1 000 000) as a child process and reports its peak RSS:
// "validate" against a Redis that is not there (the command validates the
// whole file, then fails to reach Redis: validation alone), "enqueue" the
// whole command into a real redis-server. Run with -benchtime=1x.
func BenchmarkEnqueueMemory(b *testing.B) {
	n := envInt("COUPONQ_BENCH_MEM_LINES", 1_000_000)
	exe := couponqBinary(b)
	path, _ := writeChangeFile(b, b.TempDir(), n)
	b.Run("validate", func(b *testing.B) {
		// A port nothing listens on: reserved, never launched.
		srv := redistest.Reserve(b)
		env := childEnv("COUPONQ_REDIS_URL=" + srv.URL())
		var secs, rss float64
		for b.Loop() {
			run := runChild(b, exe, []string{"enqueue", "--file", path}, env, true)
			if !strings.Contains(run.stderr, "nothing was enqueued") {
				b.Fatalf("expected a Redis error after validation:\n%s", run.stderr)
			}
			secs += run.secs
			rss = max(rss, run.maxRSS)
		}
		b.ReportMetric(float64(n*b.N)/secs, "lines/s")
		b.ReportMetric(rss, "maxrss_MiB")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("enqueue", func(b *testing.B) {
		srv := redistest.Start(b)
		rdb := srv.Client()
		defer rdb.Close()
		env := childEnv("COUPONQ_REDIS_URL=" + srv.URL())
		var secs, rss float64
		for b.Loop() {
			if err := rdb.FlushAll(context.Background()).Err(); err != nil {
				b.Fatal(err)
			}
			run := runChild(b, exe, []string{"enqueue", "--file", path}, env, false)
			secs += run.secs
			rss = max(rss, run.maxRSS)
		}
		b.ReportMetric(float64(n*b.N)/secs, "tasks/s")
		b.ReportMetric(rss, "maxrss_MiB")
		b.ReportMetric(0, "ns/op")
	})
}

// BenchmarkWorkerRSS enqueues COUPONQ_BENCH_RSS_QUEUED changes (default
// 100 000) with `couponq enqueue`, then runs `couponq worker`
// (concurrency 32, rate 0, JSON logs to a file) against the fake WeChat Pay
// server until COUPONQ_BENCH_RSS_DONE tasks (default 6 000) have succeeded,
// stops it with SIGTERM and reports its peak RSS. Run with -benchtime=1x.
func BenchmarkWorkerRSS(b *testing.B) {
	queued := envInt("COUPONQ_BENCH_RSS_QUEUED", 100_000)
	done := envInt("COUPONQ_BENCH_RSS_DONE", 6_000)
	exe := couponqBinary(b)
	srv := redistest.Start(b)
	rdb := srv.Client()
	defer rdb.Close()
	dir := b.TempDir()
	var rss, rate float64
	for b.Loop() {
		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			b.Fatal(err)
		}
		fake := wechatpaytest.NewServer(b)
		per := (queued + 2) / 3
		upd, deact := fake.SeedCoupons(fake.BrandID(), min(per, 1000)), fake.SeedCoupons(fake.BrandID(), per)
		path := filepath.Join(dir, "rss.jsonl")
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		w := bufio.NewWriter(f)
		for c := range mixedChanges(fake.BrandID(), upd, deact, queued) {
			line, _ := json.Marshal(c)
			w.Write(line)
			w.WriteByte('\n')
		}
		w.Flush()
		f.Close()
		env := childEnv("COUPONQ_REDIS_URL=" + srv.URL())
		run := runChild(b, exe, []string{"enqueue", "--file", path}, env, false)
		batch := strings.TrimSpace(run.stdout)

		wpEnv, err := fake.WriteEnv(dir)
		if err != nil {
			b.Fatal(err)
		}
		wenv := childEnv("COUPONQ_REDIS_URL="+srv.URL(), "COUPONQ_CONCURRENCY=32", "COUPONQ_RATE=0",
			"COUPONQ_HTTP_ADDR=127.0.0.1:0", "COUPONQ_LOG_FORMAT=json")
		for k, v := range wpEnv {
			wenv = append(wenv, k+"="+v)
		}
		logf, err := os.Create(filepath.Join(dir, "worker.log"))
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(exe, "worker")
		cmd.Env = wenv
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		hwm := watchHWM(cmd.Process.Pid)
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		reader := tasks.NewReader(rdb)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		var first time.Time
		var firstN int
		for {
			st, err := reader.Batch(ctx, batch)
			if err != nil {
				cancel()
				b.Fatalf("batch %s: %v", batch, err)
			}
			if first.IsZero() && st.Succeeded > 0 {
				first, firstN = time.Now(), st.Succeeded
			}
			if st.Succeeded >= done {
				rate = float64(st.Succeeded-firstN) / time.Since(first).Seconds()
				break
			}
			select {
			case err := <-exited:
				cancel()
				out, _ := os.ReadFile(logf.Name())
				b.Fatalf("worker exited early: %v\n%s", err, tail(out, 4000))
			case <-ctx.Done():
				cancel()
				_ = cmd.Process.Kill()
				b.Fatalf("worker did not finish %d tasks in time", done)
			case <-time.After(100 * time.Millisecond):
			}
		}
		cancel()
		// The peak so far: the reading stops when the process is gone.
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				b.Errorf("worker: %v", err)
			}
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			b.Errorf("worker did not stop on SIGTERM")
		}
		logf.Close()
		if testing.Verbose() {
			out, _ := os.ReadFile(logf.Name())
			b.Logf("worker log, last lines:\n%s", tail(out, 3000))
		}
		rss = max(rss, hwm())
		fake.Close()
	}
	b.ReportMetric(rss, "worker_maxrss_MiB")
	b.ReportMetric(rate, "worker_tasks/s")
	b.ReportMetric(float64(runtime.NumCPU()), "cpus")
	b.ReportMetric(0, "ns/op")
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
