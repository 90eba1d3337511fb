package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/couponq/couponq/tasks"
)

// couponq retry and couponq cancel: wiring of Producer.Retry and
// Producer.Cancel.

func newRetryCmd(e *env) *cobra.Command {
	var opts tasks.RetryOptions
	var redisURL string
	var ef envFlags
	cmd := &cobra.Command{
		Use:   "retry (--batch ID [--code CODE] | --task ID)",
		Short: "Run failed and canceled tasks again",
		Long: `Runs the failed and canceled tasks of a batch (only those whose error_code is
--code, when given), or one task, again: the same task ID, out_request_no and
body. Each goes back to queued, the batch's counters move with it, and its
result counts the runs (runs). A retried write goes behind every change
enqueued to its coupon so far. Then follow the batch as usual:

  couponq retry --batch "$BATCH" && couponq status --batch "$BATCH" --wait

An unknown batch or task, a batch with nothing to retry and a task that is
neither failed nor canceled are bad input: exit status 2.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ef.apply(cmd.Flags(), e.getenv); err != nil {
				return err
			}
			switch {
			case (opts.Batch == "") == (opts.Task == ""):
				return usageErrorf("give exactly one of --batch or --task")
			case opts.Code != "" && opts.Task != "":
				return usageErrorf("--code goes with --batch")
			}
			return withProducer(cmd.Context(), redisURL, func(p *tasks.Producer) error {
				rep, err := p.Retry(cmd.Context(), opts)
				if err != nil {
					return steerError(err)
				}
				what := "batch " + rep.Batch
				if opts.Task != "" {
					what = "task " + opts.Task
				}
				fmt.Fprintf(e.stdout, "%s: %d queued again (%d failed, %d canceled before)\n", what, len(rep.Retried), rep.Failed, rep.Canceled)
				if n := len(rep.NotEnqueued); n > 0 {
					return fmt.Errorf("%d tasks queued again but not confirmed in asynq (Redis did not answer); the workers enqueue them after their adoption grace period", n)
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&opts.Batch, "batch", "", "retry this batch's failed and canceled tasks")
	f.StringVar(&opts.Task, "task", "", "retry this one task: <op>:<brand_id>:<out_request_no>")
	f.StringVar(&opts.Code, "code", "", "only the tasks whose error_code is CODE (e.g. SIGN_ERROR, CANCELED)")
	addRedisFlag(cmd, &ef, &redisURL)
	return cmd
}

func newCancelCmd(e *env) *cobra.Command {
	var batch, redisURL string
	var ef envFlags
	cmd := &cobra.Command{
		Use:   "cancel --batch ID",
		Short: "Cancel a batch: its tasks not started never start",
		Long: `Cancels a batch: its tasks that have not started never start and end
canceled (counted in the batch); tasks a worker is calling WeChat Pay for
finish, and are not retried. The batch finishes right after. Canceled writes
no longer hold back later writes to their coupons. couponq retry --batch runs
the canceled tasks again.

An unknown batch and a batch already finished are bad input: exit status 2.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ef.apply(cmd.Flags(), e.getenv); err != nil {
				return err
			}
			if batch == "" {
				return usageErrorf("--batch is required")
			}
			return withProducer(cmd.Context(), redisURL, func(p *tasks.Producer) error {
				rep, err := p.Cancel(cmd.Context(), batch)
				if err != nil {
					return steerError(err)
				}
				fmt.Fprintf(e.stdout, "batch %s: %d canceled, %d in a call (they finish), %d already done\n",
					batch, len(rep.Canceled), rep.InCall, rep.Done)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&batch, "batch", "", "batch ID (required)")
	addRedisFlag(cmd, &ef, &redisURL)
	return cmd
}

// withProducer runs f with a producer over the Redis of redisURL.
func withProducer(ctx context.Context, redisURL string, f func(*tasks.Producer) error) error {
	rc, err := parseRedis(redisURL)
	if err != nil {
		return err
	}
	rdb := rc.NewClient()
	defer rdb.Close()
	p, err := tasks.NewProducer(rdb)
	if err != nil {
		return err
	}
	defer p.Close()
	return f(p)
}

// steerError gives the bad inputs of retry and cancel exit status 2; a
// Redis failure stays 1.
func steerError(err error) error {
	for _, bad := range []error{tasks.ErrNotFound, tasks.ErrNothingToRetry, tasks.ErrNotRetryable, tasks.ErrBatchFinished} {
		if errors.Is(err, bad) {
			return &exitError{code: exitUsage, err: err}
		}
	}
	return err
}
