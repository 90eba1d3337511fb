package tasks

import (
	"strings"

	"github.com/couponq/couponq/internal/results"
)

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
type Status = results.Status

// Task statuses. Succeeded, failed and canceled are terminal: a task
// reaches one of them exactly once per run (Producer.Retry starts another).
const (
	StatusQueued    = results.StatusQueued
	StatusRunning   = results.StatusRunning
	StatusRetrying  = results.StatusRetrying
	StatusSucceeded = results.StatusSucceeded
	StatusFailed    = results.StatusFailed
	StatusCanceled  = results.StatusCanceled
)

// DefaultResultTTL is how long result and batch keys live after their last
// write unless WithResultTTL says otherwise.
const DefaultResultTTL = results.DefaultResultTTL
