package main

import (
	"testing"

	"github.com/couponq/couponq/worker"
)

// TestMaxRetryFlagZeroIsNoRetry: --max-retry 0 used to pass the command's
// check and become the library's default of 10.
func TestMaxRetryFlagZeroIsNoRetry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ flag, want int }{{0, worker.NoRetry}, {1, 1}, {10, 10}} {
		c := workerFlags{cfg: worker.DefaultConfig(), MaxRetry: tc.flag, Queues: worker.DefaultQueue}
		cfg, err := c.config()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.MaxRetry != tc.want {
			t.Errorf("--max-retry %d: Config.MaxRetry = %d, want %d", tc.flag, cfg.MaxRetry, tc.want)
		}
	}
	if d := worker.DefaultConfig(); d.MaxRetry != worker.DefaultMaxRetry || d.Concurrency != worker.DefaultConcurrency || d.Rate != 20 {
		t.Errorf("DefaultConfig = %+v", d)
	}
}
