package autopipe_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/autopipe"
	"github.com/couponq/couponq/internal/results"
)

// A pipeline that fails as a whole (here a refused password) fails each of
// its commands: a script's caller must not take silence for success.
func TestWholePipelineError(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	mr.RequireAuth("right")
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), Password: "wrong"})
	t.Cleanup(func() { _ = rdb.Close() })
	pc := autopipe.New(rdb, 1, 8)
	t.Cleanup(func() { _ = pc.Close() })
	script := redis.NewScript("return 1")
	if err := script.Run(t.Context(), pc, []string{"k"}).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("script through the pipeline with a wrong password: %v, want WRONGPASS", err)
	}
	s := results.NewStore(pc)
	if err := s.SealBatch(t.Context(), "pw"); err == nil {
		t.Error("SealBatch with a wrong password succeeded")
	}
}

// Pipelined calls through the pipeline answer as go-redis' own: each
// command its reply, in order (a write then a read of the same key), the
// first error (here redis.Nil) as the call's, whatever other goroutines
// send at the same time; a pipeline failed as a whole fails every command
// of the call.
func TestPipelined(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	pc := autopipe.New(rdb, 2, 8)
	t.Cleanup(func() { _ = pc.Close() })
	ctx := t.Context()
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			key := fmt.Sprintf("k%d", g)
			var set *redis.StatusCmd
			var get, missing *redis.StringCmd
			cmds, err := pc.Pipelined(ctx, func(p redis.Pipeliner) error {
				set = p.Set(ctx, key, g, 0)
				get = p.Get(ctx, key)
				missing = p.Get(ctx, key+":none")
				return nil
			})
			if len(cmds) != 3 || !errors.Is(err, redis.Nil) {
				t.Errorf("Pipelined = %d commands, %v; want 3, redis.Nil", len(cmds), err)
			}
			if set.Err() != nil || get.Val() != fmt.Sprint(g) || !errors.Is(missing.Err(), redis.Nil) {
				t.Errorf("goroutine %d: set %v, get %q %v, missing %v", g, set.Err(), get.Val(), get.Err(), missing.Err())
			}
			if n, err := redis.NewScript("return redis.call('EXISTS', KEYS[1])").Run(ctx, pc, []string{key}).Int(); n != 1 || err != nil {
				t.Errorf("script after Pipelined = %d, %v", n, err)
			}
		})
	}
	wg.Wait()

	mr.RequireAuth("right")
	bad := redis.NewClient(&redis.Options{Addr: mr.Addr(), Password: "wrong"})
	t.Cleanup(func() { _ = bad.Close() })
	bpc := autopipe.New(bad, 1, 8)
	t.Cleanup(func() { _ = bpc.Close() })
	var exists *redis.IntCmd
	if _, err := bpc.Pipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.Exists(ctx, "k1")
		return nil
	}); err == nil || exists.Err() == nil {
		t.Errorf("Pipelined with a wrong password: %v, EXISTS %v; want both failed", err, exists.Err())
	}
}
