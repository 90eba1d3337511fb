package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/internal/testutil"
)

// ClusterMasters is the number of masters StartCluster creates: the fewest
// Redis Cluster accepts.
const ClusterMasters = 3

// How long the cluster launcher waits for the cluster to form or to fail
// over. Generous: the machine running the tests may be loaded, and a bound
// only turns a hang into a clear failure.
const (
	clusterFormTimeout     = 60 * time.Second
	clusterFailoverTimeout = 60 * time.Second
	// clusterNodeTimeout is cluster-node-timeout (ms): how long a master
	// may be silent before its replica takes over. Short, so a test that
	// kills a master does not wait long.
	clusterNodeTimeout = 1000
)

// Cluster is a Redis Cluster of ClusterMasters masters (each with its
// replicas, if asked) on loopback, every node a redis-server of its own
// with its own port, bus port and data directory. Every node is stopped
// when the test ends.
type Cluster struct {
	tb       testing.TB
	replicas int
	nodes    []*Server
}

// ClusterOption configures StartCluster.
type ClusterOption func(*Cluster)

// WithReplicas gives every master n replicas (redis-cli --cluster-replicas
// n), so that a master killed with KillMasterOf is replaced by one of them.
func WithReplicas(n int) ClusterOption { return func(c *Cluster) { c.replicas = n } }

// RequireCluster skips tb as Require does, and also when redis-cli, which
// creates the cluster, is missing (it fails tb under CI). It returns
// redis-cli's path.
func RequireCluster(tb testing.TB) string {
	tb.Helper()
	Require(tb)
	return requireTool(tb, "redis-cli")
}

// requireTool is Require for another program of the Redis distribution.
func requireTool(tb testing.TB, name string) string {
	tb.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("%s is not on PATH; CI must run the integration tests (install it: apt-get install -y redis-server)", name)
		}
		tb.Skipf("integration test skipped: %s is not on PATH (apt-get install redis-server to run it)", name)
	}
	return bin
}

// StartCluster starts the nodes, joins them into a cluster with redis-cli
// --cluster create and waits until every node reports cluster_state:ok
// with all 16384 slots served (and every replica in sync with its master).
func StartCluster(tb testing.TB, opts ...ClusterOption) *Cluster {
	tb.Helper()
	cli := RequireCluster(tb)
	c := &Cluster{tb: tb}
	for _, o := range opts {
		o(c)
	}
	if c.replicas < 0 {
		tb.Fatalf("redistest: WithReplicas(%d): want 0 or more", c.replicas)
	}
	n := ClusterMasters * (1 + c.replicas)
	addrs := make([]string, 0, n)
	for range n {
		s := Reserve(tb)
		s.busPort = freePort(tb)
		s.Launch()
		c.nodes = append(c.nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(c.replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), clusterFormTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("redistest: redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := testutil.Poll(context.Background(), clusterFormTimeout, 50*time.Millisecond, c.healthy); err != nil {
		tb.Fatalf("redistest: cluster did not form: %v", err)
	}
	return c
}

// clusterArgs are the cluster node settings of a Server.
func (s *Server) clusterArgs() []string {
	return []string{
		"--cluster-enabled", "yes",
		"--cluster-port", strconv.Itoa(s.busPort),
		"--cluster-config-file", filepath.Join(s.dir, "nodes.conf"),
		"--cluster-node-timeout", strconv.Itoa(clusterNodeTimeout),
		// A replica may take over however long it was cut off: in a test
		// the point is that the failover happens.
		"--cluster-replica-validity-factor", "0",
	}
}

// Nodes returns every node, live or killed, in the order they were started.
func (c *Cluster) Nodes() []*Server { return slices.Clone(c.nodes) }

// Addrs returns the host:port of every node.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr()
	}
	return addrs
}

// URL is the redis-cluster:// URL naming every node as a seed.
func (c *Cluster) URL() string { return "redis-cluster://" + strings.Join(c.Addrs(), ",") }

// Client returns a go-redis cluster client closed at the end of the test.
// Like couponq's own, it reloads the cluster's slots every
// redisurl.ClusterReloadInterval, so it finds a promoted replica soon.
func (c *Cluster) Client() *redis.ClusterClient {
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ClusterStateReloadInterval: redisurl.ClusterReloadInterval})
	c.tb.Cleanup(func() { cc.Close() })
	return cc
}

// DBSize is the number of keys on all live masters together.
func (c *Cluster) DBSize(ctx context.Context) (int64, error) {
	ms, err := c.Masters(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, m := range ms {
		rc := redis.NewClient(&redis.Options{Addr: m.Addr()})
		k, err := rc.DBSize(ctx).Result()
		rc.Close()
		if err != nil {
			return 0, fmt.Errorf("redistest: DBSIZE on %s: %w", m.Addr(), err)
		}
		n += k
	}
	return n, nil
}

// live returns the nodes that have not been killed or stopped.
func (c *Cluster) live() []*Server {
	var live []*Server
	for _, s := range c.nodes {
		if !s.exited() {
			live = append(live, s)
		}
	}
	return live
}

// node returns the node listening on addr, or nil.
func (c *Cluster) node(addr string) *Server {
	for _, s := range c.nodes {
		if s.Addr() == addr {
			return s
		}
	}
	return nil
}

// Masters returns the live nodes that serve slots now, as the cluster sees
// it (after a failover, promoted replicas are among them).
func (c *Cluster) Masters(ctx context.Context) ([]*Server, error) {
	var last error
	for _, s := range c.live() {
		ranges, err := slotRanges(ctx, s)
		if err != nil {
			last = err
			continue
		}
		var ms []*Server
		for _, r := range ranges {
			if m := c.node(r.master); m != nil && !slices.Contains(ms, m) {
				ms = append(ms, m)
			}
		}
		return ms, nil
	}
	return nil, fmt.Errorf("redistest: no live node answers CLUSTER SHARDS: %v", last)
}

// MasterOf returns the live node serving key's slot.
func (c *Cluster) MasterOf(ctx context.Context, key string) (*Server, error) {
	slot := int64(redisurl.Slot(key))
	var last error
	for _, s := range c.live() {
		ranges, err := slotRanges(ctx, s)
		if err != nil {
			last = err
			continue
		}
		for _, r := range ranges {
			if slot >= r.start && slot <= r.end {
				if m := c.node(r.master); m != nil {
					return m, nil
				}
				return nil, fmt.Errorf("redistest: slot %d is served by %s, not a node of this cluster", slot, r.master)
			}
		}
		return nil, fmt.Errorf("redistest: %s serves no slot %d", s.Addr(), slot)
	}
	return nil, fmt.Errorf("redistest: no live node answers CLUSTER SHARDS: %v", last)
}

// KillMasterOf kills the master serving key's slot with SIGKILL, as a crash
// would, and returns it. With replicas, it then waits until one of them has
// taken over that slot and every live node reports the cluster ok again;
// without, the cluster is left down (cluster_state:fail).
func (c *Cluster) KillMasterOf(key string) *Server {
	c.tb.Helper()
	ctx := context.Background() // may run after the test's context ended
	m, err := c.MasterOf(ctx, key)
	if err != nil {
		c.tb.Fatal(err)
	}
	m.Kill()
	if c.replicas == 0 {
		return m
	}
	err = testutil.Poll(ctx, clusterFailoverTimeout, 50*time.Millisecond, func() error {
		if err := c.healthy(); err != nil {
			return err
		}
		now, err := c.MasterOf(ctx, key)
		if err != nil {
			return err
		}
		if now == m {
			return fmt.Errorf("slot of %q still served by the killed %s", key, m.Addr())
		}
		return nil
	})
	if err != nil {
		c.tb.Fatalf("redistest: no replica took over from %s: %v", m.Addr(), err)
	}
	return m
}

// healthy reports, for every live node, cluster_state:ok with all 16384
// slots served by masters that are up, that it knows every node, and for a
// replica, that its link to its master is up.
func (c *Cluster) healthy() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, s := range c.live() {
		rc := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
		info, err := rc.ClusterInfo(ctx).Result()
		if err == nil && infoValue(info, "cluster_state") != "ok" {
			err = fmt.Errorf("cluster_state:%s", infoValue(info, "cluster_state"))
		}
		if err == nil && infoValue(info, "cluster_slots_ok") != "16384" {
			err = fmt.Errorf("cluster_slots_ok:%s", infoValue(info, "cluster_slots_ok"))
		}
		if err == nil && infoValue(info, "cluster_known_nodes") != strconv.Itoa(len(c.nodes)) {
			err = fmt.Errorf("cluster_known_nodes:%s of %d", infoValue(info, "cluster_known_nodes"), len(c.nodes))
		}
		var repl string
		if err == nil {
			repl, err = rc.Info(ctx, "replication").Result()
		}
		if err == nil && infoValue(repl, "role") == "slave" && infoValue(repl, "master_link_status") != "up" {
			err = fmt.Errorf("replica link %s", infoValue(repl, "master_link_status"))
		}
		rc.Close()
		if err != nil {
			return fmt.Errorf("node %s: %w", s.Addr(), err)
		}
	}
	return nil
}

type slotRange struct {
	start, end int64
	master     string
}

// slotRanges is CLUSTER SHARDS as s sees it: each slot range with the
// address of its master.
func slotRanges(ctx context.Context, s *Server) ([]slotRange, error) {
	rc := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer rc.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	shards, err := rc.ClusterShards(ctx).Result()
	if err != nil {
		return nil, err
	}
	var out []slotRange
	for _, sh := range shards {
		for _, n := range sh.Nodes {
			if n.Role != "master" {
				continue
			}
			addr := net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
			for _, r := range sh.Slots {
				out = append(out, slotRange{start: r.Start, end: r.End, master: addr})
			}
		}
	}
	return out, nil
}

// infoValue returns field's value in an INFO or CLUSTER INFO answer.
func infoValue(info, field string) string {
	for line := range strings.SplitSeq(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok && k == field {
			return v
		}
	}
	return ""
}

// exited reports whether the server's process has ended (or never ran).
func (s *Server) exited() bool {
	if s.done == nil {
		return true
	}
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}
