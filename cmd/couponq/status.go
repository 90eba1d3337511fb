package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/couponq/couponq/internal/wpenv"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

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
	Failed   int
	Rate     int
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
		Use:   "status (--batch ID [--wait] | --task ID) [--json]",
		Short: "Show a batch's or a task's results",
		Long: `Reads results from Redis: a batch's counters (total, succeeded, failed,
pending, duplicates), its rate and ETA, and its failed tasks with their error
codes; or one task's result hash. --wait follows a batch until it is done, with a
progress bar on a terminal; its exit status is 1 when any task failed. While
waiting it also shows, every 5 s, the API calls per second of each endpoint
against --rate, read from the workers' rate limiter in Redis, for the identity
in WECHATPAY_MCHID (WECHATPAY_BRAND_ID in brand mode), or for every identity
found when neither is set.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ef.apply(cmd.Flags(), e.getenv); err != nil {
				return err
			}
			switch {
			case (c.Batch == "") == (c.Task == ""):
				return usageErrorf("give exactly one of --batch or --task")
			case c.Wait && c.Task != "":
				return usageErrorf("--wait goes with --batch")
			case c.Interval <= 0:
				return usageErrorf("--interval must be positive")
			}
			rc, err := parseRedis(c.RedisURL)
			if err != nil {
				return err
			}
			rdb := rc.NewClient()
			defer rdb.Close()
			r := tasks.NewReader(rdb)
			if c.Task != "" {
				return showTask(cmd.Context(), e, r, &c)
			}
			var q *quotaWatch
			if c.Wait && c.Rate > 0 {
				q = &quotaWatch{rdb: rdb, identity: limiterIdentity(e.getenv), rate: c.Rate, every: 5 * time.Second}
			}
			return showBatch(cmd.Context(), e, r, &c, q)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Batch, "batch", "", "batch ID printed by enqueue")
	f.StringVar(&c.Task, "task", "", "task ID: <op>:<brand_id>:<out_request_no>")
	f.BoolVar(&c.Wait, "wait", false, "follow the batch until it is done; exit 1 if any task failed")
	f.BoolVar(&c.JSON, "json", false, "print JSON instead of text")
	f.DurationVar(&c.Interval, "interval", time.Second, "poll interval with --wait")
	f.IntVar(&c.Failed, "failed", 20, "failed tasks to list")
	f.IntVar(&c.Rate, "rate", 20, "the workers' --rate, to show calls/s against with --wait; 0 = do not show")
	ef.add(f, "rate", "COUPONQ_RATE")
	addRedisFlag(cmd, &ef, &c.RedisURL)
	return cmd
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

func showBatch(ctx context.Context, e *env, r *tasks.Reader, c *statusConfig, q *quotaWatch) error {
	var st *tasks.BatchStatus
	var err error
	if c.Wait {
		var prog *progress
		st, err = r.Wait(ctx, c.Batch, c.Interval, func(s *tasks.BatchStatus) {
			if prog == nil {
				prog = newProgress(e.stderr, "batch "+s.ID, int64(s.Total))
				prog.every = 5 * time.Second
			}
			prog.total = int64(s.Total)
			v := view(s)
			suffix := fmt.Sprintf("(%d failed, %.1f/s", s.Failed, v.RatePerSec)
			if v.ETASec > 0 {
				suffix += fmt.Sprintf(", ETA %s", (time.Duration(v.ETASec) * time.Second).String())
			}
			prog.set(int64(s.Succeeded+s.Failed), suffix+")")
			if lines := q.lines(ctx, time.Now()); len(lines) > 0 {
				prog.note(strings.Join(lines, "\n"))
			}
		})
		if prog != nil {
			prog.finish()
		}
	} else {
		st, err = r.Batch(ctx, c.Batch)
	}
	if errors.Is(err, tasks.ErrNotFound) {
		return &exitError{code: exitFailure, err: fmt.Errorf("batch %s: not found (never enqueued, or expired)", c.Batch)}
	}
	if err != nil {
		return err
	}
	v := view(st)
	if st.Failed > 0 && c.Failed > 0 {
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
	if c.Wait && st.Failed > 0 {
		return &exitError{code: exitFailure}
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
	finished := st.Succeeded + st.Failed
	if v.ElapsedSec > 0 {
		v.RatePerSec = float64(finished) / v.ElapsedSec
	}
	if !v.Done && v.RatePerSec > 0 {
		v.ETASec = float64(st.Pending) / v.RatePerSec
	}
	return v
}

func printBatch(w io.Writer, v *batchView) error {
	state := "running"
	switch {
	case v.Done:
		state = "done"
	case !v.Sealed:
		state = "enqueuing"
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "batch\t%s\n", v.ID)
	fmt.Fprintf(tw, "state\t%s\n", state)
	fmt.Fprintf(tw, "total\t%d\n", v.Total)
	fmt.Fprintf(tw, "succeeded\t%d\n", v.Succeeded)
	fmt.Fprintf(tw, "failed\t%d\n", v.Failed)
	fmt.Fprintf(tw, "pending\t%d\n", v.Pending)
	fmt.Fprintf(tw, "duplicates\t%d\n", v.Duplicates)
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
