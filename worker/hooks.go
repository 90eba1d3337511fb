package worker

import (
	"context"
	"time"

	"github.com/couponq/couponq/tasks"
)

// rateLimiter is what the handlers need of the shared rate limiter: a
// *Limiter (nil = unlimited), or a fake in the package's tests. endpoint is
// the op: "update", "deactivate" or "get".
type rateLimiter interface {
	// Wait blocks until a call slot is free, at most maxWait. A slot further
	// away is a *RateLimitedError.
	Wait(ctx context.Context, endpoint string, maxWait time.Duration) (time.Duration, error)
	// Backoff reports that a 429 arrived on endpoint (d is its Retry-After);
	// the limiter slows every worker of the identity a little.
	Backoff(ctx context.Context, endpoint string, d time.Duration) error
}

// metricsSink is what the handlers report: a *Metrics (nil = none), or a
// fake in the package's tests.
type metricsSink interface {
	ObserveCall(op, outcome, code string, d time.Duration)
	ObserveRetry(op, reason string)
	ObserveLimiterWait(op string, d time.Duration)
	ObserveTerminal(op string, status tasks.Status)
}
