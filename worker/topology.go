package worker

import (
	"context"
	"fmt"
	"sync"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redisurl"
)

// CheckTopology describes the Redis that conn names, through rdb (a
// client made by conn), and refuses what couponq cannot run on: a redis://
// URL that leads to a cluster node (a plain client cannot follow the
// cluster's redirections). A cluster itself is fine: every script of
// couponq touches the keys of one hash slot (results.CrossSlotScripts is
// empty, and TestStoreScriptsOnCluster runs them all on a real cluster).
func CheckTopology(ctx context.Context, conn *redisurl.Conn, rdb redis.UniversalClient) (redisurl.Topology, error) {
	return conn.Describe(ctx, rdb)
}

// checkTopology logs the topology the worker found and refuses one it
// cannot run on. A connection that is not a *redisurl.Conn (a library
// user's asynq option) is not described.
func (w *Worker) checkTopology(ctx context.Context, opt asynq.RedisConnOpt) error {
	conn, ok := opt.(*redisurl.Conn)
	if !ok {
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
