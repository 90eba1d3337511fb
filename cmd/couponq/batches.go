package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/couponq/couponq/tasks"
)

// listFlushEvery is how many rows status --tasks writes between flushes:
// the listing streams, a reader of its output sees rows as they come.
const listFlushEvery = 1000

// listTasks writes every task of the batch (of --status, if given) to
// stdout in --format, as it reads them, and their count to stderr.
func listTasks(ctx context.Context, e *env, r *tasks.Reader, c *statusConfig) error {
	status := tasks.Status(c.Status)
	n := 0
	var err error
	switch c.Format {
	case "jsonl":
		var rep *tasks.ExportReport
		rep, err = r.ExportChanges(ctx, c.Batch, status, e.stdout)
		if rep != nil {
			n = rep.Written
			if rep.Missing > 0 {
				fmt.Fprintf(e.stderr, "%d task(s) left out: their result keeps no payload (written by an older couponq)\n", rep.Missing)
			}
		}
	case "csv":
		bw := bufio.NewWriterSize(e.stdout, 64<<10)
		cw := csv.NewWriter(bw)
		_ = cw.Write(csvResultHeader)
		err = r.ScanTasks(ctx, c.Batch, status, func(res *tasks.Result) error {
			n++
			if err := cw.Write(csvResultRow(res)); err != nil {
				return err
			}
			if n%listFlushEvery == 0 {
				cw.Flush()
				return bw.Flush()
			}
			return nil
		})
		cw.Flush()
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
	default: // table
		// Column widths are those of each flushed block of rows.
		tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "TASK\tSTATUS\tATTEMPTS\tHTTP\tCODE\tSTATE\tFINISHED\tMESSAGE")
		err = r.ScanTasks(ctx, c.Batch, status, func(res *tasks.Result) error {
			n++
			st := string(res.Status)
			if st == "" {
				st = "(expired)"
			}
			http := ""
			if res.HTTPStatus != 0 {
				http = strconv.Itoa(res.HTTPStatus)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", res.TaskID, st, res.Attempts, http, res.ErrorCode,
				res.CouponState, stamp(res.FinishedAt), res.ErrorMessage)
			if n%listFlushEvery == 0 {
				return tw.Flush()
			}
			return nil
		})
		if ferr := tw.Flush(); err == nil {
			err = ferr
		}
	}
	if err != nil {
		return batchError(c.Batch, err)
	}
	what := "tasks"
	if status != "" {
		what = string(status) + " tasks"
	}
	fmt.Fprintf(e.stderr, "batch %s: %d %s\n", c.Batch, n, what)
	return nil
}

// csvResultHeader names the columns of status --tasks --format csv: the
// fields of the result hash (README, "Results in Redis").
var csvResultHeader = []string{"task_id", "op", "brand_id", "product_coupon_id", "out_request_no", "batch", "status",
	"attempts", "http_status", "error_code", "error_message", "request_id", "coupon_state", "enqueued_at", "updated_at",
	"finished_at", "coupon"}

func csvResultRow(r *tasks.Result) []string {
	http := ""
	if r.HTTPStatus != 0 {
		http = strconv.Itoa(r.HTTPStatus)
	}
	return []string{r.TaskID, string(r.Op), r.BrandID, r.ProductCouponID, r.OutRequestNo, r.Batch, string(r.Status),
		strconv.Itoa(r.Attempts), http, r.ErrorCode, r.ErrorMessage, r.RequestID, r.CouponState, stamp(r.EnqueuedAt),
		stamp(r.UpdatedAt), stamp(r.FinishedAt), string(r.Coupon)}
}

type batchesConfig struct {
	RedisURL string
	JSON     bool
	Limit    int
}

// batchRow is one batch of couponq batches (also its --json form).
type batchRow struct {
	*tasks.BatchStatus
	State string `json:"state"`
	OK    bool   `json:"ok"`
}

func newBatchesCmd(e *env) *cobra.Command {
	var c batchesConfig
	var ef envFlags
	cmd := &cobra.Command{
		Use:   "batches [--json] [--limit N]",
		Short: "List recent batches, newest first, with their counts and state",
		Long: `Lists the batches enqueued into Redis, newest first: each batch's state
(enqueuing, running, done), its counters and whether everything succeeded so
far (ok: no task failed or canceled, no conflict, no duplicate of a failed or
canceled task). Batches are listed until their keys expire (--result-ttl of the
producer that enqueued them).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ef.apply(cmd.Flags(), e.getenv); err != nil {
				return err
			}
			if c.Limit < 0 {
				return usageErrorf("--limit %d: give a count, 0 for all", c.Limit)
			}
			rc, err := parseRedis(c.RedisURL)
			if err != nil {
				return err
			}
			rdb := rc.NewClient()
			defer rdb.Close()
			bs, err := tasks.NewReader(rdb).Batches(cmd.Context(), c.Limit)
			if err != nil {
				return err
			}
			rows := make([]batchRow, len(bs))
			for i, b := range bs {
				rows[i] = batchRow{BatchStatus: b, State: b.State(), OK: b.OK()}
			}
			if c.JSON {
				return writeJSON(e.stdout, rows)
			}
			return printBatches(e, rows)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&c.JSON, "json", false, "print JSON instead of a table")
	f.IntVar(&c.Limit, "limit", 20, "batches to list; 0 = all")
	addRedisFlag(cmd, &ef, &c.RedisURL)
	return cmd
}

func printBatches(e *env, rows []batchRow) error {
	if len(rows) == 0 {
		fmt.Fprintln(e.stderr, "no batches")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 1, ' ', 0)
	fmt.Fprintln(tw, "BATCH\tCREATED\tSTATE\tOK\tTOTAL\tSUCC\tFAIL\tCANC\tPEND\tDUP\tEFAIL\tCONFL")
	for _, r := range rows {
		ok := "yes"
		if !r.OK {
			ok = "no"
		}
		created := ""
		if !r.CreatedAt.IsZero() {
			created = r.CreatedAt.UTC().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", r.ID, created, r.State, ok, r.Total, r.Succeeded,
			r.Failed, r.Canceled, r.Pending, r.Duplicates, r.EarlierFailed, r.Conflicts)
	}
	return tw.Flush()
}
