package worker

import (
	"errors"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/wechatpay"
)

// RetryPolicy computes the delay before a task's next attempt: exponential
// backoff min(Base·2^n, Cap) with full jitter (a uniform draw in [0, d)),
// unless the error names its own wait (a 429's Retry-After, a rate-limit
// deferral), which wins.
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

// retryAfter returns the wait an error asks for: a RetryAfter() method in
// its chain, or a 429's Retry-After.
func retryAfter(err error) (time.Duration, bool) {
	if err == nil {
		return 0, false
	}
	var ra retryAfterer
	if errors.As(err, &ra) {
		return ra.RetryAfter(), true
	}
	return wechatpay.IsRateLimited(err)
}

// IsFailure is asynq.Config.IsFailure: a rate-limit deferral (local limiter
// or a 429) is not a failure, so it does not use up the task's retries.
func IsFailure(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, asynq.SkipRetry) {
		return true
	}
	_, limited := retryAfter(err)
	return !limited
}
