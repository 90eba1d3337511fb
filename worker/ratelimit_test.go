package worker

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/couponq/couponq/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// limiterBundle is a miniredis whose clock (TIME, read by the GCRA script)
// and TTLs only move when the test says so.
type limiterBundle struct {
	mr  *miniredis.Miniredis
	rdb *redis.Client

	mu    sync.Mutex
	now   time.Time
	slept []time.Duration
}

func setupLimiter(t *testing.T) *limiterBundle {
	t.Helper()
	mr := miniredis.RunT(t)
	b := &limiterBundle{mr: mr, now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
	mr.SetTime(b.now)
	b.rdb = redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = b.rdb.Close() })
	return b
}

// advance moves the Redis clock and its TTLs forward by d.
func (b *limiterBundle) advance(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.now = b.now.Add(d)
	b.mr.SetTime(b.now)
	b.mr.FastForward(d)
}

// sleepAdvancing is a Limiter sleep that advances the fake clock.
func (b *limiterBundle) sleepAdvancing(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.advance(d)
	b.mu.Lock()
	b.slept = append(b.slept, d)
	b.mu.Unlock()
	return nil
}

// sleepFrozen is a Limiter sleep that only records d: the caller moves time.
func (b *limiterBundle) sleepFrozen(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	b.slept = append(b.slept, d)
	b.mu.Unlock()
	return nil
}

func (b *limiterBundle) elapsed(since time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.now.Sub(since)
}

func asRateLimited(t *testing.T, err error) *RateLimitedError {
	t.Helper()
	var rl *RateLimitedError
	if !errors.As(err, &rl) {
		t.Fatalf("err = %v, want *RateLimitedError", err)
	}
	var ra interface{ RetryAfter() time.Duration }
	if !errors.As(err, &ra) || ra.RetryAfter() != rl.RetryIn {
		t.Fatalf("RetryAfter() does not report RetryIn %v", rl.RetryIn)
	}
	return rl
}

func TestLimiterRateOverSimulatedSecond(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	l := NewLimiter(b.rdb, "1900000001", 20, WithSleep(b.sleepAdvancing))
	ctx := t.Context()
	start := b.now

	calls := 0
	for b.elapsed(start) < time.Second {
		if _, err := l.Wait(ctx, "update", time.Second); err != nil {
			t.Fatal(err)
		}
		if b.elapsed(start) < time.Second {
			calls++
		}
	}
	if calls != 20 {
		t.Errorf("calls in the first simulated second = %d, want 20", calls)
	}
	for i, d := range b.slept {
		if d != 50*time.Millisecond {
			t.Fatalf("sleep %d = %v, want 50ms spacing", i, d)
		}
	}
}

func TestLimiterBooksSlotsAheadWithinMaxWait(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	l := NewLimiter(b.rdb, "1900000001", 20, WithSleep(b.sleepFrozen))
	ctx := t.Context()

	// 20 callers at the same instant: slots 0, 50 ms … 950 ms are within
	// 975 ms.
	for i := range 20 {
		waited, err := l.Wait(ctx, "get", 975*time.Millisecond)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if want := time.Duration(i) * 50 * time.Millisecond; waited != want {
			t.Fatalf("call %d waited %v, want %v", i, waited, want)
		}
	}
	// The next slot is at 1 s: it fits a 975 ms wait in 25 ms.
	_, err := l.Wait(ctx, "get", 975*time.Millisecond)
	rl := asRateLimited(t, err)
	if rl.Endpoint != "get" || rl.RetryIn != 25*time.Millisecond {
		t.Errorf("got %+v, want get, RetryIn 25ms", rl)
	}
}

func TestLimiterMaxWaitExceededBooksNothing(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	l := NewLimiter(b.rdb, "1900000001", 10, WithSleep(b.sleepFrozen))
	ctx := t.Context()

	if w, err := l.Wait(ctx, "deactivate", 0); err != nil || w != 0 {
		t.Fatalf("first call: %v, %v", w, err)
	}
	// The next slot is 100 ms away: refused at maxWait 0 and 99 ms …
	for _, maxWait := range []time.Duration{0, 99 * time.Millisecond, -time.Second} {
		_, err := l.Wait(ctx, "deactivate", maxWait)
		rl := asRateLimited(t, err)
		if rl.RetryIn <= 0 || rl.RetryIn > 100*time.Millisecond {
			t.Errorf("maxWait %v: RetryIn = %v, want in (0, 100ms]", maxWait, rl.RetryIn)
		}
	}
	// … and the refusals did not move it.
	if w, err := l.Wait(ctx, "deactivate", 100*time.Millisecond); err != nil || w != 100*time.Millisecond {
		t.Fatalf("after refusals: waited %v, %v; want 100ms", w, err)
	}
	// With a queue 5 slots deep, RetryIn is when the queue fits maxWait again.
	for range 4 {
		if _, err := l.Wait(ctx, "deactivate", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	_, err := l.Wait(ctx, "deactivate", 200*time.Millisecond)
	if rl := asRateLimited(t, err); rl.RetryIn != 400*time.Millisecond {
		t.Errorf("RetryIn = %v, want 400ms (next slot at 600ms, maxWait 200ms)", rl.RetryIn)
	}
	if rl := (&RateLimitedError{Endpoint: "get", RetryIn: time.Second}); rl.Error() == "" {
		t.Error("empty Error()")
	}
}

func TestLimiterSeparateBuckets(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	a := NewLimiter(b.rdb, "1900000001", 5, WithSleep(b.sleepFrozen))
	other := NewLimiter(b.rdb, "1900000002", 5, WithSleep(b.sleepFrozen))

	if _, err := a.Wait(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	_, err := a.Wait(ctx, "update", 0)
	asRateLimited(t, err)

	tests := []struct {
		name     string
		l        *Limiter
		endpoint string
	}{
		{"same identity, other endpoint", a, "get"},
		{"same identity, third endpoint", a, "deactivate"},
		{"other identity, same endpoint", other, "update"},
	}
	for _, tt := range tests {
		if w, err := tt.l.Wait(ctx, tt.endpoint, 0); err != nil || w != 0 {
			t.Errorf("%s: waited %v, err %v; want an immediate slot", tt.name, w, err)
		}
	}
}

func TestLimiterPauseSharedAndRecovery(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	got429 := NewLimiter(b.rdb, "1900000001", 20, WithSleep(b.sleepAdvancing))
	peer := NewLimiter(b.rdb, "1900000001", 20, WithSleep(b.sleepAdvancing))

	if err := got429.Backoff(ctx, "update", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	// A shorter backoff does not cut a longer pause short.
	if err := got429.Backoff(ctx, "update", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}

	_, err := peer.Wait(ctx, "update", 500*time.Millisecond)
	if rl := asRateLimited(t, err); rl.RetryIn != 2*time.Second {
		t.Errorf("peer RetryIn = %v, want the 2s pause", rl.RetryIn)
	}
	if w, err := peer.Wait(ctx, "get", 0); err != nil || w != 0 {
		t.Errorf("other endpoint: %v, %v; want unaffected", w, err)
	}

	start := b.now
	waited, err := peer.Wait(ctx, "update", 3*time.Second)
	if err != nil || waited != 2*time.Second {
		t.Fatalf("waiting out the pause: waited %v, %v; want 2s", waited, err)
	}
	// Full rate afterwards: 20 calls in the next second, that one included.
	calls := 1
	for b.elapsed(start) < 3*time.Second {
		if _, err := peer.Wait(ctx, "update", time.Second); err != nil {
			t.Fatal(err)
		}
		if b.elapsed(start) < 3*time.Second {
			calls++
		}
	}
	if calls != 20 {
		t.Errorf("calls in the second after the pause = %d, want 20", calls)
	}
}

func TestLimiterDefaultPause(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	tests := []struct {
		name string
		opts []LimiterOption
		want time.Duration
	}{
		{"default", nil, DefaultPause},
		{"option", []LimiterOption{WithDefaultPause(3 * time.Second)}, 3 * time.Second},
	}
	for _, tt := range tests {
		id := "id-" + tt.name
		l := NewLimiter(b.rdb, id, 20, tt.opts...)
		if err := l.Backoff(ctx, "get", 0); err != nil {
			t.Fatal(err)
		}
		if got := b.mr.TTL("couponq:rate:" + id + ":get:pause"); got != tt.want {
			t.Errorf("%s: pause TTL = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestLimiterSlotGivenUpWhenPausedWhileSleeping(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	var l *Limiter
	paused := false
	l = NewLimiter(b.rdb, "1900000001", 20, WithSleep(func(ctx context.Context, d time.Duration) error {
		if !paused { // another worker gets a 429 while this one sleeps
			paused = true
			if err := l.Backoff(ctx, "update", 200*time.Millisecond); err != nil {
				return err
			}
		}
		return b.sleepAdvancing(ctx, d)
	}))
	if _, err := l.Wait(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	waited, err := l.Wait(ctx, "update", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// 50 ms to the booked slot, found paused (150 ms left), then a fresh slot
	// right after the pause.
	if waited != 200*time.Millisecond {
		t.Errorf("waited %v, want 200ms (slept %v)", waited, b.slept)
	}
}

func TestLimiterContextCanceledWhileWaiting(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx, cancel := context.WithCancel(t.Context())
	l := NewLimiter(b.rdb, "1900000001", 20, WithSleep(func(ctx context.Context, d time.Duration) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	}))
	if _, err := l.Wait(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	waited, err := l.Wait(ctx, "update", time.Second)
	if !errors.Is(err, context.Canceled) || waited != 0 {
		t.Errorf("got %v, %v; want 0, context.Canceled", waited, err)
	}
}

func TestSleepCtx(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := sleepCtx(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	if err := sleepCtx(t.Context(), time.Nanosecond); err != nil {
		t.Errorf("1ns: %v", err)
	}
}

func TestLimiterUnlimited(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	tests := []struct {
		name string
		l    *Limiter
	}{
		{"nil", nil},
		{"rate 0", NewLimiter(b.rdb, "x", 0)},
		{"rate 0 without redis", NewLimiter(nil, "x", 0)},
		{"negative rate", NewLimiter(b.rdb, "x", -1)},
	}
	for _, tt := range tests {
		for range 100 {
			if w, err := tt.l.Wait(ctx, "update", 0); w != 0 || err != nil {
				t.Fatalf("%s: Wait = %v, %v", tt.name, w, err)
			}
		}
		if err := tt.l.Backoff(ctx, "update", time.Second); err != nil {
			t.Errorf("%s: Backoff = %v", tt.name, err)
		}
	}
}

func TestLimiterRedisDown(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	rdb := redis.NewClient(&redis.Options{Addr: b.mr.Addr(), MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	l := NewLimiter(rdb, "x", 20)
	b.mr.Close()
	_, err := l.Wait(t.Context(), "update", time.Second)
	var rl *RateLimitedError
	if err == nil || errors.As(err, &rl) {
		t.Errorf("Wait = %v, want a Redis error", err)
	}
	if err := l.Backoff(t.Context(), "update", time.Second); err == nil {
		t.Error("Backoff: want a Redis error")
	}
}

// TestLimiterAgainstTokenBucket plays several workers against a model of the
// fake server's ceiling — a token bucket of capacity rate refilled at rate/s —
// in simulated time: zero rejections and ≥ 97% of the quota.
func TestLimiterAgainstTokenBucket(t *testing.T) {
	t.Parallel()
	const (
		rate    = 20
		workers = 9
		latency = 35 * time.Millisecond // one API call
		jitter  = 40 * time.Millisecond // late arrival of some calls
		run     = 10 * time.Second
	)
	b := setupLimiter(t)
	ctx := t.Context()
	// Three "processes", three limiter instances on one Redis.
	limiters := []*Limiter{
		NewLimiter(b.rdb, "mch", rate, WithSleep(b.sleepFrozen)),
		NewLimiter(b.rdb, "mch", rate, WithSleep(b.sleepFrozen)),
		NewLimiter(b.rdb, "mch", rate, WithSleep(b.sleepFrozen)),
	}
	start := b.now
	ready := make([]time.Duration, workers) // when each worker asks for a slot
	var arrivals []time.Duration
	for {
		w := 0
		for i := range ready {
			if ready[i] < ready[w] {
				w = i
			}
		}
		if ready[w] >= run {
			break
		}
		b.advance(start.Add(ready[w]).Sub(b.now))
		waited, err := limiters[w%3].Wait(ctx, "update", time.Second)
		var rl *RateLimitedError
		if errors.As(err, &rl) {
			ready[w] += rl.RetryIn
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		at := ready[w] + waited
		if len(arrivals)%7 == 3 {
			at += jitter
		}
		arrivals = append(arrivals, at)
		ready[w] = ready[w] + waited + latency
	}
	sort.Slice(arrivals, func(i, j int) bool { return arrivals[i] < arrivals[j] })

	tokens, last, rejected, inRun := float64(rate), time.Duration(0), 0, 0
	for _, at := range arrivals {
		tokens = min(float64(rate), tokens+(at-last).Seconds()*rate)
		last = at
		if tokens < 1 {
			rejected++
			continue
		}
		tokens--
		if at < run {
			inRun++
		}
	}
	if rejected != 0 {
		t.Errorf("%d calls over the token bucket, want 0", rejected)
	}
	if got, want := float64(inRun)/run.Seconds(), 0.97*rate; got < want {
		t.Errorf("achieved %.2f calls/s, want ≥ %.2f", got, want)
	}
}

// TestLimiterRealRedis checks the slot arithmetic on a real redis-server,
// whose Lua formats numbers differently from miniredis: callers arriving
// together are spaced one interval apart, up to maxWait.
func TestLimiterRealRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	l := NewLimiter(rdb, "1900000001", 20, WithSleep(func(context.Context, time.Duration) error { return nil }))
	peer := NewLimiter(rdb, "1900000001", 20, WithSleep(func(context.Context, time.Duration) error { return nil }))
	ctx := t.Context()

	start := time.Now()
	var waits []time.Duration
	for i := range 30 {
		lim := l
		if i%2 == 1 {
			lim = peer
		}
		waited, err := lim.Wait(ctx, "update", 975*time.Millisecond)
		var rl *RateLimitedError
		if errors.As(err, &rl) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		waits = append(waits, waited)
	}
	// The calls take real time, so slot i is i·50 ms after the first call,
	// not after this one; the budget allows slots up to 975 ms.
	elapsed := time.Since(start)
	if elapsed > 400*time.Millisecond {
		t.Skipf("machine too slow for this check (%v)", elapsed)
	}
	if len(waits) < 19 || len(waits) > 20 {
		t.Fatalf("%d slots within 975ms, want 19 or 20: %v", len(waits), waits)
	}
	for i, w := range waits {
		want := time.Duration(i) * 50 * time.Millisecond
		if w > want || w < want-elapsed {
			t.Errorf("slot %d: waited %v, want within %v of %v", i, w, elapsed, want)
		}
	}
}
