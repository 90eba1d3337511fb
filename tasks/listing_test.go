package tasks

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/results"
	"github.com/google/go-cmp/cmp"
)

func TestEnqueueBatchAllOrNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	bad := deactivateChange("orn_bad")
	bad.DeactivateReason = ""
	twice := updateChange("orn_twice")
	twice.DisplayInfo.Name = "another name"
	for _, tt := range []struct {
		name    string
		changes []Change
		want    []int // indexes of the invalid changes
	}{
		{"one valid, one invalid", []Change{updateChange("orn_ok"), bad}, []int{1}},
		{"one task ID, two payloads", []Change{updateChange("orn_twice"), getChange("orn_get_1"), twice}, []int{2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := b.p.EnqueueBatch(ctx, Changes(tt.changes), BatchOptions{ID: "aon", AllOrNothing: true})
			var ie *InvalidBatchError
			if rep != nil || !errors.Is(err, ErrInvalidBatch) || !errors.As(err, &ie) {
				t.Fatalf("EnqueueBatch = %+v, %v; want no report and an *InvalidBatchError", rep, err)
			}
			var got []int
			for _, ce := range ie.Changes {
				got = append(got, ce.Index)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("invalid changes (-want +got):\n%s", diff)
			}
		})
	}
	// Nothing was written: no batch, no result, no task.
	if n := b.rdb.DBSize(ctx).Val(); n != 0 {
		keys := b.rdb.Keys(ctx, "*").Val()
		t.Errorf("%d keys after refused batches: %v", n, keys)
	}
	// Without the option the valid change goes in, as before.
	rep, err := b.p.EnqueueBatch(ctx, Changes([]Change{updateChange("orn_ok"), bad}), BatchOptions{ID: "some"})
	if err != nil || rep.Total != 1 || len(rep.Failed) != 1 {
		t.Errorf("without AllOrNothing: %+v, %v", rep, err)
	}
}

func TestEnqueueBatchEarlierFailedAndConflicts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	cs := []Change{updateChange("orn_o1"), deactivateChange("orn_o2"), updateChange("orn_o3"), deactivateChange("orn_o4")}
	if _, err := b.p.EnqueueBatch(ctx, Changes(cs), BatchOptions{ID: "first"}); err != nil {
		t.Fatal(err)
	}
	finish(t, b.store, cs[0], StatusFailed)
	finish(t, b.store, cs[1], StatusSucceeded)
	// o3 canceled, as couponq cancel leaves it; o4 still queued.
	b.mr.HSet(results.ResultKey(cs[2].TaskID()), results.FieldStatus, "canceled")

	other := updateChange("orn_o1")
	other.DisplayInfo.Name = "other"
	again := append(append([]Change{}, cs...), other)
	rep, err := b.p.EnqueueBatch(ctx, Changes(again), BatchOptions{ID: "second"})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Duplicates != 4 || rep.EarlierFailed != 2 || len(rep.Conflicts) != 1 || rep.Total != 0 {
		t.Errorf("report = %+v", rep)
	}
	if diff := cmp.Diff(map[string]int{"first": 2}, rep.EarlierFailedBatches); diff != "" {
		t.Errorf("earlier failed batches (-want +got):\n%s", diff)
	}
	st := b.batch(t, "second")
	if st.Duplicates != 4 || st.EarlierFailed != 2 || st.Conflicts != 1 || st.OK() || !st.Done() {
		t.Errorf("batch = %+v, OK %v", st, st.OK())
	}
	if st := b.batch(t, "first"); st.Conflicts != 0 || st.EarlierFailed != 0 || st.OK() {
		t.Errorf("first batch = %+v (one failed: not OK)", st)
	}
}

func TestReaderBatches(t *testing.T) {
	t.Parallel()
	now := testNow
	b := setup(t, withClock(func() time.Time { return now }))
	ctx := t.Context()
	for i, id := range []string{"old", "mid", "new"} {
		now = testNow.Add(time.Duration(i) * time.Minute)
		if _, err := b.p.EnqueueBatch(ctx, Changes([]Change{getChange("orn_" + id)}), BatchOptions{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	// Reopening keeps a batch's place.
	if _, err := b.p.EnqueueBatch(ctx, Changes([]Change{getChange("orn_old2")}), BatchOptions{ID: "old"}); err != nil {
		t.Fatal(err)
	}
	ids := func(bs []*BatchStatus) []string {
		var out []string
		for _, s := range bs {
			out = append(out, s.ID)
		}
		return out
	}
	got, err := b.reader.Batches(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"new", "mid", "old"}, ids(got)); diff != "" {
		t.Errorf("batches (-want +got):\n%s", diff)
	}
	if got[2].Total != 2 || got[0].State() != "running" {
		t.Errorf("old = %+v, new state %s", got[2], got[0].State())
	}
	if got, _ := b.reader.Batches(ctx, 2); len(got) != 2 {
		t.Errorf("limit 2 gave %d", len(got))
	}
	// An expired batch hash is left out; entries past the TTL are trimmed
	// when a batch opens.
	b.mr.Del(results.BatchKey("mid"))
	now = testNow.Add(DefaultResultTTL + 90*time.Second)
	if _, err := b.p.EnqueueBatch(ctx, Changes([]Change{getChange("orn_later")}), BatchOptions{ID: "later"}); err != nil {
		t.Fatal(err)
	}
	got, _ = b.reader.Batches(ctx, 0)
	if diff := cmp.Diff([]string{"later", "new"}, ids(got)); diff != "" {
		t.Errorf("after expiry (-want +got):\n%s", diff)
	}
	if z := b.rdb.ZRange(ctx, results.BatchesKey, 0, -1).Val(); len(z) != 2 {
		t.Errorf("index = %v, want old and mid trimmed (created over the TTL ago)", z)
	}
}

func TestReaderScanAndExport(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := t.Context()
	cs := mixed(2500) // several SSCAN pages
	if _, err := b.p.EnqueueBatch(ctx, Changes(cs), BatchOptions{ID: "s"}); err != nil {
		t.Fatal(err)
	}
	failed := map[string]bool{}
	for i, c := range cs {
		if i%10 == 3 {
			finish(t, b.store, c, StatusFailed)
			failed[c.TaskID()] = true
		}
	}
	seen := map[string]int{}
	if err := b.reader.ScanTasks(ctx, "s", "", func(r *Result) error { seen[r.TaskID]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(cs) {
		t.Errorf("scanned %d tasks, want %d", len(seen), len(cs))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s seen %d times", id, n)
		}
	}
	var buf bytes.Buffer
	rep, err := b.reader.ExportChanges(ctx, "s", StatusFailed, &buf)
	if err != nil || rep.Written != len(failed) || rep.Missing != 0 {
		t.Fatalf("export = %+v, %v", rep, err)
	}
	// The lines read back as the very changes enqueued.
	want := map[string]Change{}
	for _, c := range cs {
		want[c.TaskID()] = c
	}
	r := NewChangeReader(strings.NewReader(buf.String()), FormatJSONL)
	n := 0
	for c, err := range r.All() {
		if err != nil {
			t.Fatal(err)
		}
		n++
		if !failed[c.TaskID()] {
			t.Errorf("exported %s, not failed", c.TaskID())
		}
		if diff := cmp.Diff(want[c.TaskID()], c); diff != "" {
			t.Errorf("exported change (-want +got):\n%s", diff)
		}
	}
	if n != len(failed) {
		t.Errorf("read back %d lines, want %d", n, len(failed))
	}
	// Enqueued again unchanged, they are duplicates of failed tasks.
	again, err := b.p.EnqueueBatch(ctx, NewChangeReader(strings.NewReader(buf.String()), FormatJSONL).All(), BatchOptions{ID: "s2", AllOrNothing: true})
	if err != nil || again.Duplicates != len(failed) || again.EarlierFailed != len(failed) || again.Total != 0 {
		t.Errorf("re-enqueue = %+v, %v", again, err)
	}
	if err := b.reader.ScanTasks(ctx, "nope", "", func(*Result) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown batch: %v", err)
	}
}
