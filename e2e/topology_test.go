package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
)

// A scenario runs on the Redis a URL names: one server (redis://), a
// Sentinel group (redis-sentinel://) or a Redis Cluster
// (redis-cluster://). In-process workers and producers, worker processes
// (E2E_REDIS_URL) and the couponq binary (COUPONQ_REDIS_URL) all connect
// through that URL, parsed by internal/redisurl as couponq parses it.

// topo is the Redis one test runs on: the URL everything is given, and
// the test's own client of it.
type topo struct {
	url string
	rdb redis.UniversalClient

	// At most one is set: what started the Redis.
	single   *redistest.Server
	sentinel *redistest.Sentinel
	cluster  *redistest.Cluster
}

// onSingle starts one redis-server.
func onSingle(t *testing.T, opts ...redistest.Option) *topo {
	t.Helper()
	s := redistest.Start(t, opts...)
	return newTopo(t, s.URL(), func(r *topo) { r.single = s })
}

// onCluster starts a Redis Cluster of three masters (opts may add
// replicas).
func onCluster(t *testing.T, opts ...redistest.ClusterOption) *topo {
	t.Helper()
	c := redistest.StartCluster(t, opts...)
	return newTopo(t, c.URL(), func(r *topo) { r.cluster = c })
}

// onSentinel starts a primary, its replica and three sentinels.
func onSentinel(t *testing.T) *topo {
	t.Helper()
	g := redistest.StartSentinel(t)
	return newTopo(t, g.URL(), func(r *topo) { r.sentinel = g })
}

func newTopo(t *testing.T, url string, set func(*topo)) *topo {
	t.Helper()
	r := &topo{url: url}
	set(r)
	r.rdb = redisConn(t, url).NewClient()
	t.Cleanup(func() { r.rdb.Close() })
	return r
}

// redisConn parses url as couponq does.
func redisConn(t *testing.T, url string) *redisurl.Conn {
	t.Helper()
	c, err := redisurl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// inspector is an asynq Inspector of the topology, closed when the test
// ends.
func (r *topo) inspector(t *testing.T) *asynq.Inspector {
	t.Helper()
	insp := asynq.NewInspector(redisConn(t, r.url))
	t.Cleanup(func() { insp.Close() })
	return insp
}

// keysPerMaster counts the keys on each master of a cluster ("" on one
// server or Sentinel): where the data of a run went.
func (r *topo) keysPerMaster(ctx context.Context) string {
	if r.cluster == nil {
		return ""
	}
	ms, err := r.cluster.Masters(ctx)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, m := range ms {
		rc := redis.NewClient(&redis.Options{Addr: m.Addr()})
		n, err := rc.DBSize(ctx).Result()
		rc.Close()
		if err != nil {
			return err.Error()
		}
		parts = append(parts, fmt.Sprintf("%s %d", m.Addr(), n))
	}
	return "keys per master: " + strings.Join(parts, ", ")
}

func (r *topo) String() string {
	switch {
	case r.cluster != nil:
		return fmt.Sprintf("cluster %s", r.url)
	case r.sentinel != nil:
		return fmt.Sprintf("sentinel %s", r.url)
	default:
		return r.url
	}
}
