package tasks_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
)

// The reader runs on a real Redis Cluster: a batch's results spread over
// every master are read one by one, scanned from the task set (pipelines
// split per master) and waited for.
func TestReaderOnCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	rdb := c.Client()
	ctx := t.Context()
	const batch, n = "01JREADERONCLUSTER", 30
	now := time.Now().UTC().Format(results.TimeFormat)
	var ids, failed []string
	masters := map[*redistest.Server]bool{}
	for i := range n {
		id := fmt.Sprintf("update:120344:reader_%04d", i)
		ids = append(ids, id)
		st := tasks.StatusSucceeded
		if i%5 == 0 {
			st = tasks.StatusFailed
			failed = append(failed, id)
		}
		if err := rdb.HSet(ctx, results.ResultKey(id), results.FieldTaskID, id, results.FieldOp, "update",
			results.FieldBatch, batch, results.FieldStatus, string(st), results.FieldAttempts, "1",
			results.FieldEnqueuedAt, now, results.FieldUpdatedAt, now, results.FieldFinishedAt, now).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.SAdd(ctx, results.BatchTasksKey(batch), id).Err(); err != nil {
			t.Fatal(err)
		}
		m, err := c.MasterOf(ctx, results.ResultKey(id))
		if err != nil {
			t.Fatal(err)
		}
		masters[m] = true
	}
	if len(masters) != redistest.ClusterMasters {
		t.Fatalf("results on %d masters, want every one", len(masters))
	}
	if err := rdb.HSet(ctx, results.BatchKey(batch), results.BatchFieldTotal, n, results.BatchFieldDuplicates, 0,
		results.BatchFieldSucceeded, n-len(failed), results.BatchFieldFailed, len(failed), results.BatchFieldSealed, "1",
		results.BatchFieldCreatedAt, now, results.BatchFieldFinishedAt, now).Err(); err != nil {
		t.Fatal(err)
	}
	r := tasks.NewReader(rdb)
	res, err := r.Result(ctx, ids[1])
	if err != nil || res.Status != tasks.StatusSucceeded || res.Batch != batch {
		t.Errorf("Result: %+v, %v", res, err)
	}
	got, err := r.BatchTaskIDs(ctx, batch)
	if err != nil || !slices.Equal(got, ids) {
		t.Errorf("BatchTaskIDs: %d ids, %v; want %d", len(got), err, len(ids))
	}
	fs, err := r.FailedTasks(ctx, batch, n)
	if err != nil {
		t.Fatal(err)
	}
	var fids []string
	for _, f := range fs {
		fids = append(fids, f.TaskID)
	}
	if !slices.Equal(fids, failed) {
		t.Errorf("FailedTasks = %v, want %v", fids, failed)
	}
	b, err := r.Wait(ctx, batch, 10*time.Millisecond, nil)
	if err != nil || !b.Done() || b.Total != n || b.Failed != len(failed) || b.Pending != 0 {
		t.Errorf("Wait: %+v, %v", b, err)
	}
}
