package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
	"github.com/couponq/couponq/worker"
)

// The producer under faults: `couponq enqueue` of a 20 000-line file, run
// as the built binary, while Redis is frozen (SIGSTOP) or the producer is
// SIGKILLed. Whatever happens, its exit status and Redis must agree: exit
// 0 only if every change is one result of the batch and one asynq task.

const faultLines = 20_000

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// couponqBinary builds cmd/couponq once per test binary.
func couponqBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "couponq-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "couponq")
		cmd := exec.Command("go", "build", "-o", builtBin, "github.com/couponq/couponq/cmd/couponq")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// changeFile writes n changes, each with its own out_request_no, and
// returns its path and the task IDs in file order.
func changeFile(t *testing.T, n int, brand string, coupons []string) (string, []string) {
	t.Helper()
	var sb strings.Builder
	ids := make([]string, 0, n)
	for i := range n {
		coupon := fmt.Sprintf("%d", 1000000000+i%500)
		if len(coupons) > 0 {
			coupon = coupons[i%len(coupons)]
		}
		orn := fmt.Sprintf("flt%07d", i)
		switch i % 3 {
		case 0:
			fmt.Fprintf(&sb, `{"op":"update","product_coupon_id":%q,"brand_id":%q,"out_request_no":%q,"display_info":{"name":"满100减%d","original_price":%d}}`+"\n", coupon, brand, orn, i%50+1, 10000+i)
			ids = append(ids, tasks.TaskID(tasks.OpUpdate, brand, orn))
		case 1:
			fmt.Fprintf(&sb, `{"op":"deactivate","product_coupon_id":%q,"brand_id":%q,"out_request_no":%q,"deactivate_reason":"批次信息有误"}`+"\n", coupon, brand, orn)
			ids = append(ids, tasks.TaskID(tasks.OpDeactivate, brand, orn))
		default:
			fmt.Fprintf(&sb, `{"op":"get","product_coupon_id":%q,"brand_id":%q,"out_request_no":%q}`+"\n", coupon, brand, orn)
			ids = append(ids, tasks.TaskID(tasks.OpGet, brand, orn))
		}
	}
	p := filepath.Join(t.TempDir(), "changes.jsonl")
	if err := os.WriteFile(p, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p, ids
}

// enqueueProc is one `couponq enqueue` child process.
type enqueueProc struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
	done           chan struct{}
	err            error
}

func startEnqueue(t *testing.T, redisURL, file, batch string) *enqueueProc {
	t.Helper()
	p := &enqueueProc{done: make(chan struct{})}
	p.cmd = exec.Command(couponqBinary(t), "enqueue", "--file", file, "--batch", batch, "--redis", redisURL)
	p.cmd.Env = append(os.Environ(), "COUPONQ_REDIS_URL=")
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { _ = p.cmd.Process.Kill(); <-p.done })
	return p
}

// wait returns the exit status, killing the process after d.
func (p *enqueueProc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("enqueue still running after %s; stderr:\n%s", d, p.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatal(p.err)
	}
	return 0
}

// untilMembers polls (bounded) until batch's task set holds n members.
func untilMembers(t *testing.T, rdb redis.UniversalClient, batch string, n int64, p *enqueueProc) {
	t.Helper()
	testutil.Eventually(t, 60*time.Second, 2*time.Millisecond, func() error {
		select {
		case <-p.done:
			return nil // finished before the fault point: the check below says so
		default:
		}
		if got := rdb.SCard(context.Background(), results.BatchTasksKey(batch)).Val(); got < n {
			return fmt.Errorf("%d members, want %d", got, n)
		}
		return nil
	}, "enqueue never reached the fault point")
}

// batchState is what Redis says of a batch and the changes of its file.
type batchState struct {
	total, duplicates, members int
	sealed                     bool
	ok                         int      // result of this batch and an asynq task (or past queued)
	missing                    []string // no result at all
	otherBatch                 []string // a result of another batch (phantom duplicate)
	queuedNoTask               []string // result queued, no asynq task
	taskNoResult               []string // asynq task of a change whose result is missing
}

func (s *batchState) String() string {
	return fmt.Sprintf("total %d, duplicates %d, members %d, sealed %v; %d ok, %d missing, %d of another batch, %d queued without a task, %d tasks without a result",
		s.total, s.duplicates, s.members, s.sealed, s.ok, len(s.missing), len(s.otherBatch), len(s.queuedNoTask), len(s.taskNoResult))
}

// inspect reads the batch and, for every task ID of the file, its result
// and whether asynq holds its task.
func inspect(t *testing.T, rdb redis.UniversalClient, batch string, ids []string) *batchState {
	t.Helper()
	ctx := context.Background()
	st := &batchState{}
	b := rdb.HGetAll(ctx, results.BatchKey(batch)).Val()
	st.total, _ = strconv.Atoi(b[results.BatchFieldTotal])
	st.duplicates, _ = strconv.Atoi(b[results.BatchFieldDuplicates])
	st.sealed = b[results.BatchFieldSealed] == "1"
	st.members = int(rdb.SCard(ctx, results.BatchTasksKey(batch)).Val())
	for chunk := range slicesChunk(ids, 1000) {
		hm := make([]*redis.SliceCmd, len(chunk))
		ex := make([]*redis.IntCmd, len(chunk))
		if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range chunk {
				hm[i] = p.HMGet(ctx, results.ResultKey(id), results.FieldBatch, results.FieldStatus)
				ex[i] = p.Exists(ctx, "asynq:{"+tasks.DefaultQueue+"}:t:"+id)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for i, id := range chunk {
			v := hm[i].Val()
			hasTask := ex[i].Val() == 1
			if v[0] == nil {
				st.missing = append(st.missing, id)
				if hasTask {
					st.taskNoResult = append(st.taskNoResult, id)
				}
				continue
			}
			if v[0] != batch {
				st.otherBatch = append(st.otherBatch, id)
				continue
			}
			if v[1] == string(results.StatusQueued) && !hasTask {
				st.queuedNoTask = append(st.queuedNoTask, id)
				continue
			}
			st.ok++
		}
	}
	return st
}

func slicesChunk(s []string, n int) func(func([]string) bool) {
	return func(yield func([]string) bool) {
		for len(s) > 0 {
			c := s[:min(n, len(s))]
			s = s[len(c):]
			if !yield(c) {
				return
			}
		}
	}
}

// complete says whether st is the exact batch of n changes: every change
// one result of the batch with its task, counted once, no duplicates.
func (s *batchState) complete(n int) bool {
	return s.ok == n && s.total == n && s.members == n && s.duplicates == 0 && s.sealed &&
		len(s.missing)+len(s.otherBatch)+len(s.queuedNoTask)+len(s.taskNoResult) == 0
}

var notEnqueuedRe = regexp.MustCompile(`(\d+) changes? (?:were )?not enqueued`)

// agree checks that exit status code and state agree: 0 only for the
// complete batch; 1 naming as many changes not enqueued as Redis lacks.
func agree(t *testing.T, code int, stderr string, st *batchState, n int) {
	t.Helper()
	switch code {
	case 0:
		if !st.complete(n) {
			t.Errorf("exit 0, but Redis says %s\nstderr:\n%s", st, tail(stderr))
		}
	case 1:
		m := notEnqueuedRe.FindStringSubmatch(stderr)
		if m == nil {
			t.Fatalf("exit 1 without saying how many changes are not enqueued; state %s\nstderr:\n%s", st, tail(stderr))
		}
		claimed, _ := strconv.Atoi(m[1])
		if lacking := n - st.ok; claimed < lacking {
			t.Errorf("exit 1 naming %d changes not enqueued, but %d are not (%s)", claimed, lacking, st)
		}
		if len(st.otherBatch)+len(st.taskNoResult) > 0 || st.duplicates != 0 {
			t.Errorf("exit 1, and Redis is inconsistent: %s", st)
		}
	default:
		t.Errorf("exit %d; stderr:\n%s", code, tail(stderr))
	}
}

func tail(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > 15 {
		lines = append([]string{"…"}, lines[len(lines)-15:]...)
	}
	return strings.Join(lines, "\n")
}

// Redis frozen for 6 s at a few points of a 20 000-change enqueue: go-redis
// times out and re-sends, and the producer must neither lose nor double a
// change, nor report a phantom duplicate.
func TestEnqueueRedisPaused(t *testing.T) {
	t.Parallel()
	redistest.Require(t)
	for _, tt := range []struct {
		name string
		at   int64 // batch members when Redis is frozen
	}{
		{"at the first accept", 1},
		{"mid-batch", faultLines / 2},
		{"near the end", faultLines - 300},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.Start(t)
			rdb := srv.Client()
			file, ids := changeFile(t, faultLines, "120344", nil)
			couponqBinary(t) // built before the clock starts
			start := time.Now()
			p := startEnqueue(t, srv.URL(), file, "paused")
			untilMembers(t, rdb, "paused", tt.at, p)
			resume := srv.Pause()
			time.Sleep(6 * time.Second) // the fault's length, not a check
			resume()
			code := p.wait(t, 90*time.Second)
			st := inspect(t, rdb, "paused", ids)
			t.Logf("exit %d after %s; %s\n%s", code, time.Since(start).Round(time.Millisecond), st, tail(p.stderr.String()))
			agree(t, code, p.stderr.String(), st, faultLines)
		})
	}
}

// The producer SIGKILLed mid-batch, then run again with the same --batch:
// the rerun completes the batch exactly, enqueuing what the killed run
// accepted but never handed to asynq.
func TestEnqueueKilledThenRerun(t *testing.T) {
	t.Parallel()
	enqueueKilledThenRerun(t, onSingle(t), faultLines)
}

func enqueueKilledThenRerun(t *testing.T, r *topo, n int) {
	t.Helper()
	rdb := r.rdb
	file, ids := changeFile(t, n, "120344", nil)
	p := startEnqueue(t, r.url, file, "killed")
	untilMembers(t, rdb, "killed", int64(n/3), p)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	before := inspect(t, rdb, "killed", ids)
	t.Logf("after SIGKILL: %s", before)

	start := time.Now()
	rerun := startEnqueue(t, r.url, file, "killed")
	code := rerun.wait(t, 60*time.Second)
	st := inspect(t, rdb, "killed", ids)
	t.Logf("%s: rerun: exit %d after %s; %s\n%s", r, code, time.Since(start).Round(time.Millisecond), st, tail(rerun.stderr.String()))
	if code != 0 || !st.complete(n) {
		t.Errorf("rerun: exit %d; want 0 and the complete batch: %s", code, st)
	}
	if strings.TrimSpace(rerun.stdout.String()) != "killed" {
		t.Errorf("rerun stdout %q, want the batch ID", rerun.stdout.String())
	}
}

// The producer SIGKILLed and nobody reruns it: a worker adopts the changes
// accepted but never handed to asynq, seals the abandoned batch, and the
// batch finishes.
func TestEnqueueKilledWorkersAdopt(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t)
	const n = 3000
	coupons := fake.SeedCoupons(fake.BrandID(), n) // one change per coupon: no write races another
	file, ids := changeFile(t, n, fake.BrandID(), coupons)
	p := startEnqueue(t, srv.URL(), file, "adopt")
	untilMembers(t, rdb, "adopt", n/3, p)
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	before := inspect(t, rdb, "adopt", ids)
	t.Logf("after SIGKILL: %s", before)

	start := time.Now()
	startAdoptingWorker(t, srv.URL(), fake.Client(), 16, worker.MinAdoptAfter)
	st := wait(t, rdb, "adopt", 45*time.Second)
	after := inspect(t, rdb, "adopt", ids)
	t.Logf("batch finished %s after the worker started: %+v", time.Since(start).Round(time.Millisecond), st)
	// The batch holds every change the killed run accepted: the tasks of
	// its set then, and those whose result it wrote before their batch
	// step (the sweep settles them: they join the set and the counters).
	if st.Total != after.ok || st.Total != after.members || st.Total < before.members || len(after.queuedNoTask) != 0 || len(after.taskNoResult) != 0 {
		t.Errorf("batch %+v; before %s; after %s", st, before, after)
	}
	verify(t, rdb, fake, "adopt", st, nil) // every write applied once, counters exact
}

// startAdoptingWorker is startWorker with a short adoption grace period.
func startAdoptingWorker(t *testing.T, redisURL string, api worker.API, concurrency int, adoptAfter time.Duration) {
	t.Helper()
	startWorkerConfig(t, worker.Config{
		Redis: redisConn(t, redisURL), Concurrency: concurrency, MaxRetry: 15,
		RetryBase: 50 * time.Millisecond, RetryCap: time.Second, AdoptAfter: adoptAfter,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}, api)
}
