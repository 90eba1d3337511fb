package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/tasks"
)

func TestBarLineFitsTheTerminal(t *testing.T) {
	t.Parallel()
	label := "batch"
	suffix := "12 failed, 3 canceled, 187.4/s, ETA 8m20s, enqueuing"
	for _, width := range []int{200, 80, 60, 40, 24, 10, 1} {
		t.Run(fmt.Sprint(width), func(t *testing.T) {
			t.Parallel()
			for _, done := range []int64{0, 1, 49_999, 100_000} {
				line := barLine(width, label, done, 100_000, suffix)
				if n := utf8.RuneCountInString(line); n > max(width-1, 1) {
					t.Errorf("done %d: %d columns at width %d: %q", done, n, width, line)
				}
				if strings.ContainsAny(line, "\r\n") {
					t.Errorf("line breaks in %q", line)
				}
			}
			line := barLine(width, label, 50_000, 100_000, suffix)
			bar := regexp.MustCompile(`\[[=> ]*\]`).FindString(line)
			switch {
			case width >= 80 && len(bar) < minBar+2:
				t.Errorf("width %d: bar %q too narrow in %q", width, bar, line)
			case width >= 80 && !strings.Contains(line, " 50% 50000/100000 "):
				t.Errorf("width %d: counts missing in %q", width, line)
			case width == 24 && !strings.Contains(line, "50000/100000"):
				t.Errorf("width 24: counts cut in %q", line)
			}
		})
	}
	if got := barLine(80, "enqueue", 5, 10, ""); !strings.HasPrefix(got, "enqueue [") || !strings.Contains(got, "] ") {
		t.Errorf("plain bar = %q", got)
	}
}

// TestProgressRedrawsInPlace: on a terminal every redraw returns to the
// start of the one line (no new line per redraw), notes go above it, and
// finish leaves the line clear.
func TestProgressRedrawsInPlace(t *testing.T) {
	t.Parallel()
	for _, width := range []int{80, 50} {
		var buf bytes.Buffer
		p := &progress{w: &buf, tty: true, width: func() int { return width }, label: "batch", total: 1000}
		for i := range 20 {
			p.lastDraw = time.Time{} // no throttling
			p.set(int64(i*50), fmt.Sprintf("%d failed, 12.5/s, ETA 1m%ds", i, i))
		}
		if strings.Contains(buf.String(), "\n") {
			t.Fatalf("width %d: redraws left new lines: %q", width, buf.String())
		}
		for _, seg := range strings.Split(buf.String(), "\r")[1:] {
			if vis := strings.TrimSuffix(seg, "\x1b[K"); utf8.RuneCountInString(vis) > width-1 {
				t.Errorf("width %d: drawn %d columns: %q", width, utf8.RuneCountInString(vis), vis)
			}
		}
		buf.Reset()
		p.note("warning: something")
		if got := buf.String(); got != "\r\x1b[Kwarning: something\n" {
			t.Errorf("note = %q", got)
		}
		p.lastDraw = time.Time{}
		p.set(1000, "")
		buf.Reset()
		p.finish()
		if got := buf.String(); got != "\r\x1b[K" {
			t.Errorf("finish = %q", got)
		}
	}
}

func lineOf(b *bundle, op, coupon, orn, extra string) string {
	switch op {
	case "update":
		return fmt.Sprintf(`{"op":"update","product_coupon_id":%q,"brand_id":%q,"out_request_no":%q,"display_info":{"name":"名%s"}%s}`+"\n", coupon, b.fake.BrandID(), orn, orn, extra)
	case "deactivate":
		return fmt.Sprintf(`{"op":"deactivate","product_coupon_id":%q,"brand_id":%q,"out_request_no":%q,"deactivate_reason":"r%s"%s}`+"\n", coupon, b.fake.BrandID(), orn, orn, extra)
	}
	return fmt.Sprintf(`{"op":"get","product_coupon_id":%q,"brand_id":%q,"out_request_no":%q%s}`+"\n", coupon, b.fake.BrandID(), orn, extra)
}

// finishTask records a task's terminal outcome as a worker would.
func finishTask(t *testing.T, rdb redis.UniversalClient, taskID string, st results.Status) {
	t.Helper()
	s := results.NewStore(rdb)
	parts := strings.SplitN(taskID, ":", 3)
	if _, _, err := s.Begin(t.Context(), results.Identity{TaskID: taskID, Op: parts[0], BrandID: parts[1], OutRequestNo: parts[2]}); err != nil {
		t.Fatal(err)
	}
	a := results.Attempt{Calls: 1, HTTPStatus: 200}
	if st == results.StatusFailed {
		a = results.Attempt{Calls: 1, HTTPStatus: 401, ErrorCode: "SIGN_ERROR", ErrorMessage: "签名错误"}
	}
	if _, err := s.Finish(t.Context(), taskID, st, a); err != nil {
		t.Fatal(err)
	}
}

// TestEnqueueEarlierFailedAndConflicts: enqueue names the batch on stderr
// before it enqueues; a re-enqueue of failed changes is a duplicate counted
// in earlier_failed, exits 1 naming couponq retry with the earlier batch,
// and status --wait on that batch exits 1; a conflict is reported once,
// without a stuttered prefix, and its batch does not look healthy either.
func TestEnqueueEarlierFailedAndConflicts(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	rdb := redis.NewClient(&redis.Options{Addr: b.mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	brand := b.fake.BrandID()
	file := b.writeFile(t, "a.jsonl", lineOf(b, "update", b.ids[0], "orn_ef_1", "")+lineOf(b, "deactivate", b.ids[1], "orn_ef_2", ""))
	r := b.run(t, "", "enqueue", "--file", file)
	first := strings.TrimSpace(r.stdout)
	if r.code != 0 || !isULID(first) {
		t.Fatalf("enqueue: exit %d, stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(r.stderr, "\n")
	if want := "batch " + first + ": enqueuing 2 changes"; lines[0] != want {
		t.Errorf("first stderr line = %q, want %q (the batch named before anything is enqueued)", lines[0], want)
	}
	finishTask(t, rdb, "update:"+brand+":orn_ef_1", results.StatusFailed)
	finishTask(t, rdb, "deactivate:"+brand+":orn_ef_2", results.StatusSucceeded)

	r = b.run(t, "", "enqueue", "--file", file)
	second := strings.TrimSpace(r.stdout)
	if r.code != 1 || !isULID(second) || second == first {
		t.Fatalf("re-enqueue: exit %d, stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"2 duplicates (1 of failed or canceled tasks)", "earlier_failed", "couponq retry --batch " + first} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("re-enqueue stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	r = b.run(t, "", "status", "--batch", second, "--wait", "--interval", "10ms", "--rate", "0")
	if r.code != 1 || !strings.Contains(r.stderr, "1 earlier_failed") || !strings.Contains(r.stdout, "earlier_failed  1") {
		t.Errorf("status --wait of the re-enqueue: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = b.run(t, "", "status", "--batch", first, "--wait", "--interval", "10ms", "--rate", "0")
	if r.code != 1 || !strings.Contains(r.stderr, "1 failed") {
		t.Errorf("status --wait of a batch with a failure: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	conflict := b.writeFile(t, "c.jsonl", strings.Replace(lineOf(b, "deactivate", b.ids[1], "orn_ef_2", ""), `"rorn_ef_2"`, `"another reason"`, 1))
	r = b.run(t, "", "enqueue", "--file", conflict)
	third := strings.TrimSpace(r.stdout)
	if r.code != 1 || !isULID(third) {
		t.Fatalf("conflicting enqueue: exit %d, stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
	task := "deactivate:" + brand + ":orn_ef_2"
	if n := strings.Count(r.stderr, task); n != 1 {
		t.Errorf("conflicting task named %d times:\n%s", n, r.stderr)
	}
	if strings.Contains(r.stderr, "couponq: couponq") || regexp.MustCompile(`: couponq: `).MatchString(r.stderr) {
		t.Errorf("stuttered prefix:\n%s", r.stderr)
	}
	r = b.run(t, "", "status", "--batch", third, "--wait", "--interval", "10ms", "--rate", "0")
	if r.code != 1 || !strings.Contains(r.stderr, "1 conflicts") || !strings.Contains(r.stdout, "conflicts       1") {
		t.Errorf("status --wait of a batch with a conflict: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	// Plain status reads fine (exit 0) but does not call it healthy.
	r = b.run(t, "", "status", "--batch", third)
	if r.code != 0 || !strings.Contains(r.stdout, "done, not all succeeded: 1 conflicts") {
		t.Errorf("status of a batch with a conflict: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// couponq batches lists all three, newest first.
	r = b.run(t, "", "batches", "--json")
	var rows []struct {
		ID    string `json:"batch_id"`
		State string `json:"state"`
		OK    bool   `json:"ok"`
		Total int    `json:"total"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil || r.code != 0 {
		t.Fatalf("batches --json: exit %d, %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	if len(rows) != 3 || rows[0].ID != third || rows[1].ID != second || rows[2].ID != first ||
		rows[2].Total != 2 || rows[2].OK || rows[2].State != "done" {
		t.Errorf("batches = %+v", rows)
	}
	r = b.run(t, "", "batches")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "BATCH ") || strings.Count(r.stdout, "\n") != 4 {
		t.Errorf("batches table: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestStatusTasksFormatsAndExport: status --tasks lists every task with its
// result in each format; --status filters; the jsonl of the failed tasks
// enqueues again as duplicates of them (exit 1, earlier_failed), and, fixed
// with a new out_request_no, as new changes.
func TestStatusTasksFormatsAndExport(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	rdb := redis.NewClient(&redis.Options{Addr: b.mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	brand := b.fake.BrandID()
	var in strings.Builder
	for i := range 9 {
		in.WriteString(lineOf(b, []string{"update", "deactivate", "get"}[i%3], b.ids[i%3], fmt.Sprintf("orn_st_%d", i), ""))
	}
	r := b.run(t, in.String(), "enqueue", "--file", "-")
	batch := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("enqueue: exit %d\n%s", r.code, r.stderr)
	}
	ops := []string{"update", "deactivate", "get"}
	for i := range 9 {
		st := results.StatusSucceeded
		if i < 2 {
			st = results.StatusFailed
		}
		if i < 8 {
			finishTask(t, rdb, fmt.Sprintf("%s:%s:orn_st_%d", ops[i%3], brand, i), st)
		}
	}

	r = b.run(t, "", "status", "--batch", batch, "--tasks")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 10 || !strings.Contains(r.stderr, "batch "+batch+": 9 tasks") ||
		!regexp.MustCompile(`update:\S+:orn_st_0 +failed +1 +401 +SIGN_ERROR`).MatchString(r.stdout) {
		t.Errorf("table: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = b.run(t, "", "status", "--batch", batch, "--tasks", "--status", "queued", "--format", "csv")
	recs, err := csv.NewReader(strings.NewReader(r.stdout)).ReadAll()
	if err != nil || r.code != 0 || len(recs) != 2 || recs[0][0] != "task_id" || recs[1][0] != "get:"+brand+":orn_st_8" || recs[1][6] != "queued" {
		t.Errorf("csv --status queued: exit %d, %v, %q\n%s", r.code, err, recs, r.stderr)
	}

	r = b.run(t, "", "status", "--batch", batch, "--tasks", "--status", "failed", "--format", "jsonl")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 2 || !strings.Contains(r.stderr, "2 failed tasks") {
		t.Fatalf("jsonl --status failed: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		if !strings.HasPrefix(line, `{"op":"`) || !strings.Contains(line, `"out_request_no":"orn_st_`) {
			t.Errorf("not a change line: %s", line)
		}
	}
	exported := r.stdout
	r = b.run(t, exported, "enqueue", "--file", "-")
	if r.code != 1 || !strings.Contains(r.stderr, "2 duplicates (2 of failed or canceled tasks)") || !strings.Contains(r.stderr, "couponq retry --batch "+batch) {
		t.Errorf("enqueue of the export: exit %d\n%s", r.code, r.stderr)
	}
	fixed := strings.ReplaceAll(exported, `"out_request_no":"orn_st_`, `"out_request_no":"orn_fix_`)
	r = b.run(t, fixed, "enqueue", "--file", "-")
	if r.code != 0 || !strings.Contains(r.stderr, ": 2 enqueued, 0 duplicates") {
		t.Errorf("enqueue of the fixed export: exit %d\n%s", r.code, r.stderr)
	}

	// --failed: 0 lists none, -1 all, N the first N (as the library's FailedTasks).
	for _, tt := range []struct {
		failed string
		want   int
	}{{"0", 0}, {"-1", 2}, {"1", 1}} {
		r = b.run(t, "", "status", "--batch", batch, "--failed", tt.failed, "--json")
		var v struct {
			Failed []json.RawMessage `json:"failed_tasks"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || len(v.Failed) != tt.want {
			t.Errorf("--failed %s: %d listed, want %d (%v)", tt.failed, len(v.Failed), tt.want, err)
		}
	}

	for _, tt := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--batch", batch, "--tasks", "--status", "done"}, 2, `--status "done": use one of queued, running, retrying, succeeded, failed, canceled`},
		{[]string{"--batch", batch, "--tasks", "--format", "xml"}, 2, `--format "xml"`},
		{[]string{"--batch", batch, "--tasks", "--wait"}, 2, "--tasks and --wait"},
		{[]string{"--batch", batch, "--status", "failed"}, 2, "go with --tasks"},
		{[]string{"--batch", batch, "--timeout", "1s"}, 2, "--timeout goes with --wait"},
		{[]string{"--batch", batch, "--failed", "-2"}, 2, "--failed -2"},
		{[]string{"--batch", "nosuchbatch", "--tasks"}, 1, "batch nosuchbatch: not found"},
		{[]string{"--batch", "nosuchbatch", "--wait"}, 1, "batch nosuchbatch: not found"},
	} {
		r = b.run(t, "", append([]string{"status"}, tt.args...)...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
			t.Errorf("status %v: exit %d, want %d and one line with %q:\n%s", tt.args, r.code, tt.code, tt.want, r.stderr)
		}
	}
}

// TestStatusTasksHundredThousand: a batch of 100 000 tasks on a real
// redis-server lists completely, each task once. The time is logged, not
// asserted.
func TestStatusTasksHundredThousand(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	b := realBundle(t, srv, 1)
	rdb := srv.Client()
	ctx := t.Context()
	s := results.NewStore(rdb)
	const n = 100_000
	if err := s.OpenBatch(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	items := make([]results.AcceptItem, 0, n)
	for i := range n {
		orn := fmt.Sprintf("orn_big_%06d", i)
		c := tasks.Change{Op: tasks.OpGet, ProductCouponID: b.ids[0], BrandID: b.fake.BrandID(), OutRequestNo: orn}
		p, _ := c.Payload()
		items = append(items, results.AcceptItem{Identity: results.Identity{TaskID: c.TaskID(), Op: "get", BrandID: c.BrandID,
			ProductCouponID: c.ProductCouponID, OutRequestNo: orn}, PayloadSHA256: tasks.PayloadSHA256(p), Payload: p})
	}
	if _, err := s.AcceptMany(ctx, "big", results.Handoff{Run: "r", Queue: tasks.DefaultQueue}, items); err != nil {
		t.Fatal(err)
	}
	if err := s.SealBatch(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"csv", "jsonl"} {
		start := time.Now()
		r := b.run(t, "", "status", "--batch", "big", "--tasks", "--format", format)
		elapsed := time.Since(start)
		if r.code != 0 {
			t.Fatalf("%s: exit %d: %s", format, r.code, r.stderr)
		}
		lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
		if format == "csv" {
			lines = lines[1:]
		}
		seen := make(map[string]bool, n)
		re := regexp.MustCompile(`orn_big_\d{6}`)
		for _, l := range lines {
			seen[re.FindString(l)] = true
		}
		if len(lines) != n || len(seen) != n || seen[""] {
			t.Errorf("%s: %d lines, %d distinct tasks; want %d each", format, len(lines), len(seen), n)
		}
		t.Logf("status --tasks --format %s of %d tasks: %v", format, n, elapsed)
	}
}

// TestStatusWaitRidesOutRedisOutage: status --wait warns when Redis stops
// answering (a frozen server, then a restarted one), reconnects and ends
// with the batch; with --timeout during an outage it exits 1 saying so.
// It also warns while no worker serves the queue.
func TestStatusWaitRidesOutRedisOutage(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t, redistest.WithPersistence())
	b := realBundle(t, srv, 2)
	rdb := srv.Client()
	f := b.writeFile(t, "w.jsonl", lineOf(b, "get", b.ids[0], "orn_wait_1", "")+lineOf(b, "get", b.ids[1], "orn_wait_2", ""))
	r := b.run(t, "", "enqueue", "--file", f)
	batch := strings.TrimSpace(r.stdout)
	if r.code != 0 {
		t.Fatalf("enqueue: exit %d: %s", r.code, r.stderr)
	}
	w := b.startProc(t, "status", "--batch", batch, "--wait", "--interval", "20ms", "--timeout", "5m", "--rate", "0")
	waitFor := func(what string) {
		t.Helper()
		testutil.Eventually(t, 60*time.Second, 20*time.Millisecond, func() error {
			if r, ok := w.exited(); ok {
				t.Fatalf("status --wait exited %d early:\n%s", r.code, r.stderr)
			}
			if !strings.Contains(w.stderr.String(), what) {
				return fmt.Errorf("no %q yet", what)
			}
			return nil
		}, "status --wait never said %q:\n%s", what, w.stderr.String())
	}
	waitFor("waiting for batch " + batch)
	waitFor(`warning: no worker serves queue "couponq"`)

	resume := srv.Pause()
	waitFor("warning: Redis does not answer")
	resume()
	waitFor("Redis answers again")

	// Down for a while, then started again (its data kept on disk).
	srv.Stop()
	testutil.Eventually(t, 60*time.Second, 20*time.Millisecond, func() error {
		if strings.Count(w.stderr.String(), "warning: Redis does not answer") < 2 {
			return fmt.Errorf("no second warning")
		}
		return nil
	}, "no warning for the stopped server:\n%s", w.stderr.String())
	srv.Restart()
	testutil.Eventually(t, 60*time.Second, 20*time.Millisecond, func() error {
		if strings.Count(w.stderr.String(), "Redis answers again") < 2 {
			return fmt.Errorf("not back")
		}
		return nil
	}, "did not reconnect after the restart:\n%s", w.stderr.String())

	brand := b.fake.BrandID()
	finishTask(t, rdb, "get:"+brand+":orn_wait_1", results.StatusSucceeded)
	finishTask(t, rdb, "get:"+brand+":orn_wait_2", results.StatusSucceeded)
	var res result
	testutil.Eventually(t, 60*time.Second, 20*time.Millisecond, func() error {
		var ok bool
		if res, ok = w.exited(); !ok {
			return fmt.Errorf("still waiting")
		}
		return nil
	}, "status --wait did not end with the batch")
	if res.code != 0 || !strings.Contains(res.stdout, "succeeded       2") {
		t.Errorf("status --wait: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}

	// An outage longer than --timeout: exit 1, saying why.
	f2 := b.writeFile(t, "w2.jsonl", lineOf(b, "get", b.ids[0], "orn_wait_3", ""))
	r = b.run(t, "", "enqueue", "--file", f2)
	if r.code != 0 {
		t.Fatalf("enqueue: exit %d: %s", r.code, r.stderr)
	}
	w = b.startProc(t, "status", "--batch", strings.TrimSpace(r.stdout), "--wait", "--interval", "20ms", "--timeout", "2s", "--rate", "0")
	waitFor("waiting for batch")
	srv.Pause()
	testutil.Eventually(t, 60*time.Second, 20*time.Millisecond, func() error {
		var ok bool
		if res, ok = w.exited(); !ok {
			return fmt.Errorf("still waiting")
		}
		return nil
	}, "status --wait --timeout 2s did not give up")
	if res.code != 1 || !strings.Contains(res.stderr, "gave up waiting for batch") || !strings.Contains(res.stderr, "after --timeout 2s (Redis does not answer") {
		t.Errorf("timeout: exit %d\n%s", res.code, res.stderr)
	}
}

var ulidRE = regexp.MustCompile(`^[0-9A-HJKMNP-TV-Z]{26}$`)

func isULID(s string) bool { return ulidRE.MatchString(s) }

// TestEnqueueNotBeforeInput: a malformed not_before is refused with its
// line number (exit 2, nothing enqueued), as is a malformed --not-before;
// --not-before sets the payload of the lines that have none.
func TestEnqueueNotBeforeInput(t *testing.T) {
	t.Parallel()
	b := setup(t, 2)
	bad := lineOf(b, "get", b.ids[0], "orn_nbin_1", "") + lineOf(b, "get", b.ids[1], "orn_nbin_2", `,"not_before":"2025-13-01T00:00:00Z"`)
	r := b.run(t, bad, "enqueue", "--file", "-")
	if r.code != 2 || !strings.Contains(r.stderr, "line 2: ") || !strings.Contains(r.stderr, "not_before") || r.stdout != "" {
		t.Errorf("malformed not_before: exit %d, stdout %q\n%s", r.code, r.stdout, r.stderr)
	}
	if keys := b.mr.Keys(); len(keys) != 0 {
		t.Errorf("keys written for a refused file: %v", keys)
	}
	r = b.run(t, lineOf(b, "get", b.ids[0], "orn_nbin_1", ""), "enqueue", "--file", "-", "--not-before", "next week")
	if r.code != 2 || !strings.Contains(r.stderr, `--not-before "next week": must be an RFC 3339 time`) {
		t.Errorf("malformed --not-before: exit %d\n%s", r.code, r.stderr)
	}
	in := lineOf(b, "get", b.ids[0], "orn_nbin_3", "") + lineOf(b, "get", b.ids[1], "orn_nbin_4", `,"not_before":"2030-01-01T00:00:00Z"`)
	r = b.run(t, in, "enqueue", "--file", "-", "--not-before", "2031-06-01T08:00:00+08:00")
	if r.code != 0 {
		t.Fatalf("enqueue: exit %d\n%s", r.code, r.stderr)
	}
	r = b.run(t, "", "status", "--batch", strings.TrimSpace(r.stdout), "--tasks", "--format", "jsonl")
	for _, want := range []string{`"out_request_no":"orn_nbin_3","not_before":"2031-06-01T08:00:00+08:00"`, `"out_request_no":"orn_nbin_4","not_before":"2030-01-01T00:00:00Z"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("export lacks %s:\n%s", want, r.stdout)
		}
	}
}

// TestNotBeforeEndToEnd: on a real redis-server with a worker, changes
// whose not_before is a few seconds ahead reach the fake WeChat Pay no
// earlier than that (per its request log), and succeed.
func TestNotBeforeEndToEnd(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	b := realBundle(t, srv, 3)
	b.startProc(t, "worker", "--rate", "0", "--http", "", "--retry-base", "50ms", "--retry-cap", "200ms", "--log-format", "json")
	nb := time.Now().Add(3 * time.Second).Truncate(time.Second).Add(time.Second)
	stamp := nb.UTC().Format(time.RFC3339)
	in := lineOf(b, "deactivate", b.ids[0], "orn_nbe_1", `,"not_before":"`+stamp+`"`) +
		lineOf(b, "get", b.ids[1], "orn_nbe_2", "") + // from --not-before
		lineOf(b, "get", b.ids[2], "orn_nbe_3", `,"not_before":"2000-01-01T00:00:00Z"`) // past: at once
	r := b.run(t, in, "enqueue", "--file", "-", "--not-before", nb.In(time.FixedZone("CST", 8*3600)).Format(time.RFC3339))
	if r.code != 0 {
		t.Fatalf("enqueue: exit %d\n%s", r.code, r.stderr)
	}
	batch := strings.TrimSpace(r.stdout)
	ins := asynq.NewInspectorFromRedisClient(srv.Client())
	testutil.Eventually(t, 60*time.Second, 20*time.Millisecond, func() error {
		servers, err := ins.Servers()
		for _, s := range servers {
			if _, ok := s.Queues[tasks.DefaultQueue]; ok {
				return nil
			}
		}
		return fmt.Errorf("no server heartbeat yet (%v)", err)
	}, "the worker never showed in asynq's servers")
	r = b.run(t, "", "status", "--batch", batch, "--wait", "--interval", "50ms", "--rate", "0", "--timeout", "2m")
	if r.code != 0 {
		t.Fatalf("status --wait: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, "no worker serves") {
		t.Errorf("status --wait warned of no worker while one serves the queue:\n%s", r.stderr)
	}
	seen := map[string]bool{}
	for _, req := range b.fake.Requests() {
		switch req.CouponID {
		case b.ids[0], b.ids[1]:
			seen[req.CouponID] = true
			if req.Time.Before(nb) {
				t.Errorf("%s %s at %v, before not_before %v", req.Method, req.Path, req.Time, nb)
			}
		case b.ids[2]:
			seen[req.CouponID] = true
		}
	}
	if len(seen) != 3 {
		t.Errorf("requests for %d coupons, want 3", len(seen))
	}
}
