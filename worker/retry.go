package worker

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hibiken/asynq"
)

// RetryPolicy computes the delay before a task's next attempt: exponential
// backoff min(Base·2^n, Cap) with full jitter (a uniform draw in [0, d)),
// unless the error is a come-back-later with its own wait (a 429's
// Retry-After, the limiter's next slot), which wins.
//
// It keeps no state between calls: asynq calls it concurrently from every
// worker goroutine and from its recoverer, so each call builds its own
// backoff.ExponentialBackOff.
type RetryPolicy struct {
	Base, Cap time.Duration
	// Rand returns a uniform int64 in [0, n) for n > 0. nil = math/rand/v2,
	// which is safe for concurrent use; tests inject a fixed source.
	Rand func(n int64) int64
	// Now is the clock of the backoff computation. nil = time.Now.
	Now func() time.Time
}

type clockFunc func() time.Time

func (f clockFunc) Now() time.Time { return f() }

// Backoff returns the un-jittered delay before retry n (n = retries so far,
// 0 on the first failure): min(Base·2^n, Cap).
func (p RetryPolicy) Backoff(n int) time.Duration {
	if p.Base <= 0 {
		return 0
	}
	capd := max(p.Cap, p.Base)
	now := p.Now
	if now == nil {
		now = time.Now
	}
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.Base,
		RandomizationFactor: 0,
		Multiplier:          2,
		MaxInterval:         capd,
		MaxElapsedTime:      0, // never Stop (-1): MaxRetry owns the end
		Stop:                backoff.Stop,
		Clock:               clockFunc(now),
	}
	b.Reset()
	d := b.NextBackOff()
	for i := 0; i < n && d < capd; i++ {
		d = b.NextBackOff()
	}
	return min(max(d, 0), capd)
}

// Delay returns how long to wait before retry n after err: the error's own
// hint when it has one, else a full-jitter draw below Backoff(n). It is
// never negative.
func (p RetryPolicy) Delay(n int, err error) time.Duration {
	if d, ok := retryAfter(err); ok && d > 0 {
		return d
	}
	d := p.Backoff(n)
	if d <= 0 {
		return 0
	}
	rnd := p.Rand
	if rnd == nil {
		rnd = rand.Int64N
	}
	return time.Duration(rnd(int64(d)))
}

// RetryDelayFunc is Delay in asynq's shape, for asynq.Config.RetryDelayFunc.
func (p RetryPolicy) RetryDelayFunc(n int, err error, _ *asynq.Task) time.Duration {
	return p.Delay(n, err)
}

// retryAfter returns the wait a come-back-later error asks for.
func retryAfter(err error) (time.Duration, bool) {
	var cb *comeBackError
	if errors.As(err, &cb) {
		return cb.after, true
	}
	return 0, false
}

// IsFailure is asynq.Config.IsFailure: a come-back-later (a 429, or no local
// rate-limit slot soon enough) is not a failure, so it does not use up the
// task's retries.
func IsFailure(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, asynq.SkipRetry) {
		return true
	}
	_, later := retryAfter(err)
	return !later
}
