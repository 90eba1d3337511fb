package tasks

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/internal/testutil"
)

// TestAsynqLayoutVersion fails on any asynq in go.mod but the one whose
// layout asynqwrite.go reproduces: after an upgrade, check that release's
// internal/rdb (enqueueCmd, scheduleCmd, the keys) and
// internal/proto/asynq.proto against asynqwrite.go, run
// TestAsynqRecordsLikeClient, then bump asynqLayoutVersion.
func TestAsynqLayoutVersion(t *testing.T) {
	t.Parallel()
	f, err := os.Open("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var got string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) >= 2 && fields[0] == "github.com/hibiken/asynq" {
			got = fields[1]
		}
	}
	if got != asynqLayoutVersion {
		t.Fatalf("go.mod requires asynq %q; tasks/asynqwrite.go writes asynq %s's task records: verify its layout against the new release and bump asynqLayoutVersion", got, asynqLayoutVersion)
	}
}

// redisDump is everything asynq keeps of one queue's tasks, read raw.
type redisDump struct {
	Keys      []string
	Hash      map[string]string // the task hash, msg decoded to fields
	Pending   []string
	Scheduled []redis.Z
	Queues    []string
}

// protoFields decodes a protobuf message into "number:value" strings,
// sorted (so map entries compare whatever their order).
func protoFields(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("bad protobuf tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				t.Fatal("bad varint")
			}
			out, b = append(out, fmt.Sprintf("%d:%d", num, v)), b[n:]
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				t.Fatal("bad bytes")
			}
			out, b = append(out, fmt.Sprintf("%d:%q", num, v)), b[n:]
		default:
			t.Fatalf("unexpected wire type %d for field %d", typ, num)
		}
	}
	slices.Sort(out)
	return out
}

func dumpQueue(t *testing.T, ctx context.Context, rdb *redis.Client, queue, taskID string) (redisDump, []byte) {
	t.Helper()
	var d redisDump
	var err error
	if d.Keys, err = rdb.Keys(ctx, "*").Result(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(d.Keys)
	h, err := rdb.HGetAll(ctx, asynqTaskKey(queue, taskID)).Result()
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte(h["msg"])
	d.Hash = map[string]string{}
	for k, v := range h {
		switch k {
		case "msg":
			v = strings.Join(protoFields(t, msg), " ")
		case "pending_since":
			v = "<set>" // the time of the enqueue
		}
		d.Hash[k] = v
	}
	d.Pending, _ = rdb.LRange(ctx, asynqPendingKey(queue), 0, -1).Result()
	d.Scheduled, _ = rdb.ZRangeWithScores(ctx, asynqScheduledKey(queue), 0, -1).Result()
	d.Queues, _ = rdb.SMembers(ctx, asynqAllQueues).Result()
	return d, msg
}

// TestAsynqRecordsLikeClient pins asynqwrite.go to the asynq in go.mod:
// for each kind of task couponq hands over, the records it writes are the
// ones asynq.Client.EnqueueContext writes (every key, every field, the
// TaskMessage field by field and, with one header, byte for byte), and
// Inspector.GetTaskInfo shows the two alike.
func TestAsynqRecordsLikeClient(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	t.Cleanup(func() { rdb.Close() })
	ctx := t.Context()
	insp := asynq.NewInspectorFromRedisClient(rdb)
	later := time.Now().Add(time.Hour).Truncate(time.Second)

	tests := []struct {
		name      string
		batch     string
		processAt time.Time
	}{
		{name: "pending, no batch"},
		{name: "pending, batch", batch: "01JBATCH"},
		{name: "scheduled", batch: "01JBATCH", processAt: later},
	}
	for _, tc := range tests {
		// One Redis: the cases run in turn.
		t.Run(tc.name, func(t *testing.T) {
			payload := []byte(`{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"n1","deactivate_reason":"r"}`)
			taskID := "deactivate:120344:n1"
			rec := &asynqRecord{taskType: TypeDeactivate, payload: payload, taskID: taskID, queue: DefaultQueue,
				timeout: DefaultTaskTimeout, processAt: tc.processAt, headers: map[string]string{HeaderRun: "run1"}}
			if tc.batch != "" {
				rec.headers[HeaderBatch] = tc.batch
			}
			task := handedTask(TypeDeactivate, payload, taskID, tc.batch, "run1")
			opts := []asynq.Option{asynq.Queue(DefaultQueue), asynq.MaxRetry(results.MaxRetry), asynq.Timeout(DefaultTaskTimeout)}
			if !tc.processAt.IsZero() {
				opts = append(opts, asynq.ProcessAt(tc.processAt))
			}

			if err := rdb.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			// A fresh client: one remembers the queues it registered.
			client := asynq.NewClientFromRedisClient(rdb)
			if _, err := client.EnqueueContext(ctx, task, opts...); err != nil {
				t.Fatal(err)
			}
			want, wantMsg := dumpQueue(t, ctx, rdb, DefaultQueue, taskID)
			wantInfo, err := insp.GetTaskInfo(DefaultQueue, taskID)
			if err != nil {
				t.Fatal(err)
			}

			if err := rdb.FlushAll(ctx).Err(); err != nil {
				t.Fatal(err)
			}
			w := &asynqWriter{rdb: rdb, now: time.Now}
			created, errs := w.writeMany(ctx, []*asynqRecord{rec})
			if !created[0] || errs[0] != nil {
				t.Fatalf("writeMany = %v, %v", created, errs)
			}
			got, gotMsg := dumpQueue(t, ctx, rdb, DefaultQueue, taskID)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Redis records (-asynq.Client +couponq):\n%s", diff)
			}
			if len(rec.headers) == 1 && string(wantMsg) != string(gotMsg) {
				t.Errorf("TaskMessage bytes differ:\nasynq:   %x\ncouponq: %x", wantMsg, gotMsg)
			}
			gotInfo, err := insp.GetTaskInfo(DefaultQueue, taskID)
			if err != nil {
				t.Fatal(err)
			}
			opt := cmpopts.IgnoreFields(asynq.TaskInfo{}, "NextProcessAt")
			if !tc.processAt.IsZero() {
				opt = cmpopts.IgnoreFields(asynq.TaskInfo{}) // scheduled: the process time compares too
			}
			if diff := cmp.Diff(wantInfo, gotInfo, opt, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("Inspector.GetTaskInfo (-asynq.Client +couponq):\n%s", diff)
			}

			// A second write of the same task ID is asynq's conflict.
			created, errs = w.writeMany(ctx, []*asynqRecord{rec})
			if created[0] || errs[0] != nil {
				t.Errorf("second writeMany = %v, %v; want not created, no error", created, errs)
			}
			if _, err := client.EnqueueContext(ctx, task, opts...); !errors.Is(err, asynq.ErrTaskIDConflict) {
				t.Errorf("asynq.Client enqueue over a written task: %v, want ErrTaskIDConflict", err)
			}
		})
	}
}

// TestAsynqServerRunsWrittenTasks runs tasks written by asynqWriter
// through asynq's server: one succeeds (and is deleted, as without
// Retention), one fails once and is retried (GetRetryCount 1 on its second
// run), one returns SkipRetry and is archived with its error, as tasks
// enqueued by asynq.Client are.
func TestAsynqServerRunsWrittenTasks(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	t.Cleanup(func() { rdb.Close() })
	ctx := t.Context()
	const queue = "compat"
	w := &asynqWriter{rdb: rdb, now: time.Now}
	rec := func(id string) *asynqRecord {
		return &asynqRecord{taskType: TypeGet, payload: []byte(`{"id":"` + id + `"}`), taskID: id, queue: queue,
			timeout: time.Minute, headers: map[string]string{HeaderRun: "r"}}
	}
	created, errs := w.writeMany(ctx, []*asynqRecord{rec("ok"), rec("flaky"), rec("skip")})
	for i := range created {
		if !created[i] || errs[i] != nil {
			t.Fatalf("writeMany: %v, %v", created, errs)
		}
	}

	var mu sync.Mutex
	runs := map[string][]int{} // task ID → retry count of each run
	handler := asynq.HandlerFunc(func(ctx context.Context, task *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		n, _ := asynq.GetRetryCount(ctx)
		if task.Headers()[HeaderRun] != "r" {
			return fmt.Errorf("headers %v", task.Headers())
		}
		mu.Lock()
		runs[id] = append(runs[id], n)
		mu.Unlock()
		switch {
		case id == "flaky" && n == 0:
			return errors.New("first run fails")
		case id == "skip":
			return fmt.Errorf("permanent: %w", asynq.SkipRetry)
		}
		return nil
	})
	server := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency: 2, Queues: map[string]int{queue: 1},
		TaskCheckInterval: 20 * time.Millisecond, DelayedTaskCheckInterval: 100 * time.Millisecond,
		RetryDelayFunc: func(int, error, *asynq.Task) time.Duration { return 0 },
		LogLevel:       asynq.FatalLevel,
	})
	if err := server.Start(handler); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(server.Shutdown)

	insp := asynq.NewInspectorFromRedisClient(rdb)
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(runs["ok"]) != 1 || len(runs["flaky"]) != 2 || len(runs["skip"]) != 1 {
			return fmt.Errorf("runs so far: %v", runs)
		}
		info, err := insp.GetTaskInfo(queue, "skip")
		if err != nil || info.State != asynq.TaskStateArchived {
			return fmt.Errorf("skip: %+v, %v", info, err)
		}
		for _, id := range []string{"ok", "flaky"} {
			if _, err := insp.GetTaskInfo(queue, id); !errors.Is(err, asynq.ErrTaskNotFound) {
				return fmt.Errorf("%s still in asynq: %v", id, err)
			}
		}
		return nil
	}, "tasks written by couponq run as asynq's")
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff(map[string][]int{"ok": {0}, "flaky": {0, 1}, "skip": {0}}, runs); diff != "" {
		t.Errorf("runs (-want +got):\n%s", diff)
	}
	info, err := insp.GetTaskInfo(queue, "skip")
	if err != nil {
		t.Fatal(err)
	}
	if info.LastErr == "" || info.MaxRetry != results.MaxRetry || info.Timeout != time.Minute {
		t.Errorf("archived task: LastErr %q, MaxRetry %d, Timeout %v", info.LastErr, info.MaxRetry, info.Timeout)
	}
}

// TestAsynqWriterOnCluster writes task records on a real Redis Cluster,
// whose masters do not know asynq's scripts yet: the records of one queue
// share asynq's hash tag, the pipeline goes to that slot's master, and
// asynq's Inspector reads them.
func TestAsynqWriterOnCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	rdb := c.Client()
	ctx := t.Context()
	w := &asynqWriter{rdb: rdb, now: time.Now}
	var recs []*asynqRecord
	for i := range 100 {
		id := fmt.Sprintf("get:120344:cluster_%03d", i)
		recs = append(recs, &asynqRecord{taskType: TypeGet, payload: []byte(`{"n":` + fmt.Sprint(i) + `}`), taskID: id,
			queue: DefaultQueue, timeout: DefaultTaskTimeout, headers: map[string]string{HeaderRun: "r"}})
	}
	created, errs := w.writeMany(ctx, recs)
	for i := range recs {
		if !created[i] || errs[i] != nil {
			t.Fatalf("record %d: created %v, %v", i, created[i], errs[i])
		}
	}
	info, err := asynq.NewInspectorFromRedisClient(rdb).GetQueueInfo(DefaultQueue)
	if err != nil || info.Pending != len(recs) {
		t.Fatalf("GetQueueInfo: %+v, %v; want %d pending", info, err, len(recs))
	}
	created, errs = w.writeMany(ctx, recs)
	for i := range recs {
		if created[i] || errs[i] != nil {
			t.Fatalf("second write of record %d: created %v, %v; want the conflict", i, created[i], errs[i])
		}
	}
}
