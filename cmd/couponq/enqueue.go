package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/couponq/couponq/tasks"
)

// enqueueMemoryLimit is couponq enqueue's soft memory limit for a change
// file of size bytes (see runEnqueue): 64 MiB and a third of the file, at least
// 96 MiB.
func enqueueMemoryLimit(size int64) int64 {
	return max(96<<20, 64<<20+size/3)
}

// enqueueGCPercent is couponq enqueue's GOGC under its memory limit.
const enqueueGCPercent = 400

// tuneEnqueueGC sets the GC for couponq enqueue of a change file of size
// bytes, unless the environment (getenv) sets GOMEMLIMIT or GOGC, and
// returns what puts the settings back.
//
// What enqueue keeps grows slowly with the file (a PayloadSet entry, then
// a task ID, per line: a third to a half of the file's size); its garbage,
// a line's decoding, does not. A soft limit above what is kept makes the
// GC collect before garbage doubles the heap (issue 14: 1 000 000 lines
// within 150 MiB), and scaling it with the file keeps a file of many
// millions of lines from running the GC without pause. Under that limit
// the GC need not also run at every doubling of a small heap: at GOGC's
// 100 it took a quarter of the command's CPU (bench/hot.txt).
func tuneEnqueueGC(getenv func(string) string, size int64) (restore func()) {
	if getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	limit := debug.SetMemoryLimit(enqueueMemoryLimit(size))
	if getenv("GOGC") != "" {
		return func() { debug.SetMemoryLimit(limit) }
	}
	percent := debug.SetGCPercent(enqueueGCPercent)
	return func() {
		debug.SetMemoryLimit(limit)
		debug.SetGCPercent(percent)
	}
}

// maxReportedLines caps the bad lines printed; the count is always given.
const maxReportedLines = 200

type enqueueConfig struct {
	File        string
	Format      string
	Batch       string
	Queue       string
	NotBefore   string // not_before of the lines that have none
	RedisURL    string
	Concurrency int
	ResultTTL   time.Duration
	// AllowEviction enqueues into a Redis whose maxmemory-policy evicts.
	AllowEviction bool
}

func newEnqueueCmd(e *env) *cobra.Command {
	var c enqueueConfig
	var ef envFlags
	cmd := &cobra.Command{
		Use:   "enqueue --file F [--batch ID] [--queue Q] [--not-before T]",
		Short: "Validate a change file, then enqueue it as one batch",
		Long: `Reads a change file — JSON Lines (.jsonl) or CSV (.csv, header row, display_info
as one JSON column); --file - reads standard input — and validates the whole file
first: if any line is invalid, nothing is enqueued, every bad line is reported
with its number and reason, and the exit status is 2.

Then it enqueues every change as a task of one batch, showing progress on a
terminal, and prints the batch ID alone on standard output:

  BATCH=$(couponq enqueue --file changes.jsonl)
  couponq status --batch "$BATCH" --wait

A line may hold back its change with not_before (RFC 3339, e.g.
2025-01-01T10:00:00+08:00): it is not applied before that time. --not-before
sets it for the lines that have none; it is part of each payload.

The batch is named on standard error as soon as it exists, so an interrupted run
can be completed with --batch. A change already enqueued with the same payload is
a duplicate (counted, skipped); with another payload it is a conflict (reported,
exit status 1). A duplicate of a task that failed or was canceled is not run
again: it counts in the batch's earlier_failed, and enqueue exits 1 naming the
couponq retry command that runs it again.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ef.apply(cmd.Flags(), e.getenv); err != nil {
				return err
			}
			return runEnqueue(cmd.Context(), e, &c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.File, "file", "", "change file (.jsonl or .csv), - for standard input (required)")
	f.StringVar(&c.Format, "format", "", "jsonl or csv (default: from the file name; jsonl for standard input)")
	f.StringVar(&c.Batch, "batch", "", "batch ID (default: a new time-sortable ULID); an existing batch gets the new tasks")
	f.StringVar(&c.NotBefore, "not-before", "", "RFC 3339 time before which no change is applied, for lines without not_before")
	f.StringVar(&c.Queue, "queue", tasks.DefaultQueue, "asynq queue to enqueue into")
	ef.add(f, "queue", "COUPONQ_QUEUE")
	addRedisFlag(cmd, &ef, &c.RedisURL)
	f.IntVar(&c.Concurrency, "concurrency", tasks.DefaultEnqueueConcurrency, "enqueues in flight at once")
	ef.add(f, "concurrency", "COUPONQ_ENQUEUE_CONCURRENCY")
	f.DurationVar(&c.ResultTTL, "result-ttl", tasks.DefaultResultTTL, "how long result and batch keys live")
	ef.add(f, "result-ttl", "COUPONQ_RESULT_TTL")
	f.BoolVar(&c.AllowEviction, "allow-eviction", false, allowEvictionUsage)
	ef.add(f, "allow-eviction", "COUPONQ_ALLOW_EVICTION")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func runEnqueue(ctx context.Context, e *env, c *enqueueConfig) error {
	format, err := enqueueFormat(c)
	if err != nil {
		return err
	}
	if c.Batch != "" {
		if err := tasks.ValidateBatchID(c.Batch); err != nil {
			return usageErrorf("--batch: %v", err)
		}
	}
	if _, err := tasks.ParseNotBefore(c.NotBefore); err != nil {
		return usageErrorf("--not-before %q: must be an RFC 3339 time with a zone, e.g. 2025-01-01T10:00:00+08:00", c.NotBefore)
	}
	rc, err := parseRedis(c.RedisURL)
	if err != nil {
		return err
	}
	path, cleanup, err := changeFile(c.File, e.stdin)
	if err != nil {
		return err
	}
	defer cleanup()
	if st, err := os.Stat(path); err == nil {
		defer tuneEnqueueGC(e.getenv, st.Size())()
	}

	// Pass 1: validate everything, holding only task IDs to find a file
	// that gives one task ID two different payloads.
	n, err := validateFile(path, format, c.NotBefore, e.stderr)
	if err != nil {
		return err
	}
	if n == 0 {
		return usageErrorf("%s holds no changes", c.File)
	}

	rdb := rc.NewClient()
	defer rdb.Close()
	// Reach Redis before naming a batch: a wrong password or an absent
	// server is one line, not an error per change.
	pingCtx, cancelPing := context.WithTimeout(ctx, 10*time.Second)
	err = rdb.Ping(pingCtx).Err()
	cancelPing()
	if err != nil {
		return fmt.Errorf("cannot use Redis at %s (nothing was enqueued): %w", rc, err)
	}
	// An evicting Redis would drop what is enqueued: refuse before writing.
	if err := checkRedisForEnqueue(ctx, e, rdb, c.AllowEviction); err != nil {
		return err
	}
	top, err := enqueueTopology(ctx, rc, rdb)
	if err != nil {
		return err
	}
	p, err := tasks.NewProducer(rdb, tasks.WithQueue(c.Queue), tasks.WithConcurrency(c.Concurrency),
		tasks.WithResultTTL(c.ResultTTL))
	if err != nil {
		return usageErrorf("%v", err)
	}
	defer p.Close()

	// Pass 2: stream the file into the batch.
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	r := tasks.NewChangeReader(fh, format)
	prog := newProgress(e.stderr, "enqueue", int64(n))
	start := time.Now()
	rep, err := p.EnqueueBatch(ctx, withNotBefore(r.All(), c.NotBefore), tasks.BatchOptions{
		ID: c.Batch,
		// Named at once: an interrupted run is completed with --batch.
		OnOpen: func(id string) {
			prog.note(fmt.Sprintf("batch %s: enqueuing %d changes", id, n))
			prog.note("redis: " + top.String())
		},
		OnProgress: func(bp tasks.BatchProgress) {
			suffix := ""
			if bp.Duplicates+bp.Conflicts+bp.Failed > 0 {
				suffix = fmt.Sprintf("(%d duplicates, %d conflicts, %d failed)", bp.Duplicates, bp.Conflicts, bp.Failed)
			}
			prog.set(int64(bp.Settled), suffix)
		},
	})
	prog.finish()
	if rep == nil {
		return err
	}
	elapsed := time.Since(start)
	resumed := ""
	if rep.Resumed > 0 {
		resumed = fmt.Sprintf("%d already in the batch, ", rep.Resumed)
	}
	earlier := ""
	if rep.EarlierFailed > 0 {
		earlier = fmt.Sprintf(" (%d of failed or canceled tasks)", rep.EarlierFailed)
	}
	fmt.Fprintf(e.stderr, "batch %s: %d enqueued, %s%d duplicates%s, %d conflicts, %d failed in %s (%.0f changes/s)\n",
		rep.BatchID, rep.Total, resumed, rep.Duplicates, earlier, len(rep.Conflicts), len(rep.Failed), elapsed.Round(time.Millisecond),
		float64(rep.Read)/max(elapsed.Seconds(), 1e-9))
	for i, ce := range append(append([]error{}, rep.Conflicts...), rep.Failed...) {
		if i == maxReportedLines {
			fmt.Fprintf(e.stderr, "… and %d more\n", len(rep.Conflicts)+len(rep.Failed)-i)
			break
		}
		fmt.Fprintf(e.stderr, "  %v\n", ce)
	}
	fmt.Fprintln(e.stdout, rep.BatchID)
	// Each change's error is listed above once; the exit error sums up.
	var sum []error
	// Counted against the file: a batch that stopped early never read some.
	if missing := n - rep.Total - rep.Resumed - rep.Duplicates - len(rep.Conflicts); missing > 0 {
		sum = append(sum, fmt.Errorf("%d changes not enqueued (%s); run the same command with --batch %s to complete the batch",
			missing, firstTasks(rep.Failed, 3), rep.BatchID))
	}
	if len(rep.Conflicts) > 0 {
		// Each is listed above: the summary does not repeat them.
		sum = append(sum, fmt.Errorf("%d conflict(s), listed above: an out_request_no never carries two bodies", len(rep.Conflicts)))
	}
	sum = append(sum, earlierFailed(rep)...)
	if err != nil {
		return errors.Join(append(sum, err)...)
	}
	if len(sum) > 0 {
		return &exitError{code: exitFailure, err: errors.Join(sum...)}
	}
	return nil
}

// earlierFailed says, per earlier batch, how many changes were duplicates of
// its failed or canceled tasks, and how to run those again.
func earlierFailed(rep *tasks.BatchReport) []error {
	batches := make([]string, 0, len(rep.EarlierFailedBatches))
	for b := range rep.EarlierFailedBatches {
		batches = append(batches, b)
	}
	slices.Sort(batches)
	var out []error
	for _, b := range batches {
		n := rep.EarlierFailedBatches[b]
		of, how := "batch "+b, "couponq retry --batch "+b
		if b == "" {
			of, how = "no batch", "couponq retry --task <task ID> for each"
		}
		out = append(out, fmt.Errorf("%d change(s) duplicate failed or canceled tasks (of %s) and were not run again (earlier_failed); to run them again: %s", n, of, how))
	}
	return out
}

// firstTasks names the first n changes of errs, by task ID when known.
func firstTasks(errs []error, n int) string {
	var names []string
	for _, err := range errs[:min(n, len(errs))] {
		var ce *tasks.ChangeError
		switch {
		case errors.As(err, &ce) && ce.TaskID != "":
			names = append(names, ce.TaskID)
		case errors.As(err, &ce):
			names = append(names, fmt.Sprintf("change #%d", ce.Index+1))
		}
	}
	if len(errs) > n {
		names = append(names, "…")
	}
	return strings.Join(names, ", ")
}

func enqueueFormat(c *enqueueConfig) (tasks.Format, error) {
	switch strings.ToLower(c.Format) {
	case "jsonl", "ndjson":
		return tasks.FormatJSONL, nil
	case "csv":
		return tasks.FormatCSV, nil
	case "":
	default:
		return "", usageErrorf("--format %q: use jsonl or csv", c.Format)
	}
	if c.File == "-" {
		return tasks.FormatJSONL, nil
	}
	f, err := tasks.FormatOf(c.File)
	if err != nil {
		return "", usageErrorf("--file %s: %v (or give --format)", c.File, err)
	}
	return f, nil
}

// changeFile returns a path to read twice: the file itself, or standard
// input spooled to a temporary file (streamed, never held in memory).
func changeFile(name string, stdin io.Reader) (string, func(), error) {
	if name != "-" {
		fh, err := os.Open(name)
		if err != nil {
			return "", nil, usageErrorf("--file: %v", err)
		}
		fh.Close()
		return name, func() {}, nil
	}
	tmp, err := os.CreateTemp("", "couponq-stdin-*")
	if err != nil {
		return "", nil, err
	}
	// The spool is unlinked at once, so that an enqueue killed (SIGKILL,
	// OOM) leaves no copy of the change data behind; it is read again
	// through /proc/self/fd, where each open starts at the beginning. Where
	// there is no /proc it keeps its name until cleanup.
	path, cleanup := tmp.Name(), func() { tmp.Close(); os.Remove(tmp.Name()) }
	if runtime.GOOS == "linux" {
		fdPath := "/proc/self/fd/" + strconv.Itoa(int(tmp.Fd()))
		if _, err := os.Stat(fdPath); err == nil && os.Remove(tmp.Name()) == nil {
			path, cleanup = fdPath, func() { tmp.Close() }
		}
	}
	if _, err := io.Copy(tmp, stdin); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("read standard input: %w", err)
	}
	return path, cleanup, nil
}

// withNotBefore gives the changes without not_before nb ("" = as they are).
func withNotBefore(changes iter.Seq2[tasks.Change, error], nb string) iter.Seq2[tasks.Change, error] {
	if nb == "" {
		return changes
	}
	return func(yield func(tasks.Change, error) bool) {
		for c, err := range changes {
			if err == nil && c.NotBefore == "" {
				c.NotBefore = nb
			}
			if !yield(c, err) {
				return
			}
		}
	}
}

// validateFile reads every line, reports every bad one to w and returns
// the number of valid changes, or a usage error when any line is bad.
// Lines without not_before get nb, as pass 2 gives them.
func validateFile(path string, format tasks.Format, nb string, w io.Writer) (int, error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	r := tasks.NewChangeReader(fh, format)
	// A few dozen bytes a task ID, nothing of the lines: see PayloadSet.
	var ids tasks.PayloadSet
	n, bad := 0, 0
	report := func(line int, msg string) {
		bad++
		if bad <= maxReportedLines {
			fmt.Fprintf(w, "line %d: %s\n", line, msg)
		}
	}
	for {
		ch, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		var le *tasks.LineError
		if errors.As(err, &le) {
			report(le.Line, oneLine(le.Err))
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", path, err)
		}
		line := r.Line()
		if ch.NotBefore == "" {
			ch.NotBefore = nb
		}
		if ch.Op == tasks.OpGet && ch.OutRequestNo == "" {
			n++
			continue
		}
		payload, err := ch.Payload()
		if err != nil {
			report(line, err.Error())
			continue
		}
		id := ch.TaskID()
		if first, conflict := ids.Add(id, payload, line); conflict {
			report(line, fmt.Sprintf("task %s already given another payload on line %d (an out_request_no never carries two bodies)", id, first))
			continue
		}
		n++
	}
	if bad > 0 {
		if bad > maxReportedLines {
			fmt.Fprintf(w, "… and %d more bad lines\n", bad-maxReportedLines)
		}
		return 0, usageErrorf("%d invalid line(s) in the change file; nothing was enqueued", bad)
	}
	return n, nil
}

// oneLine joins a multi-error (errors.Join) into one line.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
