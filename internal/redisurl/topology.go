package redisurl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Topology is what Describe found behind a URL.
type Topology struct {
	Kind Kind
	// Addr is the server of a single Redis, or the address of the
	// Sentinel master now.
	Addr string
	// Master is the Sentinel master name.
	Master string
	// Masters is the number of a cluster's masters that serve slots.
	Masters int
}

// String reads like "single Redis at 127.0.0.1:6379", "sentinel master
// mymaster at 10.0.0.5:6379" or "cluster with 3 masters".
func (t Topology) String() string {
	switch t.Kind {
	case Sentinel:
		return fmt.Sprintf("sentinel master %s at %s", t.Master, t.Addr)
	case Cluster:
		if t.Masters == 0 {
			return "cluster" // not counted
		}
		return fmt.Sprintf("cluster with %d masters", t.Masters)
	default:
		return "single Redis at " + t.Addr
	}
}

// Describe reports the topology behind rdb, a client made by c (NewClient
// or MakeRedisClient): for a sentinel URL, the master the sentinels name
// now; for a cluster, how many masters serve its slots. A redis:// URL that
// leads to a Redis Cluster node is an error: a plain client cannot follow
// the cluster's redirections.
func (c *Conn) Describe(ctx context.Context, rdb redis.UniversalClient) (Topology, error) {
	switch c.kind {
	case Cluster:
		cc, ok := rdb.(*redis.ClusterClient)
		if !ok {
			return Topology{}, fmt.Errorf("redisurl: describe %s: %T is not a cluster client", c, rdb)
		}
		n, err := clusterMasters(ctx, cc)
		if err != nil {
			return Topology{}, fmt.Errorf("cannot read the cluster's shards at %s: %w", c, err)
		}
		return Topology{Kind: Cluster, Masters: n}, nil
	case Sentinel:
		addr, err := c.sentinelMaster(ctx)
		if err != nil {
			return Topology{}, err
		}
		return Topology{Kind: Sentinel, Master: c.opts.MasterName, Addr: addr}, nil
	default:
		info, err := rdb.Info(ctx, "cluster").Result()
		var re redis.Error
		switch {
		case errors.As(err, &re):
			// A server that refuses INFO cluster (miniredis, some proxies)
			// is no cluster node that would redirect us.
		case err != nil:
			return Topology{}, fmt.Errorf("cannot reach Redis at %s: %w", c, err)
		case infoField(info, "cluster_enabled") == "1":
			return Topology{}, fmt.Errorf("the Redis at %s is a Redis Cluster node: use redis-cluster://%s (or rediss-cluster://)", c, c.opts.Addrs[0])
		}
		return Topology{Kind: Single, Addr: c.opts.Addrs[0]}, nil
	}
}

// clusterMasters counts the distinct masters that serve slots.
func clusterMasters(ctx context.Context, cc *redis.ClusterClient) (int, error) {
	shards, err := cc.ClusterShards(ctx).Result()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, sh := range shards {
		if len(sh.Slots) == 0 {
			continue
		}
		for _, node := range sh.Nodes {
			if node.Role == "master" {
				n++
				break
			}
		}
	}
	return n, nil
}

// sentinelMaster asks the sentinels, in turn, where the master is now.
func (c *Conn) sentinelMaster(ctx context.Context) (string, error) {
	var last error
	for _, addr := range c.opts.Addrs {
		sc := redis.NewSentinelClient(&redis.Options{
			Addr: addr, Username: c.opts.SentinelUsername, Password: c.opts.SentinelPassword,
			TLSConfig: c.opts.TLSConfig, DialTimeout: c.opts.DialTimeout, ReadTimeout: c.opts.ReadTimeout,
			MaxRetries: -1,
		})
		hp, err := sc.GetMasterAddrByName(ctx, c.opts.MasterName).Result()
		sc.Close()
		if err == nil && len(hp) == 2 {
			return net.JoinHostPort(hp[0], hp[1]), nil
		}
		if err == nil {
			err = fmt.Errorf("answered %v", hp)
		}
		last = fmt.Errorf("sentinel %s: %w", addr, err)
	}
	return "", fmt.Errorf("no sentinel of %s names master %s: %w", c, c.opts.MasterName, last)
}

// infoField returns field's value in an INFO answer.
func infoField(info, field string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == field {
			return v
		}
	}
	return ""
}
