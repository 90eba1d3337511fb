package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/couponq/couponq/internal/wpenv"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/worker"
)

type statusConfig struct {
	Batch    string
	Task     string
	Wait     bool
	JSON     bool
	RedisURL string
	Interval time.Duration
	Timeout  time.Duration
	Failed   int
	Rate     int
	Queue    string
	// --tasks: every task of the batch.
	Tasks  bool
	Status string
	Format string
}

// batchView is what status prints of a batch (also its --json form).
type batchView struct {
	*tasks.BatchStatus
	Done        bool            `json:"done"`
	ElapsedSec  float64         `json:"elapsed_seconds"`
	RatePerSec  float64         `json:"rate_per_second"`
	ETASec      float64         `json:"eta_seconds,omitempty"`
	FailedTasks []*tasks.Result `json:"failed_tasks,omitempty"`
}

func newStatusCmd(e *env) *cobra.Command {
	var c statusConfig
	var ef envFlags
	cmd := &cobra.Command{
		Use:   "status (--batch ID [--wait | --tasks] | --task ID) [--json]",
		Short: "Show a batch's or a task's results",
		Long: `Reads results from Redis: a batch's counters (total, succeeded, failed,
canceled, pending, duplicates, earlier_failed, conflicts), its rate and ETA, and
its failed tasks with their error codes; or one task's result hash.

--wait follows a batch until it is done, with a progress line on a terminal. It
rides out a Redis outage (a warning, then reconnecting) until --timeout, and
warns when no worker serves --queue. Its exit status is 0 when every task
succeeded, 1 when anything did not: a task failed or canceled, a conflict, or a
duplicate of an earlier failed or canceled task (earlier_failed) — or when
--timeout passed. While waiting it also shows, every 5 s, the API calls per
second of each endpoint against --rate, read from the workers' rate limiter in
Redis, for the identity in WECHATPAY_MCHID (WECHATPAY_BRAND_ID in brand mode),
or for every identity found when neither is set.

--tasks lists every task of the batch with its result, streamed as it is read
(a batch of 100 000 lists in seconds), optionally of one --status: as a table,
as CSV, or as JSON Lines. The JSON Lines are change lines, each task's change
as it was enqueued, in the format enqueue reads; so

  couponq status --batch B --tasks --status failed --format jsonl > fix.jsonl

gives the failed changes to fix and enqueue again. Enqueued again unchanged,
a line is a duplicate of its failed task (couponq retry runs it again); a
fixed line needs a new out_request_no, since one out_request_no never carries
two bodies.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ef.apply(cmd.Flags(), e.getenv); err != nil {
				return err
			}
			if err := c.validate(cmd.Flags().Changed); err != nil {
				return err
			}
			rc, err := parseRedis(c.RedisURL)
			if err != nil {
				return err
			}
			rdb := rc.NewClient()
			defer rdb.Close()
			r := tasks.NewReader(rdb)
			switch {
			case c.Task != "":
				return showTask(cmd.Context(), e, r, &c)
			case c.Tasks:
				return listTasks(cmd.Context(), e, r, &c)
			}
			var q *quotaWatch
			var sw *serverWatch
			if c.Wait {
				if c.Rate > 0 {
					q = &quotaWatch{rdb: rdb, identity: limiterIdentity(e.getenv), rate: c.Rate, every: 5 * time.Second}
				}
				sw = &serverWatch{ins: asynq.NewInspectorFromRedisClient(rdb), queue: c.Queue, every: 5 * time.Second}
			}
			return showBatch(cmd.Context(), e, r, &c, q, sw)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Batch, "batch", "", "batch ID printed by enqueue")
	f.StringVar(&c.Task, "task", "", "task ID: <op>:<brand_id>:<out_request_no>")
	f.BoolVar(&c.Wait, "wait", false, "follow the batch until it is done; exit 1 unless every task succeeded")
	f.BoolVar(&c.JSON, "json", false, "print JSON instead of text")
	f.DurationVar(&c.Interval, "interval", time.Second, "poll interval with --wait")
	f.DurationVar(&c.Timeout, "timeout", 0, "with --wait, give up (exit 1) after this long, Redis outages included; 0 = wait until done")
	f.IntVar(&c.Failed, "failed", 20, "failed tasks to list; 0 = none, -1 = all")
	f.StringVar(&c.Queue, "queue", tasks.DefaultQueue, "the workers' asynq queue, to warn with --wait when no worker serves it")
	ef.add(f, "queue", "COUPONQ_QUEUE")
	f.BoolVar(&c.Tasks, "tasks", false, "with --batch: list every task of the batch with its result, streamed")
	f.StringVar(&c.Status, "status", "", "with --tasks: only tasks of this status (queued, running, retrying, succeeded, failed, canceled)")
	f.StringVar(&c.Format, "format", "table", "with --tasks: table, csv, or jsonl (change lines, to fix and enqueue again)")
	f.IntVar(&c.Rate, "rate", 20, "the workers' --rate, to show calls/s against with --wait; 0 = do not show")
	ef.add(f, "rate", "COUPONQ_RATE")
	addRedisFlag(cmd, &ef, &c.RedisURL)
	return cmd
}

// validate checks the combination of flags; changed tells a flag given
// from its default.
func (c *statusConfig) validate(changed func(string) bool) error {
	switch {
	case (c.Batch == "") == (c.Task == ""):
		return usageErrorf("give exactly one of --batch or --task")
	case c.Wait && c.Task != "":
		return usageErrorf("--wait goes with --batch")
	case c.Tasks && c.Task != "":
		return usageErrorf("--tasks goes with --batch (--task shows one task)")
	case c.Tasks && c.Wait:
		return usageErrorf("--tasks and --wait do not go together: wait first, then list")
	case c.Tasks && c.JSON:
		return usageErrorf("--tasks takes --format (table, csv or jsonl), not --json")
	case !c.Tasks && (changed("status") || changed("format")):
		return usageErrorf("--status and --format go with --tasks")
	case c.Interval <= 0:
		return usageErrorf("--interval must be positive")
	case c.Timeout < 0:
		return usageErrorf("--timeout must not be negative")
	case changed("timeout") && !c.Wait:
		return usageErrorf("--timeout goes with --wait")
	case c.Failed < -1:
		return usageErrorf("--failed %d: give a count, 0 for none or -1 for all", c.Failed)
	}
	if c.Status != "" && !slices.Contains(tasks.Statuses, tasks.Status(c.Status)) {
		return usageErrorf("--status %q: use one of %s", c.Status, joinStatuses())
	}
	switch c.Format {
	case "table", "csv", "jsonl":
	default:
		return usageErrorf("--format %q: use table, csv or jsonl", c.Format)
	}
	return nil
}

func joinStatuses() string {
	var s []string
	for _, st := range tasks.Statuses {
		s = append(s, string(st))
	}
	return strings.Join(s, ", ")
}

func showTask(ctx context.Context, e *env, r *tasks.Reader, c *statusConfig) error {
	res, err := r.Result(ctx, c.Task)
	if errors.Is(err, tasks.ErrNotFound) {
		return &exitError{code: exitFailure, err: fmt.Errorf("task %s: no result (never enqueued, or expired)", c.Task)}
	}
	if err != nil {
		return err
	}
	if c.JSON {
		return writeJSON(e.stdout, res)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s\t%s\n", k, v)
		}
	}
	row("task_id", res.TaskID)
	row("status", string(res.Status))
	row("op", string(res.Op))
	row("brand_id", res.BrandID)
	row("product_coupon_id", res.ProductCouponID)
	row("out_request_no", res.OutRequestNo)
	row("batch", res.Batch)
	row("attempts", fmt.Sprint(res.Attempts))
	if res.HTTPStatus != 0 {
		row("http_status", fmt.Sprint(res.HTTPStatus))
	}
	row("error_code", res.ErrorCode)
	row("error_message", res.ErrorMessage)
	row("request_id", res.RequestID)
	row("coupon_state", res.CouponState)
	row("enqueued_at", stamp(res.EnqueuedAt))
	row("updated_at", stamp(res.UpdatedAt))
	row("finished_at", stamp(res.FinishedAt))
	row("coupon", string(res.Coupon))
	return tw.Flush()
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(results.TimeFormat)
}

func showBatch(ctx context.Context, e *env, r *tasks.Reader, c *statusConfig, q *quotaWatch, sw *serverWatch) error {
	var st *tasks.BatchStatus
	var err error
	if c.Wait {
		st, err = waitBatch(ctx, e, r, c, q, sw)
	} else {
		st, err = r.Batch(ctx, c.Batch)
	}
	if err != nil {
		return batchError(c.Batch, err)
	}
	v := view(st)
	if st.Failed > 0 && c.Failed != 0 {
		if v.FailedTasks, err = r.FailedTasks(ctx, c.Batch, c.Failed); err != nil {
			return err
		}
	}
	if c.JSON {
		err = writeJSON(e.stdout, v)
	} else {
		err = printBatch(e.stdout, v)
	}
	if err != nil {
		return err
	}
	if c.Wait && !st.OK() {
		return &exitError{code: exitFailure, err: fmt.Errorf("batch %s did not fully succeed: %s", st.ID, problems(st))}
	}
	return nil
}

// batchError words a failed read of batch id.
func batchError(id string, err error) error {
	if errors.Is(err, tasks.ErrNotFound) {
		return &exitError{code: exitFailure, err: fmt.Errorf("batch %s: not found (never enqueued, or expired)", id)}
	}
	return err
}

// problems lists what went wrong in a batch, e.g. "2 failed, 1 conflict".
func problems(st *tasks.BatchStatus) string {
	var p []string
	for _, x := range []struct {
		n    int
		what string
	}{
		{st.Failed, "failed"}, {st.Canceled, "canceled"}, {st.Conflicts, "conflicts"},
		{st.EarlierFailed, "earlier_failed (duplicates of failed or canceled tasks: couponq retry runs those)"},
	} {
		if x.n > 0 {
			p = append(p, fmt.Sprintf("%d %s", x.n, x.what))
		}
	}
	return strings.Join(p, ", ")
}

// waitBatch polls the batch until it is done, drawing progress on stderr.
// A Redis that does not answer is a warning, then polled again, until
// --timeout; the batch not being there is an error at once.
func waitBatch(ctx context.Context, e *env, r *tasks.Reader, c *statusConfig, q *quotaWatch, sw *serverWatch) (*tasks.BatchStatus, error) {
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	prog := newProgress(e.stderr, "batch", 0)
	prog.every = 5 * time.Second
	defer prog.finish()
	var (
		last   *tasks.BatchStatus
		outage error // the Redis error while Redis does not answer
	)
	t := time.NewTicker(c.Interval)
	defer t.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return nil, waitGaveUp(ctx, c, last, outage)
			case <-t.C:
			}
		}
		st, err := r.Batch(ctx, c.Batch)
		switch {
		case errors.Is(err, tasks.ErrNotFound):
			return nil, err
		case ctx.Err() != nil:
			return nil, waitGaveUp(ctx, c, last, cmp.Or(outage, err))
		case err != nil:
			if outage == nil {
				until := "until it answers"
				if c.Timeout > 0 {
					until = "until --timeout " + c.Timeout.String()
				}
				prog.note(fmt.Sprintf("warning: Redis does not answer (%v); reconnecting %s", oneLine(err), until))
			}
			outage = err
			continue
		}
		if outage != nil {
			prog.note("Redis answers again; still waiting for batch " + c.Batch)
			outage = nil
		}
		if last == nil {
			prog.note(fmt.Sprintf("waiting for batch %s (%d tasks so far)", st.ID, st.Total))
		}
		last = st
		prog.total = int64(st.Total)
		v := view(st)
		suffix := fmt.Sprintf("%d failed", st.Failed)
		if st.Canceled > 0 {
			suffix += fmt.Sprintf(", %d canceled", st.Canceled)
		}
		suffix += fmt.Sprintf(", %.1f/s", v.RatePerSec)
		if v.ETASec > 0 {
			suffix += ", ETA " + (time.Duration(v.ETASec) * time.Second).String()
		}
		if st.State() == "enqueuing" {
			suffix += ", enqueuing"
		}
		now := time.Now()
		for _, line := range sw.lines(ctx, now) {
			prog.note(line)
		}
		if lines := q.lines(ctx, now); len(lines) > 0 {
			prog.note(strings.Join(lines, "\n"))
		}
		prog.set(int64(st.Succeeded+st.Failed+st.Canceled), suffix)
		if st.Done() {
			return st, nil
		}
	}
}

// waitGaveUp is the error of a wait that ended before the batch did.
func waitGaveUp(ctx context.Context, c *statusConfig, last *tasks.BatchStatus, outage error) error {
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) || c.Timeout <= 0 {
		return fmt.Errorf("waiting for batch %s: %w", c.Batch, context.Cause(ctx))
	}
	msg := fmt.Sprintf("gave up waiting for batch %s after --timeout %s", c.Batch, c.Timeout)
	if outage != nil {
		msg += fmt.Sprintf(" (Redis does not answer: %v)", oneLine(outage))
	} else if last != nil {
		msg += fmt.Sprintf(" (%d of %d tasks finished)", last.Succeeded+last.Failed+last.Canceled, last.Total)
	}
	return &exitError{code: exitFailure, err: errors.New(msg)}
}

// serverWatch says when no asynq server (couponq worker) serves the queue,
// from asynq's server heartbeats, checked at most every every. A nil
// *serverWatch says nothing.
type serverWatch struct {
	ins    *asynq.Inspector
	queue  string
	every  time.Duration
	last   time.Time
	warned bool
}

// lines returns a warning when the queue has just lost its last worker
// (or has none at the first check), and a line when one is back.
func (w *serverWatch) lines(_ context.Context, now time.Time) []string {
	if w == nil || (!w.last.IsZero() && now.Sub(w.last) < w.every) {
		return nil
	}
	w.last = now
	servers, err := w.ins.Servers()
	if err != nil {
		return nil // the batch poll reports outages
	}
	served := false
	for _, s := range servers {
		if _, ok := s.Queues[w.queue]; ok {
			served = true
			break
		}
	}
	switch {
	case !served && !w.warned:
		w.warned = true
		return []string{fmt.Sprintf("warning: no worker serves queue %q (no asynq server heartbeat names it): nothing will run until a couponq worker starts", w.queue)}
	case served && w.warned:
		w.warned = false
		return []string{fmt.Sprintf("a worker serves queue %q again", w.queue)}
	}
	return nil
}

func view(st *tasks.BatchStatus) *batchView {
	v := &batchView{BatchStatus: st, Done: st.Done()}
	end := time.Now()
	if !st.FinishedAt.IsZero() {
		end = st.FinishedAt
	}
	if !st.CreatedAt.IsZero() {
		v.ElapsedSec = end.Sub(st.CreatedAt).Seconds()
	}
	finished := st.Succeeded + st.Failed + st.Canceled
	if v.ElapsedSec > 0 {
		v.RatePerSec = float64(finished) / v.ElapsedSec
	}
	if !v.Done && v.RatePerSec > 0 {
		v.ETASec = float64(st.Pending) / v.RatePerSec
	}
	return v
}

func printBatch(w io.Writer, v *batchView) error {
	state := v.State()
	if !v.OK() {
		// A batch with problems must not read as healthy.
		state += ", not all succeeded: " + problems(v.BatchStatus)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "batch\t%s\n", v.ID)
	fmt.Fprintf(tw, "state\t%s\n", state)
	fmt.Fprintf(tw, "total\t%d\n", v.Total)
	fmt.Fprintf(tw, "succeeded\t%d\n", v.Succeeded)
	fmt.Fprintf(tw, "failed\t%d\n", v.Failed)
	fmt.Fprintf(tw, "canceled\t%d\n", v.Canceled)
	fmt.Fprintf(tw, "pending\t%d\n", v.Pending)
	fmt.Fprintf(tw, "duplicates\t%d\n", v.Duplicates)
	fmt.Fprintf(tw, "earlier_failed\t%d\n", v.EarlierFailed)
	fmt.Fprintf(tw, "conflicts\t%d\n", v.Conflicts)
	fmt.Fprintf(tw, "created_at\t%s\n", stamp(v.CreatedAt))
	if v.Done {
		fmt.Fprintf(tw, "finished_at\t%s\n", stamp(v.FinishedAt))
	}
	fmt.Fprintf(tw, "rate\t%.1f tasks/s\n", v.RatePerSec)
	if v.ETASec > 0 {
		fmt.Fprintf(tw, "eta\t%s\n", (time.Duration(v.ETASec) * time.Second).String())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.FailedTasks) > 0 {
		fmt.Fprintf(w, "\nfailed tasks (first %d of %d):\n", len(v.FailedTasks), v.Failed)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TASK\tHTTP\tCODE\tATTEMPTS\tMESSAGE")
		for _, r := range v.FailedTasks {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", r.TaskID, r.HTTPStatus, r.ErrorCode, r.Attempts, r.ErrorMessage)
		}
		return tw.Flush()
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// quotaWatch reads the workers' use of their API quota from the rate
// limiter's keys in Redis, at most every every. A nil *quotaWatch shows
// nothing.
type quotaWatch struct {
	rdb      redis.UniversalClient
	identity string // "" = every identity with limiter keys
	rate     int
	every    time.Duration
	last     time.Time
}

// lines returns one line per identity, or nothing when it is not yet time
// or Redis did not answer (the batch poll reports outages).
func (q *quotaWatch) lines(ctx context.Context, now time.Time) []string {
	if q == nil || (!q.last.IsZero() && now.Sub(q.last) < q.every) {
		return nil
	}
	q.last = now
	ids := []string{q.identity}
	if q.identity == "" {
		var err error
		if ids, err = worker.LimiterIdentities(ctx, q.rdb); err != nil {
			return nil
		}
	}
	var out []string
	for _, id := range ids {
		use, err := worker.QuotaUse(ctx, q.rdb, id)
		if err != nil {
			return nil
		}
		out = append(out, quotaLines(id, q.rate, use)...)
	}
	return out
}

// quotaLines formats one identity's calls in the last second against the
// rate, e.g. "quota 1900000001: update 19/20, deactivate 20/20, get 0/20
// calls/s", on two lines when one would pass 80 columns.
func quotaLines(identity string, rate int, use map[string]int) []string {
	var b strings.Builder
	for i, op := range worker.LimitedOps {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d/%d", op, use[op], rate)
	}
	b.WriteString(" calls/s")
	line := "quota " + identity + ": " + b.String()
	if len(line) <= 80 {
		return []string{line}
	}
	return []string{"quota " + identity + ":", "  " + b.String()}
}

// limiterIdentity is the identity the workers' limiter uses, from the same
// environment as the worker's WeChat Pay settings; "" when unset.
func limiterIdentity(getenv func(string) string) string { return wpenv.Identity(getenv) }
