package worker

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/internal/results"
)

// CrossSlotError refuses a Redis Cluster while some of couponq's result
// scripts touch keys of more than one hash slot: Redis Cluster (and the
// proxies of managed cluster editions) would refuse them with CROSSSLOT
// at the first task, after asynq had already taken it.
type CrossSlotError struct {
	Topology redisurl.Topology
	Scripts  []string // results.CrossSlotScripts
}

func (e *CrossSlotError) Error() string {
	return fmt.Sprintf("couponq cannot run on this Redis Cluster (%s) yet: its result scripts %s touch keys of more than one hash slot, which Redis Cluster refuses (CROSSSLOT); use one Redis server or Sentinel",
		e.Topology, strings.Join(e.Scripts, ", "))
}

// CheckTopology describes the Redis that conn names, through rdb (a
// client made by conn), and refuses what couponq cannot run on: a redis://
// URL that leads to a cluster node, and a cluster while
// results.CrossSlotScripts names any script (a *CrossSlotError).
func CheckTopology(ctx context.Context, conn *redisurl.Conn, rdb redis.UniversalClient) (redisurl.Topology, error) {
	top, err := conn.Describe(ctx, rdb)
	if err != nil {
		return top, err
	}
	return top, refuseCrossSlot(top)
}

func refuseCrossSlot(top redisurl.Topology) error {
	if top.Kind != redisurl.Cluster {
		return nil
	}
	if s := results.CrossSlotScripts(); len(s) > 0 {
		return &CrossSlotError{Topology: top, Scripts: s}
	}
	return nil
}

// checkTopology logs the topology the worker found and refuses one it
// cannot run on. A connection that is not a *redisurl.Conn (a library
// user's asynq option) cannot be described; only its cluster client is
// refused.
func (w *Worker) checkTopology(ctx context.Context, opt asynq.RedisConnOpt) error {
	conn, ok := opt.(*redisurl.Conn)
	if !ok {
		if _, isCluster := w.rdb.(*redis.ClusterClient); isCluster {
			return refuseCrossSlot(redisurl.Topology{Kind: redisurl.Cluster})
		}
		return nil
	}
	cctx, cancel := context.WithTimeout(ctx, redisCheckTimeout)
	defer cancel()
	top, err := CheckTopology(cctx, conn, w.rdb)
	if err != nil {
		return err
	}
	w.log.Info("redis topology: "+top.String(), "topology", string(top.Kind))
	return nil
}

// checkClusterMasters is CheckRedis on every master of a cluster: the
// first error, else the lowest version and an evicting policy if any
// master has one (its settings are per node).
func checkClusterMasters(ctx context.Context, cc *redis.ClusterClient) (RedisCheck, error) {
	var (
		mu  sync.Mutex // ForEachMaster calls in parallel
		out RedisCheck
		n   int
	)
	err := cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
		chk, err := CheckRedis(ctx, m)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			if out.Version == "" {
				out.Version = chk.Version
			}
			return fmt.Errorf("%s: %w", m.Options().Addr, err)
		}
		if n == 0 || versionLess(chk.Version, out.Version) {
			out.Version = chk.Version
		}
		if out.Policy == "" || chk.Evicting() && !out.Evicting() {
			out.Policy = chk.Policy
		}
		if chk.PolicyErr != nil && out.PolicyErr == nil {
			out.PolicyErr = fmt.Errorf("%s: %w", m.Options().Addr, chk.PolicyErr)
		}
		n++
		return nil
	})
	if err != nil {
		return out, err
	}
	return out, nil
}

func versionLess(a, b string) bool {
	amaj, amin, aok := parseVersion(a)
	bmaj, bmin, bok := parseVersion(b)
	return aok && bok && (amaj < bmaj || amaj == bmaj && amin < bmin)
}
