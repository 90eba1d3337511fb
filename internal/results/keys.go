// Package results owns the Redis schema of couponq's task results and
// batches (key names, field names, timestamps) and the Store that writes
// them. The producer (package tasks) and the worker both write through the
// Store; the key and field names are a public contract documented in the
// README ("Results in Redis") and must not change.
package results

import (
	"strings"
	"time"
)

// DefaultResultTTL is how long result and batch keys live after their last
// write (couponq's --result-ttl default).
const DefaultResultTTL = 168 * time.Hour

// MaxRetry is the asynq MaxRetry every couponq task is enqueued with. It is
// so large that asynq never decides a task failed: the worker alone does,
// from its own --max-retry, and archives or finishes the task itself.
const MaxRetry = 1000

// Status is a task's state in its result hash.
type Status string

// Task statuses. Succeeded, failed and canceled are terminal: a task
// reaches one of them exactly once per run (couponq retry starts another
// run of a failed or canceled task).
const (
	StatusQueued    Status = "queued"
	StatusRunning   Status = "running"
	StatusRetrying  Status = "retrying"
	StatusSucceeded Status = "succeeded"
	StatusFailed    Status = "failed"
	StatusCanceled  Status = "canceled"
)

// Terminal reports whether s is succeeded, failed or canceled.
func (s Status) Terminal() bool {
	return s == StatusSucceeded || s == StatusFailed || s == StatusCanceled
}

// CodeCanceled is the error_code of a task canceled with its batch
// (couponq's own code, like worker's ARCHIVED).
const CodeCanceled = "CANCELED"

// The Redis key schema: couponq:result:<task_id> (a hash per task),
// couponq:batch:<batch_id> (a hash per batch) and couponq:batch:<batch_id>:tasks
// (the set of a batch's task IDs). Nothing else spells a key.
const (
	keyPrefix       = "couponq:"
	resultKeyPrefix = keyPrefix + "result:"
	batchKeyPrefix  = keyPrefix + "batch:"
)

// ResultKey is the hash holding one task's result.
func ResultKey(taskID string) string { return resultKeyPrefix + taskID }

// BatchKey is the hash holding one batch's counters.
func BatchKey(batchID string) string { return batchKeyPrefix + batchID }

// BatchTasksKey is the set of a batch's task IDs.
func BatchTasksKey(batchID string) string { return batchKeyPrefix + batchID + ":tasks" }

// couponq's own keys in the slot of a SPEC key. On Redis Cluster a key
// whose hash tag is another key's full name hashes to that key's slot:
// "{couponq:batch:B}:counted" lands where "couponq:batch:B" does, so one
// script may touch both. This holds only while the name holds no brace
// (a "{…}" inside it would be its own hash tag): batch IDs are limited to
// [0-9A-Za-z_.-] (tasks.ValidateBatchID), and hashTagSafe guards the
// scripts against a batch field written by other means.

// batchCountedKey is a hash in batch b's slot: task ID → "<runs>:<status>",
// the state of each task that b's counters include (see applyBatchScript).
func batchCountedKey(b string) string { return "{" + BatchKey(b) + "}:counted" }

// batchCallsKey is a set in batch b's slot of the tokens of the calls whose
// event counters (duplicates, earlier_failed, conflicts) b includes, so a
// re-sent call counts nothing twice.
func batchCallsKey(b string) string { return "{" + BatchKey(b) + "}:calls" }

// batchScriptKeys are the keys every batch-side script gets: the batch hash
// and couponq's own keys in its slot.
func batchScriptKeys(b string) []string {
	return []string{BatchKey(b), batchCountedKey(b), batchCallsKey(b)}
}

// hashTagSafe reports whether name may be the hash tag of a key: no brace.
func hashTagSafe(name string) bool { return !strings.ContainsAny(name, "{}") }

// couponq's own keys beyond the SPEC's, for the hand-off from producer to
// asynq (see Handoff). Each is one key of its own: on Redis Cluster they
// live in other slots than the result and batch keys, so no script below
// touches them together with those.
const (
	unconfirmedKeyPrefix = keyPrefix + "unconfirmed:"
	// OpenBatchesKey is a sorted set of the batches a producer is still
	// enqueuing into, scored by when that producer was last seen (Unix
	// milliseconds). A batch whose producer stopped being seen is sealed by
	// the workers' adoption sweep.
	OpenBatchesKey = keyPrefix + "open-batches"
	// BatchesKey is a sorted set of every batch ID, scored by when the
	// batch was created (Unix milliseconds), for listing recent batches.
	// Entries older than the result TTL are trimmed as batches are opened.
	BatchesKey = keyPrefix + "batches"
	// AdoptLockKey is the lock that lets one worker at a time run the
	// adoption sweep.
	AdoptLockKey = keyPrefix + "adopt-lock"
	// RepairPassKey is held (it expires) between two passes of the
	// adoption sweep's look for stuck batches.
	RepairPassKey = keyPrefix + "repair-pass"
	// RepairSeenKey is a hash of the unfinished batches the last such pass
	// saw: batch ID → their succeeded+failed+canceled then. A batch that
	// made no progress from one pass to the next is repaired.
	RepairSeenKey = keyPrefix + "repair-seen"
)

// UnconfirmedKey is the sorted set of the task IDs of queue whose result a
// producer is writing or wrote but whose asynq task it has not confirmed
// yet, scored by when the producer registered them (Unix milliseconds).
// The workers' adoption sweep enqueues those it finds queued without a
// task once they are older than its grace period.
func UnconfirmedKey(queue string) string { return unconfirmedKeyPrefix + queue }

// Fields of a result hash. All values are strings.
const (
	FieldTaskID          = "task_id"
	FieldOp              = "op"
	FieldBrandID         = "brand_id"
	FieldProductCouponID = "product_coupon_id"
	FieldOutRequestNo    = "out_request_no"
	FieldBatch           = "batch"
	FieldStatus          = "status"
	FieldAttempts        = "attempts"
	FieldHTTPStatus      = "http_status"
	FieldErrorCode       = "error_code"
	FieldErrorMessage    = "error_message"
	FieldRequestID       = "request_id"
	FieldCoupon          = "coupon"
	FieldCouponState     = "coupon_state"
	FieldEnqueuedAt      = "enqueued_at"
	FieldUpdatedAt       = "updated_at"
	FieldFinishedAt      = "finished_at"
	// FieldPayloadSHA256 is couponq's own addition: the hex SHA-256 of the
	// task payload, so a re-enqueue tells a duplicate from a conflict even
	// after asynq dropped the task.
	FieldPayloadSHA256 = "payload_sha256"
	// FieldPayload, FieldQueue and FieldTimeout are couponq's own too: the
	// task payload, its asynq queue and its timeout (seconds), so that a
	// change accepted but never handed to asynq (its producer was killed
	// in between) can be enqueued by a rerun or by the workers.
	FieldPayload = "payload"
	FieldQueue   = "queue"
	FieldTimeout = "timeout"
	// FieldRun names the accept item that wrote the result:
	// "<run>/<seq>/<index>", the producer run (a ULID per EnqueueBatch or
	// Enqueue call), its accept call and the item's place in it. A
	// re-sent accept of that same item is recognised as its own, not taken
	// for a duplicate; another line of the same run is a duplicate.
	FieldRun = "run"
	// FieldRuns counts the runs of the task: absent (or 1) for a task
	// never retried, incremented by each couponq retry.
	FieldRuns = "runs"
)

// Fields of a batch hash. All values are strings.
const (
	BatchFieldTotal      = "total"
	BatchFieldDuplicates = "duplicates"
	BatchFieldSucceeded  = "succeeded"
	BatchFieldFailed     = "failed"
	BatchFieldCanceled   = "canceled"
	BatchFieldCreatedAt  = "created_at"
	BatchFieldFinishedAt = "finished_at"
	BatchFieldConflicts  = "conflicts"
	// BatchFieldEarlierFailed counts the duplicates whose earlier task is
	// failed or canceled (of BatchFieldDuplicates).
	BatchFieldEarlierFailed = "earlier_failed"
	// BatchFieldSealed is couponq's own addition: "0" while a producer is
	// still enqueuing into the batch, "1" after. A batch finishes only once
	// sealed, so early tasks finishing cannot mark a half-enqueued batch done.
	BatchFieldSealed = "sealed"
	// BatchFieldCanceledAt is couponq's own too: set by couponq cancel;
	// while it is set, workers start no task of the batch (they end
	// canceled). couponq retry of the batch clears it.
	BatchFieldCanceledAt = "canceled_at"
)

// TimeFormat is the format of every timestamp in results: RFC 3339, UTC,
// milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// Fields of a result hash that an update writes.
const (
	// FieldRequest is, for a write, the exact JSON body sent, fixed before
	// the first attempt: every retry and re-delivery sends these bytes.
	FieldRequest = "request"
	// FieldUnchanged is "1" when an update was not sent because the coupon
	// already matched it.
	FieldUnchanged = "unchanged"
)
