// Package testutil holds the helpers couponq's tests share. It imports only
// the standard library, so every package's tests may use it.
//
// Tests that wait for something another goroutine or process does poll the
// condition itself with [Eventually] (or [Poll] where the test must not stop
// at once), never a bare sleep followed by an assertion.
package testutil

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Poll calls cond at once and then every tick until it returns nil, and
// returns nil. Once timeout has passed, or ctx is done, it returns cond's
// last error, saying how long it waited. The wait between calls selects on
// the deadline, so Poll never oversleeps it by more than one call of cond.
func Poll(ctx context.Context, timeout, tick time.Duration, cond func() error) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("still not so after %s: %w", time.Since(start).Round(time.Millisecond), err)
		case <-ticker.C:
		}
	}
}

// Eventually polls cond like [Poll], bounded by timeout and tb's context,
// and stops the test with tb.Fatalf, the message and cond's last error if
// cond never returns nil. Like Fatalf it must run on the test's goroutine,
// and not in a Cleanup function (tb's context is done by then): use Poll
// there.
//
//	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
//		if n := len(fake.Requests()); n < 2 {
//			return fmt.Errorf("%d requests", n)
//		}
//		return nil
//	}, "no retry of the failed call")
func Eventually(tb testing.TB, timeout, tick time.Duration, cond func() error, format string, args ...any) {
	tb.Helper()
	if err := Poll(tb.Context(), timeout, tick, cond); err != nil {
		tb.Fatalf("%s: %v", fmt.Sprintf(format, args...), err)
	}
}
