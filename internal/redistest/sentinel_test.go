package redistest_test

import (
	"testing"
	"time"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/testutil"
)

// The sentinels fail over a killed primary to its replica, and a failover
// client (go-redis) follows: what it wrote before (replicated) is there,
// and it writes to the new primary.
func TestSentinelKillPrimary(t *testing.T) {
	t.Parallel()
	g := redistest.StartSentinel(t)
	ctx := t.Context()
	old, err := g.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rdb := g.Client()
	if err := rdb.Set(ctx, "k", "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := rdb.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1: %d, %v", n, err)
	}
	promoted := g.KillPrimary()
	if promoted == old {
		t.Fatalf("the killed primary %s is still the primary", old.Addr())
	}
	if now, err := g.Primary(ctx); err != nil || now != promoted {
		t.Fatalf("Primary after failover: %v, %v; KillPrimary said %s", now, err, promoted.Addr())
	}
	// The failover client reconnects through the sentinels; its first
	// command may still meet the dead connection.
	testutil.Eventually(t, 30*time.Second, 100*time.Millisecond, func() error {
		return rdb.Set(ctx, "k2", "after", 0).Err()
	}, "write after failover")
	if got, err := rdb.Get(ctx, "k").Result(); err != nil || got != "before" {
		t.Fatalf("GET k after failover: %q, %v", got, err)
	}
	if got, err := promoted.Client().Get(ctx, "k2").Result(); err != nil || got != "after" {
		t.Fatalf("the write after failover is not on the new primary %s: %q, %v", promoted.Addr(), got, err)
	}
}
