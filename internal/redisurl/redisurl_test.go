package redisurl_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redisurl"
)

func TestParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		url     string
		kind    redisurl.Kind
		want    redis.UniversalOptions
		tlsName string // ServerName when TLS is on; "" = no TLS
	}{
		{name: "single", url: "redis://127.0.0.1:6380/2", kind: redisurl.Single,
			want: redis.UniversalOptions{Addrs: []string{"127.0.0.1:6380"}, DB: 2}},
		{name: "single, default port, ACL user", url: "redis://app:s3cret@redis.internal", kind: redisurl.Single,
			want: redis.UniversalOptions{Addrs: []string{"redis.internal:6379"}, Username: "app", Password: "s3cret"}},
		{name: "single TLS", url: "rediss://redis.internal:6380/0", kind: redisurl.Single,
			want: redis.UniversalOptions{Addrs: []string{"redis.internal:6380"}}, tlsName: "redis.internal"},
		{name: "single, tls parameter", url: "redis://redis.internal:6380?tls=true", kind: redisurl.Single,
			want: redis.UniversalOptions{Addrs: []string{"redis.internal:6380"}}, tlsName: "redis.internal"},
		{name: "sentinel", url: "redis-sentinel://:pw@10.0.0.1:26379,10.0.0.2:26380/3?master=mymaster&sentinel_password=spw", kind: redisurl.Sentinel,
			want: redis.UniversalOptions{Addrs: []string{"10.0.0.1:26379", "10.0.0.2:26380"}, DB: 3, MasterName: "mymaster",
				Password: "pw", SentinelPassword: "spw"}},
		{name: "cluster", url: "redis-cluster://10.0.0.1:7000,10.0.0.2:7001,10.0.0.3:7002", kind: redisurl.Cluster,
			want: redis.UniversalOptions{Addrs: []string{"10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"}, IsClusterMode: true}},
		{name: "cluster with one seed and a password", url: "redis-cluster://app:s3cret@node.internal:7000/0?pool_size=4&dial_timeout=2s", kind: redisurl.Cluster,
			want: redis.UniversalOptions{Addrs: []string{"node.internal:7000"}, IsClusterMode: true, Username: "app", Password: "s3cret",
				PoolSize: 4, DialTimeout: 2 * time.Second}},
		{name: "cluster TLS", url: "rediss-cluster://:s3cret@node1.internal:7000,node2.internal:7000", kind: redisurl.Cluster,
			want:    redis.UniversalOptions{Addrs: []string{"node1.internal:7000", "node2.internal:7000"}, IsClusterMode: true, Password: "s3cret"},
			tlsName: "node1.internal"},
		{name: "cluster, tls parameter", url: "redis-cluster://node1.internal:7000,node2.internal:7000?tls=true", kind: redisurl.Cluster,
			want:    redis.UniversalOptions{Addrs: []string{"node1.internal:7000", "node2.internal:7000"}, IsClusterMode: true},
			tlsName: "node1.internal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := redisurl.Parse(tt.url)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.url, err)
			}
			if c.Kind() != tt.kind {
				t.Errorf("Kind() = %q, want %q", c.Kind(), tt.kind)
			}
			got := c.Options()
			if tt.tlsName == "" && got.TLSConfig != nil {
				t.Errorf("TLS on, want off")
			}
			if tt.tlsName != "" && (got.TLSConfig == nil || got.TLSConfig.ServerName != tt.tlsName) {
				t.Errorf("TLSConfig %+v, want ServerName %q", got.TLSConfig, tt.tlsName)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(redis.UniversalOptions{}, "TLSConfig"), cmpopts.IgnoreUnexported(redis.UniversalOptions{})); diff != "" {
				t.Errorf("options (-want +got):\n%s", diff)
			}
			if strings.Contains(c.String(), "s3cret") || strings.Contains(c.String(), "spw") {
				t.Errorf("String() shows a password: %s", c)
			}
		})
	}
}

// NewClient makes the client of the topology: a cluster client for a
// cluster URL even with one seed, a failover client (a *redis.Client that
// asks the sentinels) for a sentinel URL.
func TestNewClientKind(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url  string
		want string
	}{
		{"redis://127.0.0.1:1/0", "*redis.Client"},
		{"redis-cluster://127.0.0.1:1", "*redis.ClusterClient"},
		{"redis-cluster://127.0.0.1:1,127.0.0.1:2", "*redis.ClusterClient"},
		{"redis-sentinel://127.0.0.1:1?master=m", "*redis.Client"},
	}
	for _, tt := range tests {
		c, err := redisurl.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		rdb := c.NewClient()
		got := typeName(rdb)
		if cc, ok := rdb.(*redis.ClusterClient); ok && cc.Options().ClusterStateReloadInterval != redisurl.ClusterReloadInterval {
			t.Errorf("cluster client reloads its slots every %s, want %s", cc.Options().ClusterStateReloadInterval, redisurl.ClusterReloadInterval)
		}
		rdb.Close()
		if got != tt.want {
			t.Errorf("NewClient for %s: %s, want %s", tt.url, got, tt.want)
		}
		// asynq type-asserts what MakeRedisClient returns.
		mk := c.MakeRedisClient()
		if _, ok := mk.(redis.UniversalClient); !ok {
			t.Errorf("MakeRedisClient for %s: %T is not a redis.UniversalClient", tt.url, mk)
		}
		mk.(redis.UniversalClient).Close()
	}
}

func typeName(rdb redis.UniversalClient) string {
	switch rdb.(type) {
	case *redis.ClusterClient:
		return "*redis.ClusterClient"
	case *redis.Client:
		return "*redis.Client"
	default:
		return "other"
	}
}

// Bad URLs are one line that names the fault and never the password.
func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ url, want string }{
		{"redis-cluster://", "no address"},
		{"redis-cluster://:s3cret@a:1,,b:2", "empty address"},
		{"redis-cluster://:s3cret@a:1,b:2/1", "Redis Cluster has only database 0"},
		{"redis-cluster://:s3cret@a:1?tls=maybe", `tls="maybe" is not true or false`},
		{"rediss-cluster://:s3cret@a:1?tls=false", "tls=false contradicts rediss-cluster://"},
		{"redis://:s3cret@a:1,b:2", "redis:// names one server"},
		{"redis-sentinel://:s3cret@a:1,b:2", "needs ?master=NAME"},
		{"redis-sentinel://:s3cret@a:1,,b:2?master=m", "empty address"},
		{"redis+cluster://:s3cret@a:1", "use redis://, rediss://, redis-sentinel://, redis-cluster:// or rediss-cluster://"},
		{"redis-cluster://:s3cret@a:1?pool_size=0", "pool_size"},
		{"redis-cluster://:s3cret@a:1?read_timeout=soon", "read_timeout"},
		{"redis-cluster://:s3cret@a:1/x", `database "x" is not a number`},
	}
	for _, tt := range tests {
		_, err := redisurl.Parse(tt.url)
		if err == nil {
			t.Errorf("Parse(%q): no error, want %q", tt.url, tt.want)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tt.want) {
			t.Errorf("Parse(%q): %q, want it to say %q", tt.url, msg, tt.want)
		}
		if strings.Contains(msg, "s3cret") || strings.Contains(msg, "\n") {
			t.Errorf("Parse(%q): %q shows the password or is not one line", tt.url, msg)
		}
	}
}
