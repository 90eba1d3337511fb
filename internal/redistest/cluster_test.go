package redistest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
)

// A started cluster has three masters serving every slot: keys of every
// master can be written and read through a cluster client, and the slot
// the code computes is the one Redis uses.
func TestStartCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	ctx := t.Context()
	if n := len(c.Nodes()); n != redistest.ClusterMasters {
		t.Fatalf("%d nodes, want %d", n, redistest.ClusterMasters)
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(masters) != redistest.ClusterMasters {
		t.Fatalf("%d masters, want %d", len(masters), redistest.ClusterMasters)
	}
	rdb := c.Client()
	seen := map[*redistest.Server]bool{}
	for i := range 30 {
		key := fmt.Sprintf("key-%d", i)
		if err := rdb.Set(ctx, key, i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		m, err := c.MasterOf(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		seen[m] = true
		// The key is on the master MasterOf names, not merely somewhere.
		direct := redis.NewClient(&redis.Options{Addr: m.Addr()})
		got, err := direct.Get(ctx, key).Int()
		direct.Close()
		if err != nil || got != i {
			t.Fatalf("GET %s on %s: %d, %v", key, m.Addr(), got, err)
		}
		slot, err := rdb.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if int(slot) != redisurl.Slot(key) {
			t.Errorf("Slot(%q) = %d, Redis says %d", key, redisurl.Slot(key), slot)
		}
	}
	if len(seen) != redistest.ClusterMasters {
		t.Errorf("30 keys landed on %d masters, want all %d", len(seen), redistest.ClusterMasters)
	}
}

// With replicas, killing the master of a key hands its slot to its replica:
// the key (replicated before the kill) is still there and writable.
func TestClusterKillMaster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, redistest.WithReplicas(1))
	ctx := t.Context()
	if n := len(c.Nodes()); n != 2*redistest.ClusterMasters {
		t.Fatalf("%d nodes, want %d", n, 2*redistest.ClusterMasters)
	}
	rdb := c.Client()
	if err := rdb.Set(ctx, "k", "before", 0).Err(); err != nil {
		t.Fatal(err)
	}
	old, err := c.MasterOf(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	// WAIT on the key's master: the replica has the write before the kill.
	direct := redis.NewClient(&redis.Options{Addr: old.Addr()})
	n, err := direct.Wait(ctx, 1, 5*time.Second).Result()
	direct.Close()
	if err != nil || n != 1 {
		t.Fatalf("WAIT 1: %d, %v", n, err)
	}
	killed := c.KillMasterOf("k")
	if killed != old {
		t.Fatalf("killed %s, the master was %s", killed.Addr(), old.Addr())
	}
	now, err := c.MasterOf(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if now == old {
		t.Fatalf("slot of k still on the killed %s", old.Addr())
	}
	// go-redis follows the new owner (MOVED, or a reload after the dead
	// connection): within its retries, the key reads and writes.
	if got, err := readAfterFailover(ctx, rdb, "k"); err != nil || got != "before" {
		t.Fatalf("GET k after failover: %q, %v", got, err)
	}
	if err := rdb.Set(ctx, "k", "after", 0).Err(); err != nil {
		t.Fatalf("SET k after failover: %v", err)
	}
	masters, err := c.Masters(ctx)
	if err != nil || len(masters) != redistest.ClusterMasters {
		t.Fatalf("masters after failover: %d, %v", len(masters), err)
	}
}

// readAfterFailover reads key, retrying a bounded number of times while the
// client still holds the dead master's connection.
func readAfterFailover(ctx context.Context, rdb *redis.ClusterClient, key string) (string, error) {
	var err error
	for range 20 {
		var v string
		if v, err = rdb.Get(ctx, key).Result(); err == nil {
			return v, nil
		}
		rdb.ReloadState(ctx)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", err
}
