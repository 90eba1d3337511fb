// Package tasks is what producers import to enqueue coupon changes and to
// poll their outcomes: task type names, payloads and their validation, the
// change file reader, the Producer and the result Reader. Results and
// batches live in Redis hashes whose names and fields the README describes
// ("Results in Redis"); the producer and the worker write them through one
// internal store.
//
// # Producing
//
// A Change is one line of a change file (JSON Lines or CSV, read by
// ChangeReader). Producer.Enqueue enqueues one; Producer.EnqueueBatch
// streams any number of them as one batch with bounded concurrency. Each
// accepted change gets its result hash (status queued) before its asynq
// task exists, so it can be polled at once.
//
// # Task IDs, duplicates and conflicts
//
// A change's asynq task ID is "<op>:<brand_id>:<out_request_no>". A change
// whose task ID is already taken, by a result hash or by a task in asynq,
// is a duplicate when its payload is byte-identical (counted and skipped)
// and a conflict otherwise (a *ConflictError; nothing is written). The
// result hash keeps the payload's SHA-256, so detection holds after asynq
// dropped a completed task.
//
// # Per-coupon order
//
// Writes to one coupon take effect in the order they were enqueued, within
// a batch and across batches: the producer gives each change its place in
// its coupon's order before accepting it (in input order), and workers
// start a write only once the writes placed before it are terminal, a get
// once the writes before it are. Waker lets a finished change wake the
// next one at once.
//
// # Steering a batch
//
// Producer.Retry runs a batch's failed and canceled tasks (or one task)
// again with the same task ID, out_request_no and payload: each goes back
// to queued, its runs counted, the batch's counters moving with it.
// Producer.Cancel cancels a batch: tasks not started never start and end
// canceled; tasks in a call finish. Bad input is ErrNotFound,
// ErrNothingToRetry, ErrNotRetryable or ErrBatchFinished.
//
// # Polling
//
// Reader.Result reads one task's result, Reader.Batch a batch's counters,
// Reader.FailedTasks the failed tasks of a batch, and Reader.Wait polls a
// batch until it is done. Reader.Batches lists the recent batches, newest
// first; Reader.ScanTasks streams every task of a batch (of one status, if
// asked) and Reader.ExportChanges writes their change lines, to fix and
// enqueue again. BatchStatus.OK says whether anything went wrong: a failed
// or canceled task, a conflict, or a duplicate of a failed or canceled
// task (earlier_failed).
//
// # All or nothing
//
// BatchOptions.AllOrNothing validates every change before enqueuing any,
// as couponq enqueue does: one invalid change and nothing is enqueued
// (ErrInvalidBatch). Without it, valid changes are enqueued and the
// invalid ones are listed in BatchReport.Failed.
//
// # Errors and retries
//
// Validation errors are *wechatpay.ValidationError values naming the field;
// a bad change file line is a *LineError; a bad task payload seen by the
// worker is a *PayloadError. Every Redis step of the producer is
// idempotent, because go-redis re-sends a command after a read timeout:
// what Redis did not confirm is tried again at the end of a batch, and
// every task is verified in asynq before the batch is sealed; a change
// still not confirmed is reported in BatchReport.Failed (ErrNotEnqueued)
// and stays accepted for a rerun of the batch, or the workers' Adopter, to
// enqueue. A change is undone (its result removed) only when asynq holds
// its task ID for another task. Retries of the API calls are the worker's
// business: every task is enqueued with an asynq MaxRetry so large (1000)
// that asynq never decides a failure, and the worker fails a task after
// its own --max-retry.
package tasks
