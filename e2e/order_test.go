package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// Per-coupon order, couponq retry and couponq cancel, on a real
// redis-server with worker processes and the fake WeChat Pay.

// workerProcs starts n worker processes (TestMain) on the Redis redisURL
// names and the fake, with extra settings on top of its environment
// (E2E_RATE, E2E_CONCURRENCY, E2E_ADOPT_AFTER).
func workerProcs(t *testing.T, redisURL string, fake *wechatpaytest.Server, n int, extra map[string]string) []*exec.Cmd {
	t.Helper()
	env, err := fake.WriteEnv(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	maps.Copy(env, extra)
	var out []*exec.Cmd
	for i := range n {
		out = append(out, childProc(t, redisURL, env, fmt.Sprintf("worker-%d", i)))
	}
	return out
}

// couponq runs the built binary against the Redis redisURL names and
// returns its exit status and output.
func couponq(t *testing.T, redisURL string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(couponqBinary(t), args...)
	cmd.Env = append(os.Environ(), "COUPONQ_REDIS_URL="+redisURL)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return code, o.String(), e.String()
}

// effectsByCoupon returns the fake's applied changes of each coupon, in
// the order applied.
func effectsByCoupon(fake *wechatpaytest.Server) map[string][]string {
	m := map[string][]string{}
	for _, e := range fake.Effects() {
		m[e.CouponID] = append(m[e.CouponID], e.OutRequestNo)
	}
	return m
}

// 100 coupons × (update A, update B, deactivate), each round of lines in
// the file after the one before, on two worker processes with 5% 500s:
// every coupon ends named B and deactivated, the three applied in file
// order.
func TestOrderPerCouponAcrossWorkers(t *testing.T) {
	t.Parallel()
	orderAcrossWorkers(t, onSingle(t))
}

func orderAcrossWorkers(t *testing.T, r *topo) {
	t.Helper()
	rdb := r.rdb
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithSeed(11), wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	fake.SetFaults(wechatpaytest.Faults{Status500: 0.05})
	ids := fake.SeedCoupons(fake.BrandID(), 100)
	brand := fake.BrandID()
	var cs []tasks.Change
	want := map[string][]string{}
	for round, name := range []string{"周末特惠A", "周末特惠B", ""} {
		for i, id := range ids {
			orn := fmt.Sprintf("ord%d%04d", round, i)
			want[id] = append(want[id], orn)
			if name == "" {
				cs = append(cs, tasks.Change{Op: tasks.OpDeactivate, ProductCouponID: id, BrandID: brand, OutRequestNo: orn, DeactivateReason: "活动结束"})
				continue
			}
			cs = append(cs, tasks.Change{Op: tasks.OpUpdate, ProductCouponID: id, BrandID: brand, OutRequestNo: orn,
				DisplayInfo: &wechatpay.DisplayInfo{Name: name, ImageURL: "https://img.example/" + name + ".png", BackgroundURL: "https://img.example/bg.png"}})
		}
	}
	workerProcs(t, r.url, fake, 2, map[string]string{"E2E_CONCURRENCY": "8"})
	start := time.Now()
	if rep := enqueue(t, rdb, cs, "order"); rep.Total != len(cs) {
		t.Fatalf("enqueued %d, want %d", rep.Total, len(cs))
	}
	st := wait(t, rdb, "order", 3*time.Minute)
	ok, failed := verify(t, rdb, fake, "order", st, nil)
	if failed != 0 {
		t.Errorf("%d failed", failed)
	}
	got := effectsByCoupon(fake)
	for _, id := range ids {
		if !slices.Equal(got[id], want[id]) {
			t.Errorf("coupon %s: applied %v, want %v", id, got[id], want[id])
		}
		c, _ := fake.Coupon(id)
		if c.State != wechatpay.StateDeactivated || c.DisplayInfo == nil || c.DisplayInfo.Name != "周末特惠B" {
			t.Errorf("coupon %s ends %s named %+v, want DEACTIVATED named B", id, c.State, c.DisplayInfo)
		}
	}
	t.Logf("%s: %d changes to 100 coupons in %s: %d succeeded, faults %v", r, len(cs), time.Since(start).Round(time.Millisecond), ok, faultCounts(fake))
}

// A batch that failed for a reason fixed outside couponq (WeChat Pay
// answered 403 NO_AUTH to every call until the brand's authorisation was
// granted), retried with couponq retry: every change applied exactly once,
// the counters exact, every result counting two runs, no task left
// archived in asynq.
func TestRetryAfterFix(t *testing.T) {
	t.Parallel()
	retryAfterFix(t, onSingle(t))
}

func retryAfterFix(t *testing.T, r *topo) {
	t.Helper()
	rdb := r.rdb
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	const n = 40
	ids := fake.SeedCoupons(fake.BrandID(), n)
	var cs []tasks.Change
	for i, id := range ids {
		orn := fmt.Sprintf("fix%05d", i)
		if i%2 == 0 {
			cs = append(cs, tasks.Change{Op: tasks.OpDeactivate, ProductCouponID: id, BrandID: fake.BrandID(), OutRequestNo: orn, DeactivateReason: "活动结束"})
		} else {
			cs = append(cs, tasks.Change{Op: tasks.OpUpdate, ProductCouponID: id, BrandID: fake.BrandID(), OutRequestNo: orn,
				DisplayInfo: &wechatpay.DisplayInfo{Name: "新名称", ImageURL: "https://img.example/n.png", BackgroundURL: "https://img.example/bg.png"}})
		}
		fake.FailNext(403, wechatpay.CodeNoAuth)
	}
	workerProcs(t, r.url, fake, 2, nil)
	enqueue(t, rdb, cs, "fixme")
	st := wait(t, rdb, "fixme", time.Minute)
	if st.Failed != n || st.Succeeded != 0 || len(fake.Effects()) != 0 {
		t.Fatalf("first run: %+v, %d effects; want all %d failed, none applied", st, len(fake.Effects()), n)
	}

	code, stdout, stderr := couponq(t, r.url, "retry", "--batch", "fixme", "--code", wechatpay.CodeNoAuth)
	if want := fmt.Sprintf("batch fixme: %d queued again (%d failed, 0 canceled before)\n", n, n); code != 0 || stdout != want {
		t.Fatalf("retry: exit %d, stdout %q, stderr %q; want %q", code, stdout, stderr, want)
	}
	st = wait(t, rdb, "fixme", time.Minute)
	if st.Total != n || st.Succeeded != n || st.Failed != 0 || st.Canceled != 0 || st.Pending != 0 {
		t.Errorf("after retry: %+v", st)
	}
	verify(t, rdb, fake, "fixme", st, nil)
	reader := tasks.NewReader(rdb)
	for _, c := range cs {
		res, err := reader.Result(t.Context(), c.TaskID())
		if err != nil || res.Runs != 2 || res.Status != tasks.StatusSucceeded || fake.AppliedCount(c.OutRequestNo) != 1 {
			t.Errorf("%s: %+v, %v, applied %d times", c.TaskID(), res, err, fake.AppliedCount(c.OutRequestNo))
		}
	}
	insp := r.inspector(t)
	if arch, err := insp.ListArchivedTasks(tasks.DefaultQueue); err != nil || len(arch) != 0 {
		t.Errorf("archived after the retry: %d tasks, %v", len(arch), err)
	}
	if code, _, stderr := couponq(t, r.url, "retry", "--batch", "fixme"); code != 2 || !strings.Contains(stderr, "nothing to retry") {
		t.Errorf("retry of a batch with nothing failed: exit %d: %s", code, stderr)
	}
}

// couponq cancel mid-batch at 5 calls/s: nothing starts after the cancel
// but what was in a call then, so the batch ends within seconds (the rest
// would take over a minute); succeeded + canceled = total, and WeChat Pay
// saw no call of a canceled task.
func TestCancelMidBatch(t *testing.T) {
	t.Parallel()
	cancelMidBatch(t, onSingle(t))
}

func cancelMidBatch(t *testing.T, r *topo) {
	t.Helper()
	rdb := r.rdb
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	const n = 400
	ids := fake.SeedCoupons(fake.BrandID(), n)
	var cs []tasks.Change
	for i, id := range ids {
		cs = append(cs, tasks.Change{Op: tasks.OpDeactivate, ProductCouponID: id, BrandID: fake.BrandID(),
			OutRequestNo: fmt.Sprintf("cnl%05d", i), DeactivateReason: "活动取消"})
	}
	workerProcs(t, r.url, fake, 2, map[string]string{"E2E_RATE": "5"})
	couponqBinary(t) // built before the clock starts
	enqueue(t, rdb, cs, "cancelme")
	reader := tasks.NewReader(rdb)
	testutil.Eventually(t, time.Minute, 20*time.Millisecond, func() error {
		return doneAtLeast(t.Context(), reader, "cancelme", 10)
	}, "no progress before the cancel")

	start := time.Now()
	code, stdout, stderr := couponq(t, r.url, "cancel", "--batch", "cancelme")
	var nCanceled, inCall, done int
	if _, err := fmt.Sscanf(stdout, "batch cancelme: %d canceled, %d in a call (they finish), %d already done", &nCanceled, &inCall, &done); code != 0 || err != nil {
		t.Fatalf("cancel: exit %d, stdout %q (%v), stderr %q", code, stdout, err, stderr)
	}
	st := wait(t, rdb, "cancelme", time.Minute)
	took := time.Since(start)
	// What succeeded was done or in a call when the cancel came.
	if st.Succeeded+st.Canceled != n || st.Failed != 0 || st.Succeeded > done+inCall || st.Canceled < nCanceled || nCanceled+inCall+done != n {
		t.Errorf("after cancel (%d canceled, %d in a call, %d done): %+v", nCanceled, inCall, done, st)
	}
	if took > 30*time.Second { // a generous bound: the rest alone would take (n-done)/5 s
		t.Errorf("batch finished %s after the cancel, want within seconds", took.Round(time.Millisecond))
	}
	called := map[string]bool{}
	for _, q := range fake.Requests() {
		called[q.OutRequestNo] = true
	}
	canceled := 0
	for _, c := range cs {
		res, err := reader.Result(t.Context(), c.TaskID())
		if err != nil {
			t.Fatal(err)
		}
		switch res.Status {
		case tasks.StatusCanceled:
			canceled++
			if called[c.OutRequestNo] || res.Attempts != 0 {
				t.Errorf("canceled %s was called (%d attempts)", c.TaskID(), res.Attempts)
			}
		case tasks.StatusSucceeded:
			if fake.AppliedCount(c.OutRequestNo) != 1 {
				t.Errorf("succeeded %s applied %d times", c.TaskID(), fake.AppliedCount(c.OutRequestNo))
			}
		default:
			t.Errorf("%s is %s", c.TaskID(), res.Status)
		}
	}
	if canceled != st.Canceled {
		t.Errorf("%d results canceled, the batch counts %d", canceled, st.Canceled)
	}
	insp := r.inspector(t)
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		qi, err := insp.GetQueueInfo(tasks.DefaultQueue)
		if err != nil {
			return err
		}
		if qi.Pending+qi.Scheduled+qi.Retry+qi.Active != 0 {
			return fmt.Errorf("queue %+v", qi)
		}
		return nil
	}, "canceled tasks left in asynq")
	t.Logf("%s: cancel at %s: batch done %s later: %+v; %s", r, time.Now().Format(time.TimeOnly), took.Round(time.Millisecond), st, strings.TrimSpace(stdout))
}

// A worker SIGKILLed while it holds the first of two writes to each
// coupon: the second waits until asynq re-delivers the first (after its
// lease) and it is terminal; every coupon ends with the second write's
// name, applied after the first.
func TestOrderHoldsWhenHolderKilled(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithLatency(1500*time.Millisecond), wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	const n = 10
	ids := fake.SeedCoupons(fake.BrandID(), n)
	var cs []tasks.Change
	for round, name := range []string{"first", "second"} {
		for i, id := range ids {
			cs = append(cs, tasks.Change{Op: tasks.OpUpdate, ProductCouponID: id, BrandID: fake.BrandID(), OutRequestNo: fmt.Sprintf("kil%d%04d", round, i),
				DisplayInfo: &wechatpay.DisplayInfo{Name: name, ImageURL: "https://img.example/k.png", BackgroundURL: "https://img.example/bg.png"}})
		}
	}
	a := workerProcs(t, srv.URL(), fake, 1, map[string]string{"E2E_CONCURRENCY": "32"})[0]
	enqueue(t, rdb, cs, "killorder")
	// Kill A once it runs every first write (its calls are on their way).
	testutil.Eventually(t, time.Minute, 5*time.Millisecond, func() error {
		sts, err := statuses(t.Context(), rdb, cs[:n])
		if err != nil {
			return err
		}
		for i, s := range sts {
			if s != string(tasks.StatusRunning) {
				return fmt.Errorf("%s is %q", cs[i].TaskID(), s)
			}
		}
		return nil
	}, "worker A did not take the first writes")
	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.Wait()
	killed := time.Now()
	workerProcs(t, srv.URL(), fake, 2, map[string]string{"E2E_CONCURRENCY": "8"})
	st := wait(t, rdb, "killorder", 4*time.Minute)
	verify(t, rdb, fake, "killorder", st, nil)
	got := effectsByCoupon(fake)
	for i, id := range ids {
		want := []string{cs[i].OutRequestNo, cs[n+i].OutRequestNo}
		if !slices.Equal(got[id], want) {
			t.Errorf("coupon %s: applied %v, want %v", id, got[id], want)
		}
		if c, _ := fake.Coupon(id); c.DisplayInfo == nil || c.DisplayInfo.Name != "second" {
			t.Errorf("coupon %s ends named %+v, want second", id, c.DisplayInfo)
		}
	}
	t.Logf("holder killed; batch done %s later: %+v", time.Since(killed).Round(time.Second), st)
}

// statuses reads the result status of each change.
func statuses(ctx context.Context, rdb redis.UniversalClient, cs []tasks.Change) ([]string, error) {
	r := tasks.NewReader(rdb)
	out := make([]string, len(cs))
	for i, c := range cs {
		res, err := r.Result(ctx, c.TaskID())
		if err != nil {
			return nil, err
		}
		out[i] = string(res.Status)
	}
	return out, nil
}
