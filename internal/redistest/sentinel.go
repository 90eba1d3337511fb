package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/testutil"
)

// SentinelMaster is the master name the sentinels of StartSentinel monitor.
const SentinelMaster = "couponq"

// How long the sentinel launcher waits for the group to settle or to fail
// over; bounds that turn a hang into a clear failure, never a verdict.
const (
	sentinelSettleTimeout   = 60 * time.Second
	sentinelFailoverTimeout = 90 * time.Second
	// sentinelDownAfter is down-after-milliseconds: how long the primary
	// may be silent before the sentinels fail over. Short for tests.
	sentinelDownAfter = 1000
)

// Sentinel is a primary, its replica and three sentinels monitoring it as
// SentinelMaster, all on loopback, each a process of its own. Everything is
// stopped when the test ends.
type Sentinel struct {
	tb        testing.TB
	data      []*Server // the primary and the replica, in start order
	sentinels []*Server
}

// StartSentinel starts the primary, a replica of it and three sentinels
// (redis-server --sentinel), and waits until the replica is in sync and
// every sentinel knows the replica and the two other sentinels, so that a
// failover can happen.
func StartSentinel(tb testing.TB) *Sentinel {
	tb.Helper()
	g := &Sentinel{tb: tb}
	primary := Start(tb)
	replica := Reserve(tb)
	replica.replicaOf = primary.Addr()
	replica.Launch()
	g.data = []*Server{primary, replica}
	for range 3 {
		s := Reserve(tb)
		s.sentinel, s.monitor = SentinelMaster, primary.Addr()
		s.Launch()
		g.sentinels = append(g.sentinels, s)
	}
	if err := testutil.Poll(context.Background(), sentinelSettleTimeout, 50*time.Millisecond, func() error {
		return g.settled(primary)
	}); err != nil {
		tb.Fatalf("redistest: sentinel group did not settle: %v", err)
	}
	return g
}

// sentinelArgs is the command line of a sentinel: its configuration file
// (which Sentinel rewrites, so it lives in the server's directory) and
// --sentinel.
func (s *Server) sentinelArgs() []string {
	host, port, _ := net.SplitHostPort(s.monitor)
	conf := strings.Join([]string{
		"port " + strconv.Itoa(s.port),
		"bind 127.0.0.1",
		"daemonize no",
		"dir " + s.dir,
		"logfile " + filepath.Join(s.dir, "redis.log"),
		fmt.Sprintf("sentinel monitor %s %s %s 2", s.sentinel, host, port),
		fmt.Sprintf("sentinel down-after-milliseconds %s %d", s.sentinel, sentinelDownAfter),
		fmt.Sprintf("sentinel failover-timeout %s 10000", s.sentinel),
		fmt.Sprintf("sentinel parallel-syncs %s 1", s.sentinel),
		"",
	}, "\n")
	path := filepath.Join(s.dir, "sentinel.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		s.tb.Fatalf("redistest: write sentinel.conf: %v", err)
	}
	return []string{path, "--sentinel"}
}

// Sentinels returns the sentinels.
func (g *Sentinel) Sentinels() []*Server { return append([]*Server(nil), g.sentinels...) }

// SentinelAddrs returns the sentinels' host:port.
func (g *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(g.sentinels))
	for i, s := range g.sentinels {
		addrs[i] = s.Addr()
	}
	return addrs
}

// URL is the redis-sentinel:// URL of the group, database 0.
func (g *Sentinel) URL() string {
	return "redis-sentinel://" + strings.Join(g.SentinelAddrs(), ",") + "/0?master=" + SentinelMaster
}

// Client returns a go-redis failover client closed at the end of the test.
func (g *Sentinel) Client() *redis.Client {
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: SentinelMaster, SentinelAddrs: g.SentinelAddrs()})
	g.tb.Cleanup(func() { c.Close() })
	return c
}

// Primary returns the data server the sentinels name as the master now.
func (g *Sentinel) Primary(ctx context.Context) (*Server, error) {
	addr, err := g.masterAddr(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range g.data {
		if s.Addr() == addr {
			return s, nil
		}
	}
	return nil, fmt.Errorf("redistest: sentinels name %s, not a server of this group", addr)
}

// KillPrimary kills the current primary with SIGKILL, as a crash would,
// waits until the sentinels have promoted the replica and it answers as a
// master, and returns the new primary.
func (g *Sentinel) KillPrimary() *Server {
	g.tb.Helper()
	ctx := context.Background() // may run after the test's context ended
	old, err := g.Primary(ctx)
	if err != nil {
		g.tb.Fatal(err)
	}
	old.Kill()
	var promoted *Server
	err = testutil.Poll(ctx, sentinelFailoverTimeout, 50*time.Millisecond, func() error {
		// Every live sentinel must name the new primary: a client may ask any.
		for _, s := range g.sentinels {
			addr, err := sentinelMasterAddr(ctx, s.Addr())
			if err != nil {
				return err
			}
			if addr == old.Addr() {
				return fmt.Errorf("sentinel %s still names %s", s.Addr(), addr)
			}
		}
		p, err := g.Primary(ctx)
		if err != nil {
			return err
		}
		role, err := role(ctx, p)
		if err != nil {
			return err
		}
		if role != "master" {
			return fmt.Errorf("%s is still %s", p.Addr(), role)
		}
		promoted = p
		return nil
	})
	if err != nil {
		g.tb.Fatalf("redistest: no failover from %s: %v", old.Addr(), err)
	}
	return promoted
}

// settled reports whether the replica is in sync with primary and every
// sentinel names primary, knows the replica and sees the two others.
func (g *Sentinel) settled(primary *Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rc := redis.NewClient(&redis.Options{Addr: g.data[1].Addr(), MaxRetries: -1})
	repl, err := rc.Info(ctx, "replication").Result()
	rc.Close()
	if err != nil {
		return err
	}
	if st := infoValue(repl, "master_link_status"); st != "up" {
		return fmt.Errorf("replica link %s", st)
	}
	for _, s := range g.sentinels {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
		m, err := sc.Master(ctx, SentinelMaster).Result()
		var replicas []map[string]string
		if err == nil {
			replicas, err = sc.Replicas(ctx, SentinelMaster).Result()
		}
		sc.Close()
		if err != nil {
			return fmt.Errorf("sentinel %s: %w", s.Addr(), err)
		}
		if addr := net.JoinHostPort(m["ip"], m["port"]); addr != primary.Addr() {
			return fmt.Errorf("sentinel %s names %s", s.Addr(), addr)
		}
		if n := m["num-other-sentinels"]; n != "2" {
			return fmt.Errorf("sentinel %s sees %s other sentinels", s.Addr(), n)
		}
		if n := m["num-slaves"]; n != "1" || len(replicas) != 1 || strings.Contains(replicas[0]["flags"], "down") {
			return fmt.Errorf("sentinel %s knows %s replicas %v", s.Addr(), n, replicas)
		}
	}
	return nil
}

// masterAddr asks the live sentinels for the master's address.
func (g *Sentinel) masterAddr(ctx context.Context) (string, error) {
	var last error
	for _, s := range g.sentinels {
		if s.exited() {
			continue
		}
		addr, err := sentinelMasterAddr(ctx, s.Addr())
		if err == nil {
			return addr, nil
		}
		last = err
	}
	return "", fmt.Errorf("redistest: no sentinel names the master: %v", last)
}

func sentinelMasterAddr(ctx context.Context, sentinel string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel, MaxRetries: -1})
	defer sc.Close()
	hp, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
	if err != nil {
		return "", fmt.Errorf("sentinel %s: %w", sentinel, err)
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("sentinel %s answered %v", sentinel, hp)
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// role is the role INFO replication gives s: master or slave.
func role(ctx context.Context, s *Server) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rc := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer rc.Close()
	info, err := rc.Info(ctx, "replication").Result()
	if err != nil {
		return "", err
	}
	return infoValue(info, "role"), nil
}
