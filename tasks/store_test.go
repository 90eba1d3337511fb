package tasks

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestStoreLua(t *testing.T) {
	t.Parallel()
	id := func(n string) Identity {
		return Identity{TaskID: "get:b:" + n, Op: OpGet, BrandID: "b", ProductCouponID: "1", OutRequestNo: n, Batch: "x"}
	}
	tests := []struct {
		name string
		run  func(t *testing.T, b *testBundle, s *Store)
		want BatchStatus
	}{
		{
			name: "finish twice counts once",
			run: func(t *testing.T, b *testBundle, s *Store) {
				mustAccept(t, s, id("t1"), Accepted)
				mustBegin(t, s, id("t1"), StatusRunning)
				for i, want := range []bool{true, false} {
					if ok, err := s.Finish(t.Context(), "get:b:t1", []Status{StatusSucceeded, StatusFailed}[i], Attempt{Calls: 1}); err != nil || ok != want {
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
			run: func(t *testing.T, b *testBundle, s *Store) {
				mustAccept(t, s, id("t1"), Accepted)
				mustBegin(t, s, id("t1"), StatusRunning)
				if _, err := s.Finish(t.Context(), "get:b:t1", StatusFailed, Attempt{Calls: 2, HTTPStatus: 400, ErrorCode: "PARAM_ERROR"}); err != nil {
					t.Fatal(err)
				}
				mustBegin(t, s, id("t1"), StatusFailed)
				if err := s.Retrying(t.Context(), "get:b:t1", Attempt{Calls: 1, ErrorCode: "LATE"}); err != nil {
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
			run: func(t *testing.T, b *testBundle, s *Store) {
				if _, err := s.Finish(t.Context(), "get:b:t1", StatusRunning, Attempt{}); err == nil {
					t.Error("Finish(running) succeeded")
				}
			},
		},
		{
			name: "unaccept a queued task, counting it a duplicate",
			run: func(t *testing.T, b *testBundle, s *Store) {
				mustAccept(t, s, id("t1"), Accepted)
				mustAccept(t, s, id("t2"), Accepted)
				if ok, err := s.unaccept(t.Context(), id("t1"), true); err != nil || !ok {
					t.Fatalf("unaccept = %v, %v", ok, err)
				}
				if err := s.Unaccept(t.Context(), id("t2"), false); err != nil {
					t.Fatal(err)
				}
				if b.mr.Exists(ResultKey("get:b:t1")) || b.members(t, "x") != 0 {
					t.Error("unaccepted task left behind")
				}
				mustSeal(t, s)
			},
			want: BatchStatus{Duplicates: 1, Sealed: true, FinishedAt: testNow},
		},
		{
			name: "unaccept leaves a task a worker began",
			run: func(t *testing.T, b *testBundle, s *Store) {
				mustAccept(t, s, id("t1"), Accepted)
				mustBegin(t, s, id("t1"), StatusRunning)
				if ok, err := s.unaccept(t.Context(), id("t1"), true); err != nil || ok {
					t.Fatalf("unaccept = %v, %v; want false", ok, err)
				}
			},
			want: BatchStatus{Total: 1},
		},
		{
			name: "unaccept finishes a sealed batch it empties",
			run: func(t *testing.T, b *testBundle, s *Store) {
				mustAccept(t, s, id("t1"), Accepted)
				mustSeal(t, s)
				if err := s.Unaccept(t.Context(), id("t1"), false); err != nil {
					t.Fatal(err)
				}
			},
			want: BatchStatus{Sealed: true, FinishedAt: testNow},
		},
		{
			name: "accept: duplicate and conflict",
			run: func(t *testing.T, b *testBundle, s *Store) {
				mustAccept(t, s, id("t1"), Accepted)
				mustAccept(t, s, id("t1"), Duplicate)
				if out, err := s.Accept(t.Context(), id("t1"), "other"); err != nil || out != Conflict {
					t.Fatalf("Accept with another payload = %v, %v", out, err)
				}
			},
			want: BatchStatus{Total: 1, Duplicates: 1},
		},
		{
			name: "a result made by Begin alone (no payload hash) is a conflict",
			run: func(t *testing.T, b *testBundle, s *Store) {
				mustBegin(t, s, id("t1"), StatusRunning)
				mustAccept(t, s, id("t1"), Conflict)
			},
		},
		{
			name: "reopening a finished batch: a new task unfinishes it, sealing again finishes it",
			run: func(t *testing.T, b *testBundle, s *Store) {
				mustSeal(t, s) // empty: finished at once
				if st := b.batch(t, "x"); !st.Done() {
					t.Fatalf("empty sealed batch not done: %+v", st)
				}
				if err := s.OpenBatch(t.Context(), "x"); err != nil {
					t.Fatal(err)
				}
				mustAccept(t, s, id("t1"), Accepted)
				if st := b.batch(t, "x"); st.Done() || st.Sealed {
					t.Fatalf("reopened batch with a new task: %+v", st)
				}
				mustBegin(t, s, id("t1"), StatusRunning)
				if _, err := s.Finish(t.Context(), "get:b:t1", StatusSucceeded, Attempt{Calls: 1}); err != nil {
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
			if ttl := b.mr.TTL(BatchKey("x")); ttl != DefaultResultTTL {
				t.Errorf("batch TTL = %v", ttl)
			}
		})
	}
}

func mustAccept(t *testing.T, s *Store, id Identity, want AcceptOutcome) {
	t.Helper()
	if out, err := s.Accept(t.Context(), id, "sha-"+id.TaskID); err != nil || out != want {
		t.Fatalf("Accept %s = %v, %v; want %v", id.TaskID, out, err, want)
	}
}

func mustBegin(t *testing.T, s *Store, id Identity, want Status) {
	t.Helper()
	if st, err := s.Begin(t.Context(), id); err != nil || st != want {
		t.Fatalf("Begin %s = %v, %v; want %v", id.TaskID, st, err, want)
	}
}

func mustSeal(t *testing.T, s *Store) {
	t.Helper()
	if err := s.SealBatch(t.Context(), "x"); err != nil {
		t.Fatal(err)
	}
}
