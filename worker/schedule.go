package worker

import (
	"fmt"
	"time"

	"github.com/couponq/couponq/internal/results"
)

// notYet is the come-back-later of a change taken before its not_before
// (asynq's ProcessAt holds it until then, but a task re-enqueued from its
// result, or a worker whose clock is behind the producer's, may see it
// early); nil when it may run now.
func notYet(c *change, now time.Time) error {
	if c.notBefore.IsZero() || !now.Before(c.notBefore) {
		return nil
	}
	wait := c.notBefore.Sub(now)
	return &comeBackError{reason: reasonNotBefore, after: wait,
		err: fmt.Errorf("worker: not before %s (in %v)", c.notBefore.UTC().Format(results.TimeFormat), wait.Round(time.Millisecond))}
}
