package tasks

import (
	"fmt"
	"testing"

	"github.com/couponq/couponq/internal/results"
	"github.com/google/go-cmp/cmp"
)

func TestStoreLua(t *testing.T) {
	t.Parallel()
	id := func(n string) results.Identity {
		return results.Identity{TaskID: "get:b:" + n, Op: string(OpGet), BrandID: "b", ProductCouponID: "1", OutRequestNo: n, Batch: "x"}
	}
	tests := []struct {
		name string
		run  func(t *testing.T, b *testBundle, s *results.Store)
		want BatchStatus
	}{
		{
			name: "finish twice counts once",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				mustAccept(t, s, id("t1"), results.Accepted)
				mustBegin(t, s, id("t1"), StatusRunning)
				for i, want := range []bool{true, false} {
					if ok, err := s.Finish(t.Context(), "get:b:t1", []Status{StatusSucceeded, StatusFailed}[i], results.Attempt{Calls: 1}); err != nil || ok != want {
						t.Fatalf("Finish #%d = %v, %v; want %v", i+1, ok, err, want)
					}
				}
				if r, _ := b.reader.Result(t.Context(), "get:b:t1"); r.Status != StatusSucceeded || r.Attempts != 1 {
					t.Errorf("result = %+v", r)
				}
				mustSeal(t, s)
			},
			want: BatchStatus{Total: 1, Succeeded: 1, Sealed: true, FinishedAt: testNow},
		},
		{
			name: "begin on a terminal task returns the terminal status",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				mustAccept(t, s, id("t1"), results.Accepted)
				mustBegin(t, s, id("t1"), StatusRunning)
				if _, err := s.Finish(t.Context(), "get:b:t1", StatusFailed, results.Attempt{Calls: 2, HTTPStatus: 400, ErrorCode: "PARAM_ERROR"}); err != nil {
					t.Fatal(err)
				}
				mustBegin(t, s, id("t1"), StatusFailed)
				if err := s.Retrying(t.Context(), "get:b:t1", results.Attempt{Calls: 1, ErrorCode: "LATE"}); err != nil {
					t.Fatal(err)
				}
				r, _ := b.reader.Result(t.Context(), "get:b:t1")
				if r.Status != StatusFailed || r.ErrorCode != "PARAM_ERROR" || r.Attempts != 2 || r.HTTPStatus != 400 {
					t.Errorf("a terminal result changed: %+v", r)
				}
			},
			want: BatchStatus{Total: 1, Failed: 1},
		},
		{
			name: "finish refuses a non-terminal status",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				if _, err := s.Finish(t.Context(), "get:b:t1", StatusRunning, results.Attempt{}); err == nil {
					t.Error("Finish(running) succeeded")
				}
			},
		},
		{
			name: "unaccept a queued task, counting it a duplicate",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				mustAccept(t, s, id("t1"), results.Accepted)
				mustAccept(t, s, id("t2"), results.Accepted)
				if ok, err := s.Unaccept(t.Context(), id("t1"), true); err != nil || !ok {
					t.Fatalf("unaccept = %v, %v", ok, err)
				}
				if _, err := s.Unaccept(t.Context(), id("t2"), false); err != nil {
					t.Fatal(err)
				}
				if b.mr.Exists(results.ResultKey("get:b:t1")) || b.members(t, "x") != 0 {
					t.Error("unaccepted task left behind")
				}
				mustSeal(t, s)
			},
			want: BatchStatus{Duplicates: 1, Conflicts: 1, Sealed: true, FinishedAt: testNow},
		},
		{
			name: "unaccept leaves a task a worker began",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				mustAccept(t, s, id("t1"), results.Accepted)
				mustBegin(t, s, id("t1"), StatusRunning)
				if ok, err := s.Unaccept(t.Context(), id("t1"), true); err != nil || ok {
					t.Fatalf("unaccept = %v, %v; want false", ok, err)
				}
			},
			want: BatchStatus{Total: 1},
		},
		{
			name: "unaccept finishes a sealed batch it empties",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				mustAccept(t, s, id("t1"), results.Accepted)
				mustSeal(t, s)
				if _, err := s.Unaccept(t.Context(), id("t1"), false); err != nil {
					t.Fatal(err)
				}
			},
			want: BatchStatus{Conflicts: 1, Sealed: true, FinishedAt: testNow},
		},
		{
			name: "accept: resumed, duplicate and conflict",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				mustAccept(t, s, id("t1"), results.Accepted)
				mustAccept(t, s, id("t1"), results.Resumed) // same batch, another call
				other := id("t1")
				other.Batch = "y"
				mustAccept(t, s, other, results.Duplicate)
				if out, err := s.Accept(t.Context(), id("t1"), "other"); err != nil || out != results.Conflict {
					t.Fatalf("Accept with another payload = %v, %v", out, err)
				}
				mustBegin(t, s, id("t1"), StatusRunning)
				mustAccept(t, s, id("t1"), results.Underway)
			},
			want: BatchStatus{Total: 1, Conflicts: 1},
		},
		{
			name: "a result made by Begin alone (no payload hash) is a conflict",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				mustBegin(t, s, id("t1"), StatusRunning)
				mustAccept(t, s, id("t1"), results.Conflict)
			},
			want: BatchStatus{Conflicts: 1},
		},
		{
			name: "reopening a finished batch: a new task unfinishes it, sealing again finishes it",
			run: func(t *testing.T, b *testBundle, s *results.Store) {
				mustSeal(t, s) // empty: finished at once
				if st := b.batch(t, "x"); !st.Done() {
					t.Fatalf("empty sealed batch not done: %+v", st)
				}
				if err := s.OpenBatch(t.Context(), "x"); err != nil {
					t.Fatal(err)
				}
				mustAccept(t, s, id("t1"), results.Accepted)
				if st := b.batch(t, "x"); st.Done() || st.Sealed {
					t.Fatalf("reopened batch with a new task: %+v", st)
				}
				mustBegin(t, s, id("t1"), StatusRunning)
				if _, err := s.Finish(t.Context(), "get:b:t1", StatusSucceeded, results.Attempt{Calls: 1}); err != nil {
					t.Fatal(err)
				}
				if st := b.batch(t, "x"); st.Done() {
					t.Fatalf("unsealed batch finished: %+v", st)
				}
				mustSeal(t, s)
			},
			want: BatchStatus{Total: 1, Succeeded: 1, Sealed: true, FinishedAt: testNow},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			s := b.store
			if err := s.OpenBatch(t.Context(), "x"); err != nil {
				t.Fatal(err)
			}
			tt.run(t, b, s)
			got := b.batch(t, "x")
			tt.want.ID, tt.want.CreatedAt = "x", testNow
			tt.want.Pending = tt.want.Total - tt.want.Succeeded - tt.want.Failed
			if diff := cmp.Diff(&tt.want, got); diff != "" {
				t.Errorf("batch (-want +got):\n%s", diff)
			}
			if ttl := b.mr.TTL(results.BatchKey("x")); ttl != DefaultResultTTL {
				t.Errorf("batch TTL = %v", ttl)
			}
		})
	}
}

func mustAccept(t *testing.T, s *results.Store, id results.Identity, want results.AcceptOutcome) {
	t.Helper()
	if out, err := s.Accept(t.Context(), id, "sha-"+id.TaskID); err != nil || out != want {
		t.Fatalf("Accept %s = %v, %v; want %v", id.TaskID, out, err, want)
	}
}

func mustBegin(t *testing.T, s *results.Store, id results.Identity, want Status) {
	t.Helper()
	if st, _, err := s.Begin(t.Context(), id); err != nil || st != want {
		t.Fatalf("Begin %s = %v, %v; want %v", id.TaskID, st, err, want)
	}
}

func mustSeal(t *testing.T, s *results.Store) {
	t.Helper()
	if err := s.SealBatch(t.Context(), "x"); err != nil {
		t.Fatal(err)
	}
}

// AcceptMany gives the outcomes a sequence of Accepts would, and moves the
// batch counters the same way.
func TestStoreAcceptManyMatchesAccept(t *testing.T) {
	t.Parallel()
	item := func(n, sha string) results.AcceptItem {
		return results.AcceptItem{Identity: results.Identity{TaskID: "get:b:" + n, Op: string(OpGet), BrandID: "b", ProductCouponID: "1", OutRequestNo: n, Batch: "x"}, PayloadSHA256: sha}
	}
	// t0 exists beforehand (same payload), t9 was made by a worker's Begin alone.
	items := []results.AcceptItem{item("t1", "a"), item("t1", "a"), item("t2", "b"), item("t2", "c"), item("t0", "z"), item("t0", "other"), item("t9", "q"), item("t3", "d")}
	var outs [2][]results.AcceptOutcome
	var states [2]*BatchStatus
	var members [2]int
	for i, many := range []bool{false, true} {
		b := setup(t)
		s := b.store
		if err := s.OpenBatch(t.Context(), "x"); err != nil {
			t.Fatal(err)
		}
		if out, err := s.Accept(t.Context(), item("t0", "z").Identity, "z"); err != nil || out != results.Accepted {
			t.Fatal(out, err)
		}
		mustBegin(t, s, item("t9", "").Identity, StatusRunning)
		if many {
			out, err := s.AcceptMany(t.Context(), "x", results.Handoff{}, items)
			if err != nil {
				t.Fatal(err)
			}
			outs[i] = out
		} else {
			for _, it := range items {
				out, err := s.Accept(t.Context(), it.Identity, it.PayloadSHA256)
				if err != nil {
					t.Fatal(err)
				}
				outs[i] = append(outs[i], out)
			}
		}
		states[i], members[i] = b.batch(t, "x"), b.members(t, "x")
		if r, err := b.reader.Result(t.Context(), "get:b:t3"); err != nil || r.Status != StatusQueued || r.Batch != "x" || r.PayloadSHA256 != "d" {
			t.Errorf("many=%v: result t3 = %+v, %v", many, r, err)
		}
	}
	// Without a run, a task already of this batch is resumed, never a
	// duplicate (see TestStoreAcceptManyIdempotent for runs).
	want := []results.AcceptOutcome{results.Accepted, results.Resumed, results.Accepted, results.Conflict, results.Resumed, results.Conflict, results.Conflict, results.Accepted}
	if diff := cmp.Diff(want, outs[0]); diff != "" {
		t.Errorf("Accept outcomes (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(outs[0], outs[1]); diff != "" {
		t.Errorf("AcceptMany differs from Accept (-Accept +AcceptMany):\n%s", diff)
	}
	if diff := cmp.Diff(states[0], states[1]); diff != "" || members[0] != members[1] || states[1].Total != 4 || states[1].Duplicates != 0 {
		t.Errorf("batch after Accept %+v (%d members), after AcceptMany %+v (%d members)", states[0], members[0], states[1], members[1])
	}
}

func TestStoreAcceptManyChunks(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := b.store.OpenBatch(t.Context(), "x"); err != nil {
		t.Fatal(err)
	}
	items := make([]results.AcceptItem, results.MaxAcceptMany+3)
	for i := range items {
		n := fmt.Sprintf("t%04d", i%(results.MaxAcceptMany+1)) // the last two repeat the first two
		items[i] = results.AcceptItem{Identity: results.Identity{TaskID: "get:b:" + n, Op: string(OpGet), BrandID: "b", ProductCouponID: "1", OutRequestNo: n}, PayloadSHA256: "s"}
	}
	out, err := b.store.AcceptMany(t.Context(), "x", results.Handoff{Run: "r"}, items)
	if err != nil || len(out) != len(items) || out[len(out)-1] != results.Duplicate || out[results.MaxAcceptMany] != results.Accepted {
		t.Fatalf("AcceptMany = %v…, %v", len(out), err)
	}
	if s := b.batch(t, "x"); s.Total != results.MaxAcceptMany+1 || s.Duplicates != 2 {
		t.Errorf("batch = %+v", s)
	}
}
