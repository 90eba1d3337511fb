package redisurl_test

import (
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
)

func describe(t *testing.T, url string) (redisurl.Topology, error) {
	t.Helper()
	c, err := redisurl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	rdb := c.NewClient()
	defer rdb.Close()
	return c.Describe(t.Context(), rdb)
}

// Describe names what is behind each kind of URL, on real servers.
func TestDescribe(t *testing.T) {
	t.Parallel()
	t.Run("single", func(t *testing.T) {
		t.Parallel()
		srv := redistest.Start(t)
		top, err := describe(t, srv.URL())
		if err != nil {
			t.Fatal(err)
		}
		if want := "single Redis at " + srv.Addr(); top.String() != want {
			t.Errorf("%q, want %q", top, want)
		}
	})
	t.Run("miniredis", func(t *testing.T) {
		t.Parallel()
		mr := miniredis.RunT(t)
		top, err := describe(t, "redis://"+mr.Addr())
		if err != nil || top.Kind != redisurl.Single {
			t.Errorf("%v, %v; want a single Redis", top, err)
		}
	})
	t.Run("cluster", func(t *testing.T) {
		t.Parallel()
		c := redistest.StartCluster(t)
		top, err := describe(t, c.URL())
		if err != nil {
			t.Fatal(err)
		}
		if want := "cluster with 3 masters"; top.String() != want {
			t.Errorf("%q, want %q", top, want)
		}
		// A plain URL naming one node is refused: the client would not
		// follow the cluster's MOVED answers.
		_, err = describe(t, "redis://"+c.Addrs()[0])
		if err == nil || !strings.Contains(err.Error(), "is a Redis Cluster node: use redis-cluster://"+c.Addrs()[0]) {
			t.Errorf("redis:// to a cluster node: %v", err)
		}
	})
	t.Run("sentinel", func(t *testing.T) {
		t.Parallel()
		g := redistest.StartSentinel(t)
		top, err := describe(t, g.URL())
		if err != nil {
			t.Fatal(err)
		}
		p, err := g.Primary(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if want := "sentinel master " + redistest.SentinelMaster + " at " + p.Addr(); top.String() != want {
			t.Errorf("%q, want %q", top, want)
		}
	})
}
