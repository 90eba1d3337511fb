package worker

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/wechatpay"
)

func TestBackoffDoublesToCap(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		base, cap time.Duration
	}{
		{"defaults", DefaultRetryBase, DefaultRetryCap},
		{"small", 10 * time.Millisecond, 700 * time.Millisecond},
		{"cap equals base", time.Second, time.Second},
		{"cap below base is raised to base", time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := RetryPolicy{Base: tt.base, Cap: tt.cap}
			capd := max(tt.cap, tt.base)
			for n := range 200 {
				want := capd
				if n < 62 {
					if d := tt.base << n; d > 0 && d < capd && d>>n == tt.base {
						want = d
					}
				}
				if got := p.Backoff(n); got != want {
					t.Fatalf("Backoff(%d) = %v, want %v", n, got, want)
				}
			}
		})
	}
}

func TestDelayFullJitterBounds(t *testing.T) {
	t.Parallel()
	base, capd := 100*time.Millisecond, 30*time.Second
	tests := []struct {
		name string
		rand func(int64) int64
		want func(d time.Duration) time.Duration
	}{
		{"lowest draw", func(int64) int64 { return 0 }, func(time.Duration) time.Duration { return 0 }},
		{"highest draw", func(n int64) int64 { return n - 1 }, func(d time.Duration) time.Duration { return d - 1 }},
		{"middle draw", func(n int64) int64 { return n / 2 }, func(d time.Duration) time.Duration { return d / 2 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := RetryPolicy{Base: base, Cap: capd, Rand: tt.rand}
			for n := range 20 {
				d := p.Backoff(n)
				if got := p.Delay(n, errors.New("boom")); got != tt.want(d) {
					t.Errorf("Delay(%d) = %v, want %v (backoff %v)", n, got, tt.want(d), d)
				}
			}
		})
	}
	t.Run("real randomness stays in [0, d)", func(t *testing.T) {
		t.Parallel()
		p := RetryPolicy{Base: base, Cap: capd}
		for n := range 20 {
			d := p.Backoff(n)
			for range 200 {
				if got := p.Delay(n, errors.New("boom")); got < 0 || got >= d {
					t.Fatalf("Delay(%d) = %v outside [0, %v)", n, got, d)
				}
			}
		}
	})
}

func TestDelayHonoursHints(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Base: time.Second, Cap: time.Minute, Rand: func(n int64) int64 { return n - 1 }}
	tests := []struct {
		name string
		err  error
		want time.Duration
	}{
		{"come back after a 429's Retry-After", &comeBackError{after: 7 * time.Second, err: rateLimitedErr(7 * time.Second)}, 7 * time.Second},
		{"wrapped come back", fmt.Errorf("call: %w", &comeBackError{after: 3 * time.Second, err: rateLimitedErr(0)}), 3 * time.Second},
		{"come back for a local slot", &comeBackError{after: 1500 * time.Millisecond, err: &RateLimitedError{Endpoint: "update", RetryIn: 1500 * time.Millisecond}}, 1500 * time.Millisecond},
		{"a bare 429 uses backoff (the handler wraps it)", rateLimitedErr(7 * time.Second), time.Second - 1},
		{"no hint", apiErr(500, wechatpay.CodeSystemError, ""), time.Second - 1},
		{"lease expired", asynq.ErrLeaseExpired, time.Second - 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := p.Delay(0, tt.err); got != tt.want {
				t.Errorf("Delay = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestIsFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"500", apiErr(500, wechatpay.CodeSystemError, ""), true},
		{"network", netErr(), true},
		{"come back after a 429", &comeBackError{after: time.Second, err: rateLimitedErr(time.Second)}, false},
		{"wrapped come back", fmt.Errorf("worker: %w", &comeBackError{after: time.Second, err: &RateLimitedError{Endpoint: "update", RetryIn: time.Second}}), false},
		{"skip retry wins", fmt.Errorf("%w: %w", &comeBackError{err: rateLimitedErr(0)}, asynq.SkipRetry), true},
		{"lease expired", asynq.ErrLeaseExpired, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := IsFailure(tt.err); got != tt.want {
				t.Errorf("IsFailure(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestRetryDelayFuncConcurrent calls one policy from many goroutines, as
// asynq does; run with -race it shows the policy shares no state.
func TestRetryDelayFuncConcurrent(t *testing.T) {
	t.Parallel()
	p := RetryPolicy{Base: 10 * time.Millisecond, Cap: time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				n := (g + i) % 12
				if d, want := p.RetryDelayFunc(n, errors.New("x"), nil), p.Backoff(n); d < 0 || d >= want {
					errs <- fmt.Errorf("RetryDelayFunc(%d) = %v outside [0, %v)", n, d, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestBackoffUsesInjectedClock(t *testing.T) {
	t.Parallel()
	calls := 0
	now := func() time.Time { calls++; return time.Unix(1700000000, 0) }
	p := RetryPolicy{Base: time.Second, Cap: time.Minute, Now: now}
	if got := p.Backoff(3); got != 8*time.Second {
		t.Errorf("Backoff(3) = %v", got)
	}
	if calls == 0 {
		t.Error("injected clock not used")
	}
}
