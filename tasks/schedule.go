package tasks

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/couponq/couponq/wechatpay"
)

// Scheduling: a change's not_before (RFC 3339) holds it back until that
// time. The producer enqueues its task with asynq's ProcessAt, so it waits
// in asynq's scheduled set; the worker checks it again as it takes the task
// (a task re-enqueued from its result, or run by a worker whose clock is
// ahead, still waits) and hands it back until then without using a retry.

// ParseNotBefore parses a not_before value: RFC 3339, with a time zone
// ("2025-01-01T10:00:00+08:00", "2025-01-01T02:00:00Z"). "" is the zero
// time: not held back.
func ParseNotBefore(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, &wechatpay.ValidationError{Field: "not_before",
			Reason: fmt.Sprintf("must be an RFC 3339 time with a zone, e.g. 2025-01-01T10:00:00+08:00, got %q", s)}
	}
	return t, nil
}

func validateNotBefore(s string) error {
	_, err := ParseNotBefore(s)
	return err
}

// NotBeforeTime is the change's not_before as a time; zero when it has
// none (or an invalid one, which Validate reports).
func (c *Change) NotBeforeTime() time.Time {
	t, _ := ParseNotBefore(c.NotBefore)
	return t
}

// payloadNotBefore reads the not_before of a task payload; zero when it
// has none or does not decode.
func payloadNotBefore(payload []byte) time.Time {
	var p struct {
		NotBefore string `json:"not_before"`
	}
	if json.Unmarshal(payload, &p) != nil {
		return time.Time{}
	}
	t, _ := ParseNotBefore(p.NotBefore)
	return t
}
