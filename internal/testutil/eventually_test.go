package testutil_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/couponq/couponq/internal/testutil"
)

func TestPoll(t *testing.T) {
	t.Parallel()
	notYet := errors.New("not yet")
	tests := []struct {
		name      string
		readyAt   int // cond succeeds from this call on; 0 = never
		wantCalls int
		wantErr   error
		wantTime  time.Duration
	}{
		{name: "true at once", readyAt: 1, wantCalls: 1, wantTime: 0},
		{name: "true on the third call", readyAt: 3, wantCalls: 3, wantTime: 6 * time.Second},
		{name: "never true", readyAt: 0, wantCalls: 4, wantErr: notYet, wantTime: 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				calls := 0
				start := time.Now()
				// Ticks at 3s, 6s and 9s: none at the deadline itself.
				err := testutil.Poll(t.Context(), 10*time.Second, 3*time.Second, func() error {
					calls++
					if tt.readyAt != 0 && calls >= tt.readyAt {
						return nil
					}
					return fmt.Errorf("call %d: %w", calls, notYet)
				})
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
					t.Errorf("err = %v, want %v", err, tt.wantErr)
				}
				if calls != tt.wantCalls {
					t.Errorf("%d calls, want %d", calls, tt.wantCalls)
				}
				if d := time.Since(start); d != tt.wantTime {
					t.Errorf("returned after %s, want %s", d, tt.wantTime)
				}
				if err != nil && !strings.Contains(err.Error(), "after 10s: call 4: not yet") {
					t.Errorf("err = %q, want it to say how long and the last error", err)
				}
			})
		})
	}
}

func TestPollStopsWithItsContext(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		start := time.Now()
		err := testutil.Poll(ctx, time.Hour, time.Second, func() error { return errors.New("never") })
		if err == nil || time.Since(start) != 3*time.Second {
			t.Errorf("Poll = %v after %s; want the last error after the context's 3s", err, time.Since(start))
		}
	})
}

// fakeTB records Fatalf instead of stopping the goroutine.
type fakeTB struct {
	testing.TB
	ctx   context.Context
	fatal string
}

func (f *fakeTB) Helper()                  {}
func (f *fakeTB) Context() context.Context { return f.ctx }
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
}

func TestEventually(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		ok := &fakeTB{TB: t, ctx: t.Context()}
		n := 0
		testutil.Eventually(ok, time.Second, 10*time.Millisecond, func() error {
			if n++; n < 5 {
				return errors.New("not yet")
			}
			return nil
		}, "never")
		if ok.fatal != "" || n != 5 {
			t.Errorf("Eventually of a condition true on call 5: %d calls, Fatalf %q", n, ok.fatal)
		}

		bad := &fakeTB{TB: t, ctx: t.Context()}
		testutil.Eventually(bad, time.Second, 30*time.Millisecond, func() error {
			return errors.New("2 of 3 done")
		}, "batch %s not done", "b1")
		if want := "batch b1 not done: still not so after 1s: 2 of 3 done"; bad.fatal != want {
			t.Errorf("Fatalf %q, want %q", bad.fatal, want)
		}
	})
}
