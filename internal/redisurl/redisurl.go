// Package redisurl parses couponq's Redis URLs (redis://, rediss://,
// redis-sentinel://, redis-cluster://, rediss-cluster://) into go-redis
// options that also serve as an asynq.RedisConnOpt, and tells which
// topology a URL names and what a live server turned out to be
// (Conn.Describe).
package redisurl

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Conn is a parsed Redis URL. It makes go-redis clients for couponq's
// own use and satisfies asynq.RedisConnOpt (MakeRedisClient returns a new
// client on every call, as asynqmon expects).
//
// Unlike asynq.ParseRedisURI it keeps the ACL user name, gives the URL's
// password to the Redis master behind Sentinel, and honours the database of
// a sentinel URL.
type Conn struct {
	opts *redis.UniversalOptions
	kind Kind
	url  string // with the password masked, for messages
}

// Kind is the Redis topology a URL names.
type Kind string

// The topologies.
const (
	// Single is one Redis server (redis://, rediss://).
	Single Kind = "single"
	// Sentinel is a master found through Sentinel (redis-sentinel://):
	// clients follow its failovers.
	Sentinel Kind = "sentinel"
	// Cluster is a Redis Cluster (redis-cluster://, rediss-cluster://).
	Cluster Kind = "cluster"
)

// Parse parses one of:
//
//	redis://[user:password@]host:port[/db]
//	rediss://[user:password@]host:port[/db]            (TLS)
//	redis-sentinel://[user:password@]h1:p1,h2:p2[/db]?master=NAME[&sentinel_password=P]
//	redis-cluster://[user:password@]h1:p1,h2:p2,h3:p3    (any nodes of the cluster, as seeds)
//	rediss-cluster://[user:password@]h1:p1,h2:p2,h3:p3   (TLS)
//
// Query parameters dial_timeout, read_timeout, write_timeout (Go durations),
// pool_size (per node on a cluster) and tls=true (TLS, as the rediss
// schemes; with a sentinel URL, to the sentinels and the master) apply to
// every scheme. A cluster has only database 0.
func Parse(s string) (*Conn, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("malformed Redis URL: %v", redactURLError(err))
	}
	o := &redis.UniversalOptions{}
	if u.User != nil {
		o.Username = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		db, err := strconv.Atoi(p)
		if err != nil || db < 0 {
			return nil, fmt.Errorf("malformed Redis URL %s: database %q is not a number", redact(s), p)
		}
		o.DB = db
	}
	q := u.Query()
	useTLS := u.Scheme == "rediss" || u.Scheme == "rediss-cluster"
	if v := q.Get("tls"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("malformed Redis URL %s: tls=%q is not true or false", redact(s), v)
		}
		if !b && useTLS {
			return nil, fmt.Errorf("malformed Redis URL %s: tls=false contradicts %s://", redact(s), u.Scheme)
		}
		useTLS = b
	}
	kind := Single
	switch u.Scheme {
	case "redis", "rediss":
		if u.Host == "" {
			return nil, fmt.Errorf("malformed Redis URL %s: no host", redact(s))
		}
		if strings.Contains(u.Host, ",") {
			return nil, fmt.Errorf("malformed Redis URL %s: %s:// names one server (use redis-cluster:// or redis-sentinel:// for several)", redact(s), u.Scheme)
		}
		o.Addrs = []string{hostPort(u.Host)}
	case "redis-cluster", "rediss-cluster":
		kind = Cluster
		addrs, err := hostList(u.Host)
		if err != nil {
			return nil, fmt.Errorf("malformed Redis URL %s: %v", redact(s), err)
		}
		o.Addrs = addrs
		if o.DB != 0 {
			return nil, fmt.Errorf("malformed Redis URL %s: Redis Cluster has only database 0", redact(s))
		}
		// One seed address is a cluster too: go-redis would take it for a
		// single server without this.
		o.IsClusterMode = true
	case "redis-sentinel":
		kind = Sentinel
		if u.Host == "" {
			return nil, fmt.Errorf("malformed Redis URL %s: no sentinel address", redact(s))
		}
		addrs, err := hostList(u.Host)
		if err != nil {
			return nil, fmt.Errorf("malformed Redis URL %s: %v", redact(s), err)
		}
		o.Addrs = addrs
		o.MasterName = q.Get("master")
		if o.MasterName == "" {
			return nil, fmt.Errorf("malformed Redis URL %s: redis-sentinel needs ?master=NAME", redact(s))
		}
		o.SentinelPassword = q.Get("sentinel_password")
	default:
		return nil, fmt.Errorf("unsupported Redis URL scheme %q (use redis://, rediss://, redis-sentinel://, redis-cluster:// or rediss-cluster://)", u.Scheme)
	}
	if useTLS {
		// One ServerName for every node: they are named by the URL's
		// first host (a cluster's or a sentinel group's certificate must
		// cover it).
		host, _, _ := net.SplitHostPort(o.Addrs[0])
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	}
	for name, dst := range map[string]*time.Duration{"dial_timeout": &o.DialTimeout, "read_timeout": &o.ReadTimeout, "write_timeout": &o.WriteTimeout} {
		if v := q.Get(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, fmt.Errorf("malformed Redis URL %s: %s=%q is not a duration", redact(s), name, v)
			}
			*dst = d
		}
	}
	if v := q.Get("pool_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("malformed Redis URL %s: pool_size=%q is not a positive number", redact(s), v)
		}
		o.PoolSize = n
	}
	return &Conn{opts: o, kind: kind, url: redact(s)}, nil
}

// hostList splits h1:p1,h2:p2 into addresses (port 6379 by default),
// refusing an empty entry.
func hostList(hosts string) ([]string, error) {
	if hosts == "" {
		return nil, fmt.Errorf("no address")
	}
	var addrs []string
	for _, h := range strings.Split(hosts, ",") {
		if h == "" {
			return nil, fmt.Errorf("empty address in %q", hosts)
		}
		addrs = append(addrs, hostPort(h))
	}
	return addrs, nil
}

func hostPort(h string) string {
	if _, _, err := net.SplitHostPort(h); err == nil {
		return h
	}
	return net.JoinHostPort(h, "6379")
}

// String is the URL with any password masked.
func (c *Conn) String() string { return c.url }

// Kind is the topology the URL names.
func (c *Conn) Kind() Kind { return c.kind }

// Options returns a copy of the parsed options.
func (c *Conn) Options() redis.UniversalOptions { return *c.opts }

// ClusterReloadInterval is how stale a cluster client's map of slots to
// masters may get. go-redis reloads it at once on a MOVED answer, but a
// master that died answers nothing: until the next reload (60 s by
// default) the client keeps dialling it, long after its replica took over.
// A reload is one CLUSTER SLOTS, made only while the client is used.
const ClusterReloadInterval = 2 * time.Second

// NewClient returns a new go-redis client; the caller closes it. For a
// cluster URL it is a *redis.ClusterClient, for a sentinel URL a failover
// client (a *redis.Client that follows the master the sentinels name).
func (c *Conn) NewClient() redis.UniversalClient {
	o := *c.opts
	if c.kind == Cluster {
		co := o.Cluster()
		co.ClusterStateReloadInterval = ClusterReloadInterval
		return redis.NewClusterClient(co)
	}
	return redis.NewUniversalClient(&o)
}

// MakeRedisClient implements asynq.RedisConnOpt.
func (c *Conn) MakeRedisClient() any { return c.NewClient() }

// redact masks the password of a URL for logs and messages.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	q := u.Query()
	if q.Has("sentinel_password") {
		q.Set("sentinel_password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// redactURLError drops the URL that url.Parse puts into its errors, since
// it may carry a password.
func redactURLError(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}
