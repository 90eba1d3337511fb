package tasks

import "strings"

// Op is a change's operation, the suffix of its task type.
type Op string

// The three operations.
const (
	OpUpdate     Op = "update"
	OpDeactivate Op = "deactivate"
	OpGet        Op = "get"
)

// Task type names, as asynq and asynqmon show them.
const (
	TypeUpdate     = "coupon:update"
	TypeDeactivate = "coupon:deactivate"
	TypeGet        = "coupon:get"
)

// TaskType returns the asynq task type of op, "" for an unknown op.
func (op Op) TaskType() string {
	switch op {
	case OpUpdate:
		return TypeUpdate
	case OpDeactivate:
		return TypeDeactivate
	case OpGet:
		return TypeGet
	}
	return ""
}

// OpOfType returns the op of an asynq task type, "" for a foreign type.
func OpOfType(taskType string) Op {
	op := Op(strings.TrimPrefix(taskType, "coupon:"))
	if op.TaskType() != taskType {
		return ""
	}
	return op
}

// TaskID is the asynq task ID of a change: "<op>:<brand_id>:<out_request_no>".
func TaskID(op Op, brandID, outRequestNo string) string {
	return string(op) + ":" + brandID + ":" + outRequestNo
}

// Status is a task's state in its result hash.
type Status string

// Task statuses. Succeeded and failed are terminal: a task reaches one of
// them exactly once.
const (
	StatusQueued    Status = "queued"
	StatusRunning   Status = "running"
	StatusRetrying  Status = "retrying"
	StatusSucceeded Status = "succeeded"
	StatusFailed    Status = "failed"
)

// Terminal reports whether s is succeeded or failed.
func (s Status) Terminal() bool { return s == StatusSucceeded || s == StatusFailed }

// The Redis key schema (SPEC "Results in Redis"). Nothing else spells a key.
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
)

// Fields of a batch hash. All values are strings.
const (
	BatchFieldTotal      = "total"
	BatchFieldDuplicates = "duplicates"
	BatchFieldSucceeded  = "succeeded"
	BatchFieldFailed     = "failed"
	BatchFieldCreatedAt  = "created_at"
	BatchFieldFinishedAt = "finished_at"
	// BatchFieldSealed is couponq's own addition: "0" while a producer is
	// still enqueuing into the batch, "1" after. A batch finishes only once
	// sealed, so early tasks finishing cannot mark a half-enqueued batch done.
	BatchFieldSealed = "sealed"
)

// TimeFormat is the format of every timestamp in results: RFC 3339, UTC,
// milliseconds.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"
