package tasks

import (
	"bufio"
	"context"
	"fmt"
	"io"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/results"
)

// Listing and export: the batches of a Redis, and every task of a batch,
// read as streams so that a batch of 100 000 tasks is listed with a few
// hundred round trips and without holding its results.

// scanPage is how many task IDs one SSCAN asks for, and so how many
// results one pipelined read holds.
const scanPage = 1000

// Statuses lists every task status, in the order a task may pass them.
var Statuses = []Status{StatusQueued, StatusRunning, StatusRetrying, StatusSucceeded, StatusFailed, StatusCanceled}

// Batches returns up to limit batches (all when limit ≤ 0), newest first,
// from the index every producer adds its batches to (results.BatchesKey,
// trimmed after the result TTL). A listed batch whose hash expired is
// left out.
func (r *Reader) Batches(ctx context.Context, limit int) ([]*BatchStatus, error) {
	var out []*BatchStatus
	page := int64(max(limit, 100))
	for start := int64(0); ; start += page {
		ids, err := r.rdb.ZRevRange(ctx, results.BatchesKey, start, start+page-1).Result()
		if err != nil {
			return nil, fmt.Errorf("couponq: list batches: %w", err)
		}
		if len(ids) == 0 {
			return out, nil
		}
		cmds := make([]*redis.MapStringStringCmd, len(ids))
		if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HGetAll(ctx, results.BatchKey(id))
			}
			return nil
		}); err != nil {
			return nil, fmt.Errorf("couponq: list batches: %w", err)
		}
		for i, c := range cmds {
			if len(c.Val()) == 0 {
				continue // expired
			}
			b, err := parseBatch(ids[i], c.Val())
			if err != nil {
				return nil, err
			}
			out = append(out, b)
			if limit > 0 && len(out) == limit {
				return out, nil
			}
		}
		if int64(len(ids)) < page {
			return out, nil
		}
	}
}

// ScanTasks calls fn with every task of batch batchID whose status is
// status ("" = every task), in no particular order, as it reads them: it
// scans the batch's task set a page at a time (SSCAN) and reads each
// page's results in one pipeline. A task whose result expired comes with
// only its TaskID (and Status "") when status is "". fn's error stops the
// scan and is returned. The task IDs seen are kept to drop the repeats
// SSCAN may return, so memory grows with the batch's task IDs, not with
// its results.
//
// An unknown batch is ErrNotFound; a batch that enqueued nothing has no
// tasks.
func (r *Reader) ScanTasks(ctx context.Context, batchID string, status Status, fn func(*Result) error) error {
	n, err := r.rdb.Exists(ctx, results.BatchKey(batchID)).Result()
	if err != nil {
		return fmt.Errorf("couponq: read batch %s: %w", batchID, err)
	}
	if n == 0 {
		return fmt.Errorf("couponq: batch %s: %w", batchID, ErrNotFound)
	}
	seen := map[string]struct{}{}
	var cursor uint64
	for {
		ids, next, err := r.rdb.SScan(ctx, results.BatchTasksKey(batchID), cursor, "", scanPage).Result()
		if err != nil {
			return fmt.Errorf("couponq: scan batch %s: %w", batchID, err)
		}
		fresh := ids[:0]
		for _, id := range ids {
			if _, ok := seen[id]; !ok {
				seen[id] = struct{}{}
				fresh = append(fresh, id)
			}
		}
		if len(fresh) > 0 {
			cmds := make([]*redis.MapStringStringCmd, len(fresh))
			if _, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i, id := range fresh {
					cmds[i] = p.HGetAll(ctx, results.ResultKey(id))
				}
				return nil
			}); err != nil {
				return fmt.Errorf("couponq: read results of batch %s: %w", batchID, err)
			}
			for i, c := range cmds {
				m := c.Val()
				if status != "" && Status(m[results.FieldStatus]) != status {
					continue
				}
				res := &Result{TaskID: fresh[i]}
				if len(m) > 0 {
					if res, err = parseResult(m); err != nil {
						return err
					}
				}
				if err := fn(res); err != nil {
					return err
				}
			}
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

// ExportReport is what ExportChanges wrote.
type ExportReport struct {
	Written int // change lines written
	// Missing counts the tasks of the status asked for whose result keeps
	// no payload to write a line from (written by an older couponq).
	Missing int
}

// ExportChanges writes to w, as JSON Lines, the change line of every task
// of batch batchID whose status is status ("" = every task): the change
// exactly as it was enqueued (op, identifiers, request fields, not_before),
// in the change-file format couponq enqueue reads. Exported with
// StatusFailed, the lines can be fixed and enqueued again: unchanged, each
// is a duplicate of its failed task (counted in earlier_failed; run it
// again with couponq retry), and a fixed line needs a new out_request_no,
// since one out_request_no never carries two bodies.
func (r *Reader) ExportChanges(ctx context.Context, batchID string, status Status, w io.Writer) (*ExportReport, error) {
	bw := bufio.NewWriterSize(w, 64<<10)
	rep := &ExportReport{}
	err := r.ScanTasks(ctx, batchID, status, func(res *Result) error {
		c, err := res.Change()
		if err != nil {
			rep.Missing++
			return nil
		}
		line, err := c.Line()
		if err != nil {
			return err
		}
		if _, err := bw.Write(append(line, '\n')); err != nil {
			return err
		}
		rep.Written++
		// Flushed a page at a time, so a reader of w sees lines as they come.
		if rep.Written%scanPage == 0 {
			return bw.Flush()
		}
		return nil
	})
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return rep, err
}

// Change returns the change the task was enqueued from, decoded from the
// payload its result keeps. A result without a payload (expired, or
// written by an older couponq) is an error.
func (r *Result) Change() (Change, error) {
	if len(r.Payload) == 0 {
		return Change{}, fmt.Errorf("couponq: result %s keeps no payload", r.TaskID)
	}
	p, err := DecodePayload(r.Op.TaskType(), r.Payload)
	if err != nil {
		return Change{}, err
	}
	return p.Change(), nil
}

// Line encodes the change as one line of a JSONL change file (without the
// newline): op first, then the fields of its op, as couponq enqueue reads it.
func (c *Change) Line() ([]byte, error) { return encodePayload(c) }
