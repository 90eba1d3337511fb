package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// The limiter's keys carry the identity as a hash tag, so its two-key
// script (Backoff) runs on a real Redis Cluster, every identity on the
// master of its tag; QuotaUse reads them there and LimiterIdentities
// finds identities on every master.
func TestLimiterOnCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	rdb := c.Client()
	ctx := t.Context()
	// Identities whose keys live on different masters.
	var ids []string
	onMaster := map[*redistest.Server]bool{}
	for i := 0; len(ids) < 2 && i < 1000; i++ {
		id := fmt.Sprintf("19000%05d", i)
		m, err := c.MasterOf(ctx, limiterLogKey(id, "update"))
		if err != nil {
			t.Fatal(err)
		}
		if !onMaster[m] {
			onMaster[m] = true
			ids = append(ids, id)
		}
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, id := range ids {
		// Same slot for every key of the identity: what makes the scripts
		// cluster-safe.
		for _, op := range LimitedOps {
			for _, k := range []string{limiterLogKey(id, op), limiterLogKey(id, op) + ":429"} {
				if redisurl.Slot(k) != redisurl.Slot(limiterLogKey(id, "update")) {
					t.Fatalf("%s is not in the slot of %s's other keys", k, id)
				}
			}
		}
		l := NewLimiter(rdb, id, 3, WithSleep(func(ctx context.Context, _ time.Duration) error { return ctx.Err() }))
		l.now = func() time.Time { return at }
		// Three slots a third of a second apart (the sleeps return at once),
		// then none within the next second.
		for i := range 3 {
			if _, err := l.Wait(ctx, "update", 10*time.Second); err != nil {
				t.Fatalf("%s: Wait %d: %v", id, i, err)
			}
		}
		var rl *RateLimitedError
		if _, err := l.Wait(ctx, "update", 0); !errors.As(err, &rl) {
			t.Fatalf("%s: 4th Wait within the second: %v, want a *RateLimitedError", id, err)
		}
		if err := l.Backoff(ctx, "get", time.Second); err != nil {
			t.Fatalf("%s: Backoff (log + 429 state, two keys): %v", id, err)
		}
		if err := l.Backoff(ctx, "get", time.Second); err != nil {
			t.Fatalf("%s: Backoff: %v", id, err)
		}
		use, err := quotaUse(ctx, rdb, id, strconv.FormatInt(at.Add(700*time.Millisecond).UnixMicro(), 10))
		if err != nil {
			t.Fatal(err)
		}
		if use["update"] != 3 || use["deactivate"] != 0 {
			t.Errorf("%s: QuotaUse = %v, want 3 updates", id, use)
		}
	}
	got, err := LimiterIdentities(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		t.Errorf("LimiterIdentities = %v, want %v (on %d masters)", got, ids, len(onMaster))
	}
}

// asynq runs on a real Redis Cluster through a redis-cluster:// URL:
// enqueue (with task IDs) and processing in queues that land on different
// masters, and the inspector's queue view.
func TestAsynqOnCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	conn, err := redisurl.Parse(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	// Two queues whose hash tags {queue} live on different masters.
	var queues []string
	onMaster := map[*redistest.Server]bool{}
	for i := 0; len(queues) < 2 && i < 1000; i++ {
		q := fmt.Sprintf("q%d", i)
		m, err := c.MasterOf(ctx, "asynq:{"+q+"}:pending")
		if err != nil {
			t.Fatal(err)
		}
		if !onMaster[m] {
			onMaster[m] = true
			queues = append(queues, q)
		}
	}
	var (
		mu   sync.Mutex
		done = map[string]int{}
	)
	srv := asynq.NewServer(conn, asynq.Config{
		Concurrency: 4, Queues: map[string]int{queues[0]: 1, queues[1]: 1},
		TaskCheckInterval: 10 * time.Millisecond, Logger: slogAdapter{slog.New(slog.DiscardHandler)},
	})
	if err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, tk *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		mu.Lock()
		done[id]++
		mu.Unlock()
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	client := asynq.NewClient(conn)
	defer client.Close()
	const n = 40
	var want []string
	for i := range n {
		q := queues[i%2]
		id := fmt.Sprintf("update:120344:cluster_%04d", i)
		if _, err := client.EnqueueContext(ctx, asynq.NewTask(tasks.TypeUpdate, []byte(`{}`)), asynq.TaskID(id), asynq.Queue(q), asynq.Retention(time.Hour)); err != nil {
			t.Fatalf("enqueue %s: %v", id, err)
		}
		want = append(want, id)
	}
	// A second enqueue of a task ID is refused in its queue's slot.
	if _, err := client.EnqueueContext(ctx, asynq.NewTask(tasks.TypeUpdate, []byte(`{}`)), asynq.TaskID(want[0]), asynq.Queue(queues[0])); !errors.Is(err, asynq.ErrTaskIDConflict) {
		t.Errorf("re-enqueue of %s: %v, want ErrTaskIDConflict", want[0], err)
	}
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(done) < n {
			return fmt.Errorf("%d of %d processed", len(done), n)
		}
		return nil
	}, "asynq on the cluster")
	mu.Lock()
	for _, id := range want {
		if done[id] != 1 {
			t.Errorf("%s processed %d times", id, done[id])
		}
	}
	mu.Unlock()
	insp := asynq.NewInspector(conn)
	defer insp.Close()
	for _, q := range queues {
		testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
			qi, err := insp.GetQueueInfo(q)
			if err != nil {
				return err
			}
			if qi.Completed != n/2 || qi.Pending != 0 || qi.Active != 0 {
				return fmt.Errorf("queue %s: %d completed, %d pending, %d active", q, qi.Completed, qi.Pending, qi.Active)
			}
			return nil
		}, "inspector on the cluster")
	}
}

// A worker runs on a Redis Cluster: it logs the topology, and a batch
// (one task failing for good) finishes with counters that equal its
// results. Until every result script touched one hash slot, the worker
// refused a cluster at start.
func TestWorkerRunsBatchOnCluster(t *testing.T) {
	t.Parallel()
	if cs := results.CrossSlotScripts(); len(cs) != 0 {
		t.Fatalf("scripts cross slots: %v", cs)
	}
	c := redistest.StartCluster(t)
	conn, err := redisurl.Parse(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := c.Client()
	var log syncBuffer
	api := newStubAPI()
	const batch, n = "on-cluster", 12
	failing := fmt.Sprintf("2%04d%05d", crc32.ChecksumIEEE([]byte(batch))%10000, 3) // sentinelBatch's coupon 3
	api.failNext(tasks.OpUpdate, failing, &wechatpay.APIError{HTTPStatus: 400, Code: "PARAM_ERROR", Message: "bad"})
	w, err := New(Config{Redis: conn, Concurrency: 4, MaxRetry: 3, RetryBase: 10 * time.Millisecond, RetryCap: 50 * time.Millisecond,
		Rate: 0, ShutdownTimeout: 2 * time.Second, Logger: slog.New(slog.NewTextHandler(&log, nil))}, api)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", log.String())
		}
	}()
	ids := sentinelBatch(t, rdb, batch, n)
	m := pollBatch(t, rdb, batch, 60*time.Second)
	if !strings.Contains(log.String(), "redis topology: cluster with 3 masters") {
		t.Error("worker log lacks its topology line")
	}
	count := map[string]int{}
	for _, id := range ids {
		st, err := rdb.HGet(t.Context(), results.ResultKey(id), results.FieldStatus).Result()
		if err != nil {
			t.Fatal(err)
		}
		count[st]++
	}
	if count["succeeded"] != n-1 || count["failed"] != 1 {
		t.Errorf("results: %v", count)
	}
	for _, f := range []string{"succeeded", "failed", "canceled"} {
		if m[f] != strconv.Itoa(count[f]) {
			t.Errorf("batch %s = %q, results say %d", f, m[f], count[f])
		}
	}
	if m["total"] != strconv.Itoa(n) {
		t.Errorf("batch total = %q", m["total"])
	}
	if members, err := rdb.SCard(t.Context(), results.BatchTasksKey(batch)).Result(); err != nil || members != n {
		t.Errorf("task set: %d, %v", members, err)
	}
}

// sentinelBatch accepts and enqueues n changes as batch through rdb, as the
// producer does, and seals the batch.
func sentinelBatch(t *testing.T, rdb redis.UniversalClient, batch string, n int) []string {
	t.Helper()
	ctx := t.Context()
	store := results.NewStore(rdb)
	if err := store.OpenBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	client := asynq.NewClientFromRedisClient(rdb)
	ids := make([]string, n)
	for i := range n {
		// Coupons of their own per batch: an update that changes nothing
		// is not sent.
		coupon := fmt.Sprintf("2%04d%05d", crc32.ChecksumIEEE([]byte(batch))%10000, i)
		r := updateReq(coupon, fmt.Sprintf("%s_%04d", batch, i))
		body, _ := json.Marshal(r)
		id := results.Identity{Op: string(tasks.OpUpdate), OutRequestNo: r.OutRequestNo, BrandID: testBrand, ProductCouponID: coupon, Batch: batch}
		id.TaskID = tasks.TaskID(tasks.OpUpdate, testBrand, id.OutRequestNo)
		ids[i] = id.TaskID
		sum := sha256.Sum256(body)
		if out, err := store.Accept(ctx, id, hex.EncodeToString(sum[:])); err != nil || out != results.Accepted {
			t.Fatalf("accept: %v %v", out, err)
		}
		if _, err := client.EnqueueContext(ctx, asynq.NewTask(tasks.TypeUpdate, body), asynq.TaskID(id.TaskID), asynq.Queue(DefaultQueue), asynq.MaxRetry(results.MaxRetry)); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.SealBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	return ids
}

// A worker on a redis-sentinel:// URL logs the master it found, and
// follows a failover with no manual step: after the primary is killed
// (every write before it replicated), the batch it finished is intact on
// the new primary, and a batch enqueued afterwards (through go-redis'
// failover client) is processed in full, rate limiter included.
func TestWorkerFollowsSentinelFailover(t *testing.T) {
	t.Parallel()
	g := redistest.StartSentinel(t)
	ctx := t.Context()
	conn, err := redisurl.Parse(g.URL())
	if err != nil {
		t.Fatal(err)
	}
	rdb := conn.NewClient()
	defer rdb.Close()
	var log syncBuffer
	api := newStubAPI()
	w, err := New(Config{Redis: conn, Concurrency: 4, MaxRetry: 5, RetryBase: 10 * time.Millisecond, RetryCap: 100 * time.Millisecond,
		Rate: 200, Identity: "1900000109", ShutdownTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&log, nil))}, api)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("Run did not return after its context ended")
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", log.String())
		}
	}()

	const n = 20
	sentinelBatch(t, rdb, "before-failover", n)
	before := pollBatch(t, rdb, "before-failover", 30*time.Second)
	old, err := g.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := "redis topology: sentinel master " + redistest.SentinelMaster + " at " + old.Addr(); !strings.Contains(log.String(), want) {
		t.Errorf("worker log lacks %q", want)
	}
	// Everything written so far reaches the replica before the kill: this
	// test is about following the failover, not about what asynchronous
	// replication may lose.
	if got, err := rdb.Do(ctx, "WAIT", 1, 10000).Int64(); err != nil || got != 1 {
		t.Fatalf("WAIT 1: %d, %v", got, err)
	}
	promoted := g.KillPrimary()
	// The producer's failover client reaches the new primary.
	testutil.Eventually(t, 30*time.Second, 50*time.Millisecond, func() error {
		info, err := rdb.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		if !strings.Contains(info, "role:master") {
			return errors.New("client still on a replica")
		}
		return rdb.Set(ctx, "couponq-test:probe", "1", time.Minute).Err()
	}, "producer client after failover")

	after := pollBatch(t, rdb, "before-failover", 5*time.Second)
	if after["succeeded"] != strconv.Itoa(n) || after["finished_at"] != before["finished_at"] {
		t.Errorf("batch before the failover, on the new primary %s: %v, was %v", promoted.Addr(), after, before)
	}
	ids := sentinelBatch(t, rdb, "after-failover", n)
	bt := pollBatch(t, rdb, "after-failover", 60*time.Second)
	if bt["total"] != strconv.Itoa(n) || bt["succeeded"] != strconv.Itoa(n) || bt["failed"] != "0" {
		t.Errorf("batch after the failover = %v, want %d succeeded", bt, n)
	}
	for _, id := range ids {
		if st, err := rdb.HGet(ctx, results.ResultKey(id), results.FieldStatus).Result(); err != nil || st != "succeeded" {
			t.Errorf("%s: %q, %v", id, st, err)
		}
	}
	if got := api.callsOf(tasks.OpUpdate); got < 2*n {
		t.Errorf("%d update calls, want at least %d", got, 2*n)
	}
}

// On a cluster with replicas, asynq and the limiter follow a master's
// failover: the master of the queue's slot (and of the limiter's) is
// killed after every earlier write reached its replica; tasks enqueued
// before are done once, tasks enqueued after are processed, the limiter
// books on the promoted replica.
func TestAsynqFollowsClusterFailover(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.WithReplicas(1))
	conn, err := redisurl.Parse(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const queue = "failover"
	// An identity on the queue's master, so one kill hits both.
	qm, err := c.MasterOf(ctx, "asynq:{"+queue+"}:pending")
	if err != nil {
		t.Fatal(err)
	}
	identity := ""
	for i := 0; identity == "" && i < 1000; i++ {
		id := fmt.Sprintf("19000%05d", i)
		if m, err := c.MasterOf(ctx, limiterLogKey(id, "update")); err == nil && m == qm {
			identity = id
		}
	}
	if identity == "" {
		t.Fatal("no identity on the queue's master")
	}
	var (
		mu   sync.Mutex
		done = map[string]int{}
	)
	srv := asynq.NewServer(conn, asynq.Config{
		Concurrency: 4, Queues: map[string]int{queue: 1},
		TaskCheckInterval: 10 * time.Millisecond, Logger: slogAdapter{slog.New(slog.DiscardHandler)},
	})
	if err := srv.Start(asynq.HandlerFunc(func(ctx context.Context, tk *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		mu.Lock()
		done[id]++
		mu.Unlock()
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	client := asynq.NewClient(conn)
	defer client.Close()
	// enqueue rides out the failover: a call that failed may still have
	// enqueued its task, which the task ID then reports as a conflict.
	enqueue := func(id string) {
		t.Helper()
		testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, func() error {
			_, err := client.EnqueueContext(ctx, asynq.NewTask(tasks.TypeUpdate, []byte(`{}`)), asynq.TaskID(id), asynq.Queue(queue), asynq.Retention(time.Hour))
			if errors.Is(err, asynq.ErrTaskIDConflict) {
				return nil
			}
			return err
		}, "enqueue %s", id)
	}
	processed := func(n int) {
		t.Helper()
		testutil.Eventually(t, 60*time.Second, 20*time.Millisecond, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(done) < n {
				return fmt.Errorf("%d of %d processed", len(done), n)
			}
			return nil
		}, "asynq on the cluster")
	}
	const n = 20
	for i := range n {
		enqueue(fmt.Sprintf("update:120344:before_%04d", i))
	}
	processed(n)
	rdb := conn.NewClient() // as the worker makes it
	defer rdb.Close()
	l := NewLimiter(rdb, identity, 100)
	if _, err := l.Wait(ctx, "update", 10*time.Second); err != nil {
		t.Fatalf("limiter before the failover: %v", err)
	}
	direct := redis.NewClient(&redis.Options{Addr: qm.Addr()})
	got, err := direct.Do(ctx, "WAIT", 1, 10000).Int64()
	direct.Close()
	if err != nil || got != 1 {
		t.Fatalf("WAIT 1 on %s: %d, %v", qm.Addr(), got, err)
	}
	if killed := c.KillMasterOf("asynq:{" + queue + "}:pending"); killed != qm {
		t.Fatalf("killed %s, the queue's master was %s", killed.Addr(), qm.Addr())
	}
	for i := range n {
		enqueue(fmt.Sprintf("update:120344:after_%04d", i))
	}
	processed(2 * n)
	mu.Lock()
	for id, k := range done {
		if k != 1 {
			t.Errorf("%s processed %d times", id, k)
		}
	}
	mu.Unlock()
	testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, func() error {
		_, err := l.Wait(ctx, "update", 10*time.Second)
		return err
	}, "limiter after the failover")
	use, err := QuotaUse(ctx, rdb, identity)
	if err != nil {
		t.Fatal(err)
	}
	if use["update"] < 1 {
		t.Errorf("QuotaUse after the failover = %v, want the booking just made", use)
	}
}

// CheckRedis on a cluster checks every master: one master set to evict is
// found, whichever node a plain command would have reached.
func TestCheckRedisEveryClusterMaster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	ctx := t.Context()
	rdb := c.Client()
	chk, err := CheckRedis(ctx, rdb)
	if err != nil || chk.Evicting() || chk.Version == "" {
		t.Fatalf("fresh cluster: %+v, %v", chk, err)
	}
	ms, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	one := redis.NewClient(&redis.Options{Addr: ms[len(ms)-1].Addr()})
	defer one.Close()
	if err := one.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	chk, err = CheckRedis(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	var ee *EvictionError
	if !errors.As(chk.Eviction(), &ee) || ee.Policy != "allkeys-lru" {
		t.Errorf("one evicting master: %+v, want allkeys-lru found", chk)
	}
}
