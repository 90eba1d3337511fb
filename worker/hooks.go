package worker

import (
	"context"
	"reflect"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/tasks"
)

// rateLimiter is what the handlers need of the shared rate limiter
// (*Limiter of ratelimit.go satisfies it). endpoint is the op: "update",
// "deactivate" or "get".
type rateLimiter interface {
	// Wait blocks until a call slot is free, at most maxWait. A slot further
	// away is an error with a RetryAfter() time.Duration method.
	Wait(ctx context.Context, endpoint string, maxWait time.Duration) (time.Duration, error)
	// Backoff reports that a 429 arrived on endpoint (d is its Retry-After);
	// the limiter slows every worker of the identity a little.
	Backoff(ctx context.Context, endpoint string, d time.Duration) error
}

// metricsSink is what the handlers report (*Metrics of metrics.go
// satisfies it).
type metricsSink interface {
	ObserveCall(op, outcome, code string, d time.Duration)
	ObserveRetry(op, reason string)
	ObserveLimiterWait(op string, d time.Duration)
	ObserveTerminal(op string, status tasks.Status)
}

// retryAfterer is implemented by errors that say when to try again without
// counting a failure: the limiter's *RateLimitedError and the worker's own
// rate-limit deferral.
type retryAfterer interface {
	error
	RetryAfter() time.Duration
}

// newDefaultLimiter builds the limiter New uses when Config.Limiter is nil
// and Config.Rate > 0: the Redis-shared sliding-window limiter.
var newDefaultLimiter = func(rdb redis.UniversalClient, identity string, rate int) rateLimiter {
	return NewLimiter(rdb, identity, rate)
}

type noLimiter struct{}

func (noLimiter) Wait(context.Context, string, time.Duration) (time.Duration, error) { return 0, nil }
func (noLimiter) Backoff(context.Context, string, time.Duration) error               { return nil }

type noMetrics struct{}

func (noMetrics) ObserveCall(string, string, string, time.Duration) {}
func (noMetrics) ObserveRetry(string, string)                       {}
func (noMetrics) ObserveLimiterWait(string, time.Duration)          {}
func (noMetrics) ObserveTerminal(string, tasks.Status)              {}

// isNil reports whether v is nil or a typed nil pointer in an interface, so
// a nil *Limiter or *Metrics in Config means "none".
func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}
