package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// DefaultBurst is the number of calls a Limiter lets through at once after an
// idle period, before spacing them 1/rate apart.
//
// It is 1 on purpose. Under a steady backlog the achieved rate is exactly the
// configured rate whatever the burst: GCRA books one slot every 1/rate seconds
// and the burst only decides how much unused quota an idle endpoint may spend
// at once afterwards. The limit we must not trip is modelled (and, as far as
// WeChat Pay documents it, implemented) as a token bucket of capacity rate
// refilled at rate per second. Against that bucket a GCRA of the same rate and
// burst b keeps rate−b tokens in reserve, so calls may reach the server up to
// (rate−b)/rate seconds later than their slot (network, signing, scheduling
// jitter, a slow Redis round trip) and a later call may catch up with them
// without a 429. Burst 1 maximises that margin (0.95 s at 20/s) and is also the
// safest shape should the real quota be a fixed or sliding one-second window:
// at most rate+1 calls can fall in any window. The quota it gives up is at
// most rate−1 calls after each idle spell, i.e. only when there was no demand.
const DefaultBurst = 1

// DefaultPause is how long Backoff pauses an endpoint when given no duration.
const DefaultPause = time.Second

// slack is the precision of the slot arithmetic (the GCRA script works in
// float seconds since 2017, exact to about 10 µs).
const slack = 100 * time.Microsecond

// slotUnits divides an interval so that maxWait is honoured to a thousandth
// of it (see reserve).
const slotUnits = 1000

// maxQueueSeconds caps how far ahead a Wait may book, whatever its maxWait.
const maxQueueSeconds = 3600

// Limiter spaces the calls to each WeChat Pay endpoint of one identity so that
// all worker processes together stay within rate calls per second. Its state
// lives in Redis (a GCRA bucket per endpoint, by go-redis/redis_rate, timed by
// the Redis clock), so any number of processes share one budget, and a 429 seen
// by one of them (Backoff) pauses the endpoint for all.
//
// A nil *Limiter is valid and unlimited.
type Limiter struct {
	rdb      redis.UniversalClient
	gcra     *redis_rate.Limiter
	identity string
	rate     int
	burst    int
	pause    time.Duration
	sleep    func(ctx context.Context, d time.Duration) error
}

// LimiterOption configures a Limiter.
type LimiterOption func(*Limiter)

// WithBurst sets the GCRA burst (default DefaultBurst); values below 1 mean 1.
func WithBurst(n int) LimiterOption {
	return func(l *Limiter) { l.burst = max(n, 1) }
}

// WithDefaultPause sets how long Backoff pauses an endpoint when called with
// d == 0 (default DefaultPause).
func WithDefaultPause(d time.Duration) LimiterOption {
	return func(l *Limiter) {
		if d > 0 {
			l.pause = d
		}
	}
}

// WithSleep replaces the function Wait blocks with. It must return nil after
// d, or ctx's error as soon as ctx is done. Tests inject one that advances a
// fake clock; the default selects on a timer and ctx.Done().
func WithSleep(sleep func(ctx context.Context, d time.Duration) error) LimiterOption {
	return func(l *Limiter) {
		if sleep != nil {
			l.sleep = sleep
		}
	}
}

// NewLimiter returns a limiter of rate calls per second for each endpoint of
// identity (the mchid, or the brand_id in brand mode), shared through rdb by
// every process using the same identity. A rate of 0 or less returns nil,
// which is unlimited. It panics if rate > 0 and rdb is nil.
func NewLimiter(rdb redis.UniversalClient, identity string, rate int, opts ...LimiterOption) *Limiter {
	if rate <= 0 {
		return nil
	}
	if rdb == nil {
		panic("worker.NewLimiter: nil Redis client")
	}
	l := &Limiter{
		rdb:      rdb,
		gcra:     redis_rate.NewLimiter(rdb),
		identity: identity,
		rate:     rate,
		burst:    DefaultBurst,
		pause:    DefaultPause,
		sleep:    sleepCtx,
	}
	for _, opt := range opts {
		opt(l)
	}
	return l
}

// RateLimitedError reports that no call slot for Endpoint was free within the
// time the caller was willing to wait. Nothing was reserved; the caller should
// retry after RetryIn (the worker hands the task back to asynq without
// counting it as a failure).
type RateLimitedError struct {
	Endpoint string        // the op: "update", "deactivate" or "get"
	RetryIn  time.Duration // when a Wait with the same maxWait can expect to succeed
}

// Error implements error.
func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("worker: rate limit of %s reached: retry in %s", e.Endpoint, e.RetryIn)
}

// RetryAfter returns RetryIn; the worker core detects rate limiting through
// this method.
func (e *RateLimitedError) RetryAfter() time.Duration { return e.RetryIn }

// Wait blocks until the caller may make one call to endpoint, and reports how
// long it waited. The endpoint is the op ("update", "deactivate", "get").
//
// Wait first honours a pause set by Backoff, then books the next free GCRA
// slot — but only if that slot is at most maxWait away; otherwise it books
// nothing and returns a *RateLimitedError. A slot is booked only by a caller
// that then waits for it, so refused callers never eat the quota. If ctx ends
// while waiting, Wait returns ctx's error and the booked slot is lost. If a
// Backoff pauses the endpoint while Wait sleeps, the slot is given up and Wait
// goes on waiting for the pause within what is left of maxWait.
func (l *Limiter) Wait(ctx context.Context, endpoint string, maxWait time.Duration) (waited time.Duration, err error) {
	if l == nil || l.rate <= 0 {
		return 0, nil
	}
	maxWait = max(maxWait, 0)
	pauseKey := l.pauseKey(endpoint)
	pause, err := l.rdb.PTTL(ctx, pauseKey).Result()
	for {
		if err != nil {
			return waited, fmt.Errorf("worker: rate limiter %s: %w", endpoint, err)
		}
		if pause > 0 {
			if pause > maxWait-waited {
				return waited, &RateLimitedError{Endpoint: endpoint, RetryIn: pause}
			}
			if err := l.sleep(ctx, pause); err != nil {
				return waited, fmt.Errorf("worker: rate limiter %s: paused: %w", endpoint, err)
			}
			waited += pause
			pause, err = l.rdb.PTTL(ctx, pauseKey).Result()
			continue
		}

		var slot, retryIn time.Duration
		slot, retryIn, err = l.reserve(ctx, endpoint, maxWait-waited)
		if err != nil {
			return waited, fmt.Errorf("worker: rate limiter %s: %w", endpoint, err)
		}
		if retryIn > 0 {
			return waited, &RateLimitedError{Endpoint: endpoint, RetryIn: retryIn}
		}
		if slot == 0 {
			return waited, nil
		}
		if err := l.sleep(ctx, slot); err != nil {
			return waited, fmt.Errorf("worker: rate limiter %s: %w", endpoint, err)
		}
		waited += slot
		// A 429 may have paused every worker while this one slept. The
		// check is best effort: the slot was ours, so a Redis error here
		// does not cost it.
		pause, err = l.rdb.PTTL(ctx, pauseKey).Result()
		if err != nil || pause <= 0 {
			return waited, nil
		}
	}
}

// reserve books the next slot of endpoint if it is at most budget away and
// returns how far away it is; otherwise it books nothing and returns when a
// call with the same budget may succeed.
//
// It relies on a property of GCRA as redis_rate implements it: the stored
// state is only the theoretical arrival time (TAT), while rate, burst and
// cost are arguments of each call. A call of cost c at rate r·c costs one
// interval T = 1/r like any other, and with burst (b+k)·c it is admitted
// exactly when the slot it books (new TAT − b·T) is at most k·T/c away, and
// refused without writing otherwise. With c = slotUnits, k expresses budget
// to a thousandth of an interval. ResetAfter of an admitted call is
// new TAT − now, from which the slot's distance follows. Callers with
// different budgets therefore share one bucket consistently.
func (l *Limiter) reserve(ctx context.Context, endpoint string, budget time.Duration) (slot, retryIn time.Duration, err error) {
	ahead := min(int64(budget.Seconds()*float64(l.rate)*slotUnits), int64(l.rate)*slotUnits*maxQueueSeconds)
	limit := redis_rate.Limit{
		Rate:   l.rate * slotUnits,
		Period: time.Second,
		Burst:  l.burst*slotUnits + int(ahead),
	}
	res, err := l.gcra.AllowN(ctx, l.bucketKey(endpoint), limit, slotUnits)
	if err != nil {
		return 0, 0, err
	}
	if res.Allowed == 0 {
		return 0, max(res.RetryAfter.Round(time.Millisecond), time.Millisecond), nil
	}
	// Round the float noise away: an immediate slot is 0, the others whole
	// intervals.
	interval := time.Second / time.Duration(l.rate)
	slot = (res.ResetAfter - time.Duration(l.burst)*interval).Round(slack)
	return max(slot, 0), 0, nil
}

// Backoff pauses endpoint for d (DefaultPause, or WithDefaultPause, when d is
// 0) for every process sharing the limiter: call it when WeChat Pay answered
// 429 anyway, with the Retry-After it gave if any. A pause already running
// longer is kept. When the pause ends, calls resume at the full rate. Backoff
// on an unlimited Limiter does nothing.
func (l *Limiter) Backoff(ctx context.Context, endpoint string, d time.Duration) error {
	if l == nil || l.rate <= 0 {
		return nil
	}
	if d <= 0 {
		d = l.pause
	}
	ms := max(d.Milliseconds(), 1)
	if err := extendPause.Run(ctx, l.rdb, []string{l.pauseKey(endpoint)}, ms).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("worker: rate limiter %s: backoff: %w", endpoint, err)
	}
	return nil
}

// extendPause sets the pause key to expire in ARGV[1] ms unless it already
// lives longer.
var extendPause = redis.NewScript(`
local ttl = redis.call("PTTL", KEYS[1])
if ttl < tonumber(ARGV[1]) then
  redis.call("SET", KEYS[1], "1", "PX", ARGV[1])
  return 1
end
return 0
`)

// bucketKey names the GCRA bucket; redis_rate stores it under "rate:" + key.
func (l *Limiter) bucketKey(endpoint string) string {
	return "couponq:rate:" + l.identity + ":" + endpoint
}

func (l *Limiter) pauseKey(endpoint string) string {
	return l.bucketKey(endpoint) + ":pause"
}

// sleepCtx waits for d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
