package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// Quota benchmark settings. The rate is both the workers' Rate and the
// fake's WithQPS ceiling.
const (
	quotaRate        = 20
	quotaConcurrency = 20              // per worker process
	quotaTimeout     = 3 * time.Minute // per scenario, from the first worker start to the batch done
	quotaStopTimeout = 35 * time.Second
	quotaReadyWait   = 20 * time.Second
)

// quotaOps are the endpoints measured, in table order.
var quotaOps = []string{wechatpaytest.OpUpdate, wechatpaytest.OpDeactivate, wechatpaytest.OpGet}

// quotaScenario is one run of BenchmarkQuota.
type quotaScenario struct {
	name    string
	opts    []wechatpaytest.Option
	workers int     // processes started before the enqueue
	joinAt  float64 // share of tasks terminal when one more process starts; 0 = never
	leaveAt float64 // share of tasks terminal when the first process gets SIGTERM; 0 = never
	// Goals, printed beside the figures (never pass/fail): every
	// endpoint's calls/s at least goalShare of the rate, and its
	// over-ceiling 429s at most goalOver of its calls.
	goalShare, goalOver float64
}

var quotaScenarios = []quotaScenario{
	{name: "strict", workers: 3, goalShare: 0.97, goalOver: 0},
	{name: "jitter", opts: []wechatpaytest.Option{wechatpaytest.WithJitter(0, 20*time.Millisecond)},
		workers: 2, joinAt: 0.4, leaveAt: 0.7, goalShare: 0.95, goalOver: 0.005},
	{name: "spurious429", opts: []wechatpaytest.Option{wechatpaytest.WithSpurious429(0.02)},
		workers: 3, goalShare: 0.95, goalOver: 0},
}

func (sc quotaScenario) goal() string {
	return fmt.Sprintf(">= %.0f%% of quota, <= %s over", sc.goalShare*100, pct(sc.goalOver))
}

// BenchmarkQuota measures how much of WeChat Pay's 20 calls/s per
// endpoint the shared limiter (worker.NewLimiter, built by worker.New from
// Rate) gets for three worker processes, and how often it goes over. Each
// sub-benchmark is one scenario, one batch per run:
//
//   - strict: 3 processes from the start, no jitter;
//   - jitter: the fake delays every call by 0–20 ms before its ceiling sees
//     it; 2 processes at the start, a third joins when 40% of the tasks
//     are terminal and the first leaves (SIGTERM, graceful) at 70%;
//   - spurious429: 3 processes, no jitter, 2% of the admitted calls
//     answered 429 anyway (WithSpurious429(0.02)).
//
// Every process (this test binary re-executed with COUPONQ_BENCH_WORKER=1)
// has Rate 20 and Concurrency 20; the fake (in this process) has a strict
// sliding-window ceiling WithQPS(20): at most 20 admitted calls per
// endpoint in any one-second window. COUPONQ_BENCH_QUOTA_N (default 1800)
// mixed changes, a third each of update, deactivate and get, interleaved,
// are enqueued with the Producer once the first processes are serving.
//
// Per endpoint it reports the admitted calls per second over that
// endpoint's active span ((calls−1) ÷ (last − first admission)), that ÷ 20,
// the fake's over-ceiling 429s and their share of the endpoint's calls,
// the spurious 429s and the fake's MaxInWindow; per batch the wall time
// (enqueue start to batch done) against the least time its calls need at
// 20/s (admitted calls ÷ 20, the largest over the endpoints). The figures
// go to b.ReportMetric and, after all benchmarks, to a table per run and a
// median/worst summary per scenario on stdout (see printQuotaReport). The
// goals are printed beside them and never fail the benchmark; lost or
// duplicated work does.
//
// Run it with `make bench-quota`; see bench/ratelimit.txt.
func BenchmarkQuota(b *testing.B) {
	for _, sc := range quotaScenarios {
		b.Run(sc.name, func(b *testing.B) {
			for b.Loop() {
				res := runQuota(b, sc)
				quotaRuns = append(quotaRuns, res)
				res.report(b)
			}
		})
	}
}

// endpointFigures is one endpoint's share of a quota run.
type endpointFigures struct {
	op       string
	tasks    int     // changes of this op in the batch
	calls    int     // admitted calls (Stats.Admitted)
	span     float64 // seconds from the first to the last admitted call
	over     int     // 429s over the ceiling
	spurious int     // admitted calls answered 429 anyway
	maxInWin int
	ok2xx    int       // 2xx answers
	overAt   []float64 // seconds after the batch's first admitted call of the first 429s over the ceiling
}

func (e endpointFigures) rate() float64 {
	if e.calls < 2 || e.span <= 0 {
		return 0
	}
	return float64(e.calls-1) / e.span
}

func (e endpointFigures) share() float64 { return e.rate() / quotaRate }

func (e endpointFigures) overShare() float64 {
	if e.calls+e.over == 0 {
		return 0
	}
	return float64(e.over) / float64(e.calls+e.over)
}

// quotaResult is one run of one scenario.
type quotaResult struct {
	sc        quotaScenario
	run       int // 1-based within the scenario
	n         int
	endpoints []endpointFigures
	wall      float64 // seconds, enqueue start to batch done
	least     float64 // seconds the admitted calls need at quotaRate
	took      float64 // seconds for the whole run, process starts included
	notes     []string
}

func (r quotaResult) ratio() float64 { return r.wall / r.least }

// met reports whether the run met the scenario's goals: no endpoint goes
// over the ceiling more than allowed, and every endpoint that bounds the
// batch (its admitted calls need the least time at quotaRate) keeps the
// quota share. An endpoint with fewer calls cannot fill its quota: an
// update reads its coupon first (GET, on the GET quota; SPEC "Updates are
// partial"), so a mix of updates and gets is bound by the GET endpoint and
// the PATCH endpoint can only follow it.
func (r quotaResult) met() bool {
	for _, e := range r.endpoints {
		if e.overShare() > r.sc.goalOver {
			return false
		}
		if e.bounds(r.least) && e.share() < r.sc.goalShare {
			return false
		}
	}
	return true
}

// bounds reports whether the endpoint's calls need the batch's least time.
func (e endpointFigures) bounds(least float64) bool {
	return float64(e.calls)/quotaRate >= least-0.5/quotaRate
}

func (r quotaResult) report(b *testing.B) {
	for _, e := range r.endpoints {
		b.ReportMetric(e.rate(), e.op+"_calls/s")
		b.ReportMetric(e.share()*100, e.op+"_quota_%")
		b.ReportMetric(float64(e.over), e.op+"_over_429s")
		b.ReportMetric(e.overShare()*100, e.op+"_over_%")
		b.ReportMetric(float64(e.spurious), e.op+"_spurious_429s")
		b.ReportMetric(float64(e.maxInWin), e.op+"_max_in_window")
	}
	b.ReportMetric(r.wall, "wall_s")
	b.ReportMetric(r.least, "least_s")
	b.ReportMetric(r.ratio(), "wall/least")
	b.ReportMetric(0, "ns/op") // each op is a whole batch; the rates say it
}

// quotaRuns collects every finished run for printQuotaReport.
var quotaRuns []quotaResult

// runQuota runs one batch of scenario sc and checks that no work was lost
// or applied twice.
func runQuota(b *testing.B, sc quotaScenario) quotaResult {
	began := time.Now()
	srv := redistest.Start(b)
	n := envInt("COUPONQ_BENCH_QUOTA_N", 1800)
	if n < 3 {
		b.Fatalf("COUPONQ_BENCH_QUOTA_N is %d: needs at least one change per endpoint", n)
	}
	conn, err := redisurl.Parse(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	rdb := srv.Client()
	defer rdb.Close()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}

	fake, upd, deact := newFake(b, n, append([]wechatpaytest.Option{wechatpaytest.WithQPS(quotaRate)}, sc.opts...)...)
	defer fake.Close()
	dir := b.TempDir()
	env, err := fake.WriteEnv(dir)
	if err != nil {
		b.Fatal(err)
	}
	childEnv := append(os.Environ(),
		workerEnv+"=1",
		parentEnv+"="+strconv.Itoa(os.Getpid()),
		"COUPONQ_BENCH_REDIS="+srv.URL(),
		"COUPONQ_BENCH_RATE="+strconv.Itoa(quotaRate),
		"COUPONQ_BENCH_CONCURRENCY="+strconv.Itoa(quotaConcurrency),
	)
	for k, v := range env {
		childEnv = append(childEnv, k+"="+v)
	}
	var procs []*workerProc
	start := func() *workerProc {
		p := startWorkerProcess(b, exe, childEnv, filepath.Join(dir, fmt.Sprintf("worker%d.stderr", len(procs))))
		procs = append(procs, p)
		return p
	}

	ctx, cancel := context.WithTimeout(context.Background(), quotaTimeout)
	defer cancel()
	insp := asynq.NewInspector(conn)
	defer insp.Close()
	for range sc.workers {
		start()
	}
	waitServing(ctx, b, insp, procs)

	p, err := tasks.NewProducer(rdb)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	res := quotaResult{sc: sc, n: n}
	t0 := time.Now()
	note := func(format string, args ...any) {
		res.notes = append(res.notes, fmt.Sprintf("%5.1f s: ", time.Since(t0).Seconds())+fmt.Sprintf(format, args...))
	}
	rep, err := p.EnqueueBatch(ctx, mixedChanges(fake.BrandID(), upd, deact, n), tasks.BatchOptions{})
	if err != nil || rep.Total != n {
		b.Fatalf("EnqueueBatch: %+v, %v", rep, err)
	}
	note("%d changes enqueued, %d processes serving", n, len(procs))

	var (
		joined, left bool
		leaver       *workerProc
		leftAt       time.Time
	)
	onProgress := func(st *tasks.BatchStatus) {
		done := float64(st.Succeeded+st.Failed) / float64(n)
		if sc.joinAt > 0 && !joined && done >= sc.joinAt {
			joined = true
			start()
			note("%.0f%% terminal: process %d joins (%d running)", done*100, len(procs)-1, running(procs))
		}
		if sc.leaveAt > 0 && !left && done >= sc.leaveAt {
			left, leaver, leftAt = true, procs[0], time.Now()
			leaver.terminate()
			note("%.0f%% terminal: process 0 leaves (SIGTERM; %d running)", done*100, running(procs))
		}
	}
	st, err := tasks.NewReader(rdb).Wait(ctx, rep.BatchID, 20*time.Millisecond, onProgress)
	res.wall = time.Since(t0).Seconds()
	if err != nil {
		b.Fatalf("%s: Wait: %v (last status %+v)", sc.name, err, st)
	}
	if leaver != nil {
		if !leaver.wait(quotaStopTimeout) {
			b.Errorf("%s: process 0 did not exit within %v of SIGTERM", sc.name, quotaStopTimeout)
		} else {
			note("process 0 had exited %.1f s after SIGTERM (%v)", leaver.exitedAt.Sub(leftAt).Seconds(), exitText(leaver.err))
			if leaver.err != nil {
				b.Errorf("%s: process 0 exited after SIGTERM with %v", sc.name, leaver.err)
			}
		}
	}

	// Correctness: every task succeeded, every write applied exactly once.
	if st.Succeeded != n || st.Failed != 0 || !st.Done() {
		failed, _ := tasks.NewReader(rdb).FailedTasks(context.Background(), rep.BatchID, 5)
		var why []string
		for _, f := range failed {
			why = append(why, fmt.Sprintf("%+v", *f))
		}
		b.Fatalf("%s: batch %+v; failed tasks (first 5): %s", sc.name, st, strings.Join(why, "; "))
	}
	perOp := map[string]int{}
	var wrong []string
	writes := 0
	for c := range mixedChanges(fake.BrandID(), upd, deact, n) {
		perOp[string(c.Op)]++
		if c.Op == tasks.OpGet {
			continue
		}
		writes++
		if k := fake.AppliedCount(c.OutRequestNo); k != 1 {
			wrong = append(wrong, fmt.Sprintf("%s applied %d times", c.OutRequestNo, k))
		}
	}
	if effects := len(fake.Effects()); len(wrong) > 0 || effects != writes {
		b.Fatalf("%s: %d writes, %d effects; %d wrong (first ones: %s)", sc.name, writes, effects, len(wrong),
			strings.Join(wrong[:min(len(wrong), 5)], ", "))
	}

	res.endpoints = endpointsOf(fake, perOp)
	for _, e := range res.endpoints {
		if e.ok2xx < e.tasks {
			b.Fatalf("%s: %s: %d tasks succeeded but only %d calls answered 2xx", sc.name, e.op, e.tasks, e.ok2xx)
		}
		if len(e.overAt) > 0 {
			at := make([]string, len(e.overAt))
			for i, t := range e.overAt {
				at[i] = strconv.FormatFloat(t, 'f', 2, 64)
			}
			more := ""
			if e.over > len(at) {
				more = ", ..."
			}
			res.notes = append(res.notes, fmt.Sprintf("       %s: 429s over the ceiling at %s%s s after the first call", e.op, strings.Join(at, ", "), more))
		}
		if e.ok2xx > e.tasks {
			note("%s: %d calls answered 2xx for %d tasks (repeats)", e.op, e.ok2xx, e.tasks)
		}
		res.least = max(res.least, float64(e.calls)/quotaRate)
	}
	res.run = 1
	for _, r := range quotaRuns {
		if r.sc.name == sc.name {
			res.run++
		}
	}
	res.took = time.Since(began).Seconds()
	return res
}

// endpointsOf reads the fake's counters and request log. perOp is the
// number of tasks of each op.
func endpointsOf(fake *wechatpaytest.Server, perOp map[string]int) []endpointFigures {
	stats := fake.Stats()
	type span struct {
		first, last time.Time
		n, ok       int
	}
	spans := map[string]*span{}
	reqs := fake.Requests()
	var t0 time.Time
	for _, r := range reqs {
		if slices.Contains(quotaOps, r.Op) && (t0.IsZero() || r.Time.Before(t0)) {
			t0 = r.Time
		}
	}
	overAt := map[string][]float64{}
	for _, r := range reqs {
		if r.Fault == wechatpaytest.FaultQPS && len(overAt[r.Op]) < 10 {
			overAt[r.Op] = append(overAt[r.Op], r.Time.Sub(t0).Seconds())
		}
		if !slices.Contains(quotaOps, r.Op) || r.Fault == wechatpaytest.FaultQPS || r.Fault == wechatpaytest.FaultScripted {
			continue
		}
		s := spans[r.Op]
		if s == nil {
			s = &span{first: r.Time, last: r.Time}
			spans[r.Op] = s
		}
		if r.Time.Before(s.first) {
			s.first = r.Time
		}
		if r.Time.After(s.last) {
			s.last = r.Time
		}
		s.n++
		if r.Status >= 200 && r.Status <= 299 {
			s.ok++
		}
	}
	var out []endpointFigures
	for _, op := range quotaOps {
		st := stats[op]
		e := endpointFigures{op: op, tasks: perOp[op], calls: st.Admitted, over: st.OverCeiling,
			spurious: st.Spurious429, maxInWin: st.MaxInWindow, overAt: overAt[op]}
		if s := spans[op]; s != nil {
			e.span, e.ok2xx = s.last.Sub(s.first).Seconds(), s.ok
		}
		out = append(out, e)
	}
	return out
}

// waitServing waits until every process in procs has registered its asynq
// server in Redis.
func waitServing(ctx context.Context, b *testing.B, insp *asynq.Inspector, procs []*workerProc) {
	b.Helper()
	ctx, cancel := context.WithTimeout(ctx, quotaReadyWait)
	defer cancel()
	for {
		servers, err := insp.Servers()
		if err == nil {
			up := map[int]bool{}
			for _, s := range servers {
				up[s.PID] = true
			}
			all := true
			for _, p := range procs {
				if !up[p.cmd.Process.Pid] {
					all = false
				}
			}
			if all {
				return
			}
		}
		select {
		case <-ctx.Done():
			b.Fatalf("worker processes not serving within %v (last error %v)", quotaReadyWait, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func running(procs []*workerProc) int {
	n := 0
	for _, p := range procs {
		if !p.signalled && !p.exited() {
			n++
		}
	}
	return n
}

func exitText(err error) string {
	if err == nil {
		return "exit 0"
	}
	return err.Error()
}

// workerProc is one worker process.
type workerProc struct {
	cmd       *exec.Cmd
	done      chan struct{} // closed when it has exited
	err       error         // its exit error, once done is closed
	exitedAt  time.Time
	signalled bool
}

func (p *workerProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// terminate sends SIGTERM: the worker stops taking tasks and exits once
// its in-flight ones are done.
func (p *workerProc) terminate() {
	p.signalled = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
}

// wait reports whether the process exited within timeout.
func (p *workerProc) wait(timeout time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// startWorkerProcess starts the test binary as a worker process with env,
// its stdout and stderr in stderrPath. Through b.Cleanup it is stopped,
// if still running: SIGTERM, then SIGKILL if it has not exited within
// quotaStopTimeout; it must exit 0. When the benchmark failed, the
// process's stderr is logged. Should this process die without cleaning up,
// the worker notices its parent is gone and exits (see runWorkerProcess).
func startWorkerProcess(b *testing.B, exe string, env []string, stderrPath string) *workerProc {
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
	p := &workerProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		p.exitedAt = time.Now()
		close(p.done)
	}()
	b.Cleanup(func() {
		defer stderr.Close()
		if !p.exited() {
			p.terminate()
		}
		if !p.wait(quotaStopTimeout) {
			_ = cmd.Process.Kill()
			<-p.done
			b.Errorf("worker process %d did not stop on SIGTERM within %v; killed", cmd.Process.Pid, quotaStopTimeout)
		} else if p.err != nil {
			b.Errorf("worker process %d: %v", cmd.Process.Pid, p.err)
		}
		if b.Failed() {
			out, _ := os.ReadFile(stderrPath)
			b.Logf("worker process %d stderr:\n%s", cmd.Process.Pid, out)
		}
	})
	return p
}

// printQuotaReport writes a table per BenchmarkQuota run and, per
// scenario, the median and the worst over its runs. TestMain calls it after
// the benchmarks; it writes nothing when BenchmarkQuota did not run.
func printQuotaReport(w io.Writer) {
	if len(quotaRuns) == 0 {
		return
	}
	fmt.Fprintf(w, "\nBenchmarkQuota: rate %d/s per endpoint, strict sliding-window fake WithQPS(%d), %d changes per batch\n",
		quotaRate, quotaRate, quotaRuns[0].n)
	for _, r := range quotaRuns {
		verdict := "goal MISSED"
		if r.met() {
			verdict = "goal met"
		}
		fmt.Fprintf(w, "\n%s run %d: wall %.2f s, least %.2f s, wall/least %.3f; goal %s: %s (run took %.0f s)\n",
			r.sc.name, r.run, r.wall, r.least, r.ratio(), r.sc.goal(), verdict, r.took)
		fmt.Fprintf(w, "  %-10s %6s %7s %8s %7s %8s %7s %8s %7s\n",
			"endpoint", "calls", "span_s", "calls/s", "quota", "over429", "over%", "spur429", "max/1s")
		for _, e := range r.endpoints {
			fmt.Fprintf(w, "  %-10s %6d %7.2f %8.2f %7s %8d %7s %8d %7d\n",
				e.op, e.calls, e.span, e.rate(), pct(e.share()), e.over, pct(e.overShare()), e.spurious, e.maxInWin)
		}
		for _, n := range r.notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}

	fmt.Fprintf(w, "\nSummary, median / worst over the runs of each scenario (worst: lowest calls/s, most 429s, longest wall):\n")
	fmt.Fprintf(w, "%-12s %-10s %4s %15s %17s %9s %17s %9s %7s\n",
		"scenario", "endpoint", "runs", "calls/s", "quota", "over429", "over%", "spur429", "max/1s")
	for _, sc := range quotaScenarios {
		var runs []quotaResult
		for _, r := range quotaRuns {
			if r.sc.name == sc.name {
				runs = append(runs, r)
			}
		}
		if len(runs) == 0 {
			continue
		}
		for i, op := range quotaOps {
			col := func(f func(endpointFigures) float64) []float64 {
				var v []float64
				for _, r := range runs {
					v = append(v, f(r.endpoints[i]))
				}
				slices.Sort(v)
				return v
			}
			rate := col(endpointFigures.rate)
			share := col(endpointFigures.share)
			over := col(func(e endpointFigures) float64 { return float64(e.over) })
			overShare := col(endpointFigures.overShare)
			spur := col(func(e endpointFigures) float64 { return float64(e.spurious) })
			win := col(func(e endpointFigures) float64 { return float64(e.maxInWin) })
			fmt.Fprintf(w, "%-12s %-10s %4d %6.2f / %6.2f %7s / %7s %4.0f / %2.0f %7s / %7s %4.0f / %2.0f %3.0f / %2.0f\n",
				sc.name, op, len(runs), median(rate), rate[0], pct(median(share)), pct(share[0]),
				median(over), over[len(over)-1], pct(median(overShare)), pct(overShare[len(overShare)-1]),
				median(spur), spur[len(spur)-1], median(win), win[len(win)-1])
		}
	}
	fmt.Fprintf(w, "\n%-12s %4s %17s %9s %17s  %-32s %s\n", "scenario", "runs", "wall_s", "least_s", "wall/least", "goal", "met")
	for _, sc := range quotaScenarios {
		var wall, least, ratio []float64
		met := 0
		for _, r := range quotaRuns {
			if r.sc.name == sc.name {
				wall, least, ratio = append(wall, r.wall), append(least, r.least), append(ratio, r.ratio())
				if r.met() {
					met++
				}
			}
		}
		if len(wall) == 0 {
			continue
		}
		slices.Sort(wall)
		slices.Sort(least)
		slices.Sort(ratio)
		fmt.Fprintf(w, "%-12s %4d %7.2f / %7.2f %9.2f %7.3f / %7.3f  %-32s %d/%d runs\n",
			sc.name, len(wall), median(wall), wall[len(wall)-1], median(least), median(ratio), ratio[len(ratio)-1],
			sc.goal(), met, len(wall))
	}
}

// median of sorted values.
func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

// pct formats a share as a percentage.
func pct(share float64) string {
	if share == 0 {
		return "0%"
	}
	return strconv.FormatFloat(share*100, 'f', 2, 64) + "%"
}
