package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// The scenarios of the single-server tests, on a Redis Cluster of three
// masters started on loopback, and failovers mid-batch on a Sentinel group
// and on a cluster with replicas. They fail, never skip, if a script
// crosses hash slots again (Redis answers CROSSSLOT).

func TestClusterFaultMix1000(t *testing.T) {
	t.Parallel()
	faultMix(t, onCluster(t), processes)
}

func TestClusterOrderAcrossWorkers(t *testing.T) {
	t.Parallel()
	orderAcrossWorkers(t, onCluster(t))
}

func TestClusterRetryAfterFix(t *testing.T) {
	t.Parallel()
	retryAfterFix(t, onCluster(t))
}

func TestClusterCancelMidBatch(t *testing.T) {
	t.Parallel()
	cancelMidBatch(t, onCluster(t))
}

// Half the single-server test's 20 000 lines: the point is the rerun on a
// cluster, where the batch's keys and asynq's queue live on different
// masters, not the size.
func TestClusterEnqueueKilledThenRerun(t *testing.T) {
	t.Parallel()
	enqueueKilledThenRerun(t, onCluster(t), faultLines/2)
}

// The primary of a Sentinel group is SIGKILLed while two worker processes
// are mid-batch; the sentinels promote its replica. Whatever the
// asynchronous replication lost (a result, a counter, asynq's record of a
// finished task), asynq re-runs and WeChat Pay's out_request_no answers
// the repeat: the batch finishes, nothing is applied twice, and the
// counters equal the results.
func TestSentinelFailoverMidBatch(t *testing.T) {
	t.Parallel()
	r := onSentinel(t)
	failoverMidBatch(t, r, "sentinel-failover", func() string {
		old, err := r.sentinel.Primary(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		promoted := r.sentinel.KillPrimary()
		return fmt.Sprintf("primary %s killed, replica %s promoted", old.Addr(), promoted.Addr())
	})
}

// The same on a cluster with a replica per master: the master that holds
// asynq's queue and the batch's counters (and a third of the results) is
// SIGKILLed mid-batch and its replica takes over.
func TestClusterFailoverMidBatch(t *testing.T) {
	t.Parallel()
	r := onCluster(t, redistest.WithReplicas(1))
	queueKey := "asynq:{" + tasks.DefaultQueue + "}:pending"
	qm, err := r.cluster.MasterOf(t.Context(), queueKey)
	if err != nil {
		t.Fatal(err)
	}
	// A batch whose hash lives on the queue's master, so one kill hits
	// both.
	batch := ""
	for i := 0; batch == "" && i < 1000; i++ {
		b := fmt.Sprintf("cluster-failover-%d", i)
		if m, err := r.cluster.MasterOf(t.Context(), results.BatchKey(b)); err == nil && m == qm {
			batch = b
		}
	}
	if batch == "" {
		t.Fatal("no batch name on the queue's master")
	}
	failoverMidBatch(t, r, batch, func() string {
		killed := r.cluster.KillMasterOf(queueKey)
		return fmt.Sprintf("master %s (queue and batch) killed, a replica took over", killed.Addr())
	})
}

// failoverMidBatch runs a batch of 400 changes (two worker processes, four
// tasks at once each, 100 ms per API call) on r, calls kill once a
// quarter of it is done, and checks the batch ends whole: every task
// terminal, nothing applied twice, the counters equal to the results
// after RepairBatch.
func failoverMidBatch(t *testing.T, r *topo, batch string, kill func() string) {
	t.Helper()
	const n = 400
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithLatency(100*time.Millisecond), wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	ids := fake.SeedCoupons(fake.BrandID(), n)
	cs, permanent := mixed(ids, fake.BrandID(), "fo")
	// A change lost with its asynq task is enqueued again by the workers
	// after the adoption grace period: the shortest one allowed.
	workerProcs(t, r.url, fake, 2, map[string]string{"E2E_CONCURRENCY": "4", "E2E_ADOPT_AFTER": "2s"})
	if rep := enqueue(t, r.rdb, cs, batch); rep.Total != n {
		t.Fatalf("enqueued %d, want %d", rep.Total, n)
	}
	reader := tasks.NewReader(r.rdb)
	testutil.Eventually(t, 2*time.Minute, 10*time.Millisecond, func() error {
		return doneAtLeast(t.Context(), reader, batch, n/4)
	}, "no progress before the kill")
	before, _ := reader.Batch(t.Context(), batch)
	start := time.Now()
	what := kill()
	failedOver := time.Since(start)

	// Every result terminal. A task whose finish the failover lost waits
	// for asynq's recoverer (lease 30 s, sweep every minute): bounded
	// generously.
	var (
		rc   *recount
		last = -1
	)
	testutil.Eventually(t, 4*time.Minute, 200*time.Millisecond, func() error {
		var err error
		rc, err = recountResults(t.Context(), r.rdb, cs)
		if err != nil {
			return err
		}
		if rc.nonTerminal != last { // the progress of the recovery, for the log
			last = rc.nonTerminal
			t.Logf("%s after the kill: %d not terminal %v", time.Since(start).Round(100*time.Millisecond), rc.nonTerminal, rc.byStatus)
		}
		if rc.nonTerminal > 0 {
			return fmt.Errorf("%d of %d results not terminal (%v)", rc.nonTerminal, n, rc.byStatus)
		}
		return nil
	}, "results after the failover")
	repaired := repairBatch(t, r.rdb, batch)
	// The counters equal the results, and so the batch is finished (the
	// last finish may still be on its way to the batch hash: polled).
	var st *tasks.BatchStatus
	testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, func() error {
		var err error
		if st, err = reader.Batch(t.Context(), batch); err != nil {
			return err
		}
		if st.Total != n || st.Succeeded != rc.succeeded || st.Failed != rc.failed || st.Canceled != rc.canceled || !st.Done() {
			return fmt.Errorf("batch total %d, %d succeeded, %d failed, %d canceled, finished %v; the results say %d succeeded, %d failed, %d canceled of %d",
				st.Total, st.Succeeded, st.Failed, st.Canceled, st.Done(), rc.succeeded, rc.failed, rc.canceled, n)
		}
		return nil
	}, "counters after the failover and the repair")
	verifyApplied(t, r.rdb, fake, cs, permanent)
	t.Logf("%s: %s at %d/%d done (failover took %s); batch done %s after the kill: %+v; %d API requests, %d answered as repeats; the repair changed %d tasks' states",
		r, what, before.Succeeded+before.Failed, n, failedOver.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), st,
		len(fake.Requests()), repeats(fake), repaired)
}

// repairBatch heals batch's counters where a failover left them lagging
// their results (results.Store.RepairBatch, which the workers' adoption
// sweep also runs), and returns how many tasks' states it changed.
func repairBatch(t *testing.T, rdb redis.UniversalClient, batch string) int {
	t.Helper()
	n, err := results.NewStore(rdb).RepairBatch(t.Context(), batch)
	if err != nil {
		t.Fatalf("repair %s: %v", batch, err)
	}
	return n
}

// recount is what the result hashes of a set of changes say.
type recount struct {
	succeeded, failed, canceled, nonTerminal int
	byStatus                                 map[string]int
}

// recountResults reads the status of every change's result.
func recountResults(ctx context.Context, rdb redis.UniversalClient, cs []tasks.Change) (*recount, error) {
	rc := &recount{byStatus: map[string]int{}}
	cmds := make([]*redis.StringCmd, len(cs))
	if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range cs {
			cmds[i] = p.HGet(ctx, results.ResultKey(c.TaskID()), results.FieldStatus)
		}
		return nil
	}); err != nil && err != redis.Nil {
		return nil, err
	}
	for _, c := range cmds {
		s := c.Val()
		rc.byStatus[s]++
		switch tasks.Status(s) {
		case tasks.StatusSucceeded:
			rc.succeeded++
		case tasks.StatusFailed:
			rc.failed++
		case tasks.StatusCanceled:
			rc.canceled++
		default:
			rc.nonTerminal++
		}
	}
	return rc, nil
}

// verifyApplied checks the fake's record against the results: no
// out_request_no applied twice, every succeeded write applied (once, or
// found already matching), every permanent change failed, nothing else
// failed. A failover may lose the stored body or the record of an attempt,
// so it does not compare bodies or attempt counts as verify does.
func verifyApplied(t *testing.T, rdb redis.UniversalClient, fake *wechatpaytest.Server, cs []tasks.Change, permanent map[string]bool) {
	t.Helper()
	reader := tasks.NewReader(rdb)
	for _, c := range cs {
		res, err := reader.Result(context.Background(), c.TaskID())
		if err != nil {
			t.Fatal(err)
		}
		if permanent[c.OutRequestNo] != (res.Status == tasks.StatusFailed) {
			t.Errorf("%s: %s (http %d %s), permanent %v", c.TaskID(), res.Status, res.HTTPStatus, res.ErrorCode, permanent[c.OutRequestNo])
		}
		if c.Op == tasks.OpGet {
			continue
		}
		n := fake.AppliedCount(c.OutRequestNo)
		switch {
		case n > 1:
			t.Errorf("%s applied %d times", c.TaskID(), n)
		case res.Status == tasks.StatusSucceeded && n == 0 && !res.Unchanged:
			t.Errorf("%s succeeded but was never applied", c.TaskID())
		}
	}
	for _, e := range fake.Effects() {
		if n := fake.AppliedCount(e.OutRequestNo); n != 1 {
			t.Errorf("effect %s applied %d times", e.OutRequestNo, n)
		}
	}
}

// repeats counts the writes the fake answered as repeats of an applied
// out_request_no: the re-runs the failover caused, guarded by WeChat Pay.
func repeats(fake *wechatpaytest.Server) int {
	k := 0
	for _, q := range fake.Requests() {
		if q.Code == wechatpay.CodeAlreadyExists {
			k++
		}
	}
	return k
}
