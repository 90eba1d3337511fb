// Package redisurl parses couponq's Redis URLs (redis://, rediss://,
// redis-sentinel://) into go-redis options that also serve
// as an asynq.RedisConnOpt.
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
	url  string // with the password masked, for messages
}

// Parse parses one of:
//
//	redis://[user:password@]host:port[/db]
//	rediss://[user:password@]host:port[/db]            (TLS)
//	redis-sentinel://[user:password@]h1:p1,h2:p2[/db]?master=NAME[&sentinel_password=P]
//
// Query parameters dial_timeout, read_timeout, write_timeout (Go durations)
// and pool_size apply to every scheme.
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
	switch u.Scheme {
	case "redis", "rediss":
		if u.Host == "" {
			return nil, fmt.Errorf("malformed Redis URL %s: no host", redact(s))
		}
		o.Addrs = []string{hostPort(u.Host)}
		if u.Scheme == "rediss" {
			o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: u.Hostname()}
		}
	case "redis-sentinel":
		if u.Host == "" {
			return nil, fmt.Errorf("malformed Redis URL %s: no sentinel address", redact(s))
		}
		for _, h := range strings.Split(u.Host, ",") {
			o.Addrs = append(o.Addrs, hostPort(h))
		}
		o.MasterName = q.Get("master")
		if o.MasterName == "" {
			return nil, fmt.Errorf("malformed Redis URL %s: redis-sentinel needs ?master=NAME", redact(s))
		}
		o.SentinelPassword = q.Get("sentinel_password")
	default:
		return nil, fmt.Errorf("unsupported Redis URL scheme %q (use redis://, rediss:// or redis-sentinel://)", u.Scheme)
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
	return &Conn{opts: o, url: redact(s)}, nil
}

func hostPort(h string) string {
	if _, _, err := net.SplitHostPort(h); err == nil {
		return h
	}
	return net.JoinHostPort(h, "6379")
}

// String is the URL with any password masked.
func (c *Conn) String() string { return c.url }

// Options returns a copy of the parsed options.
func (c *Conn) Options() redis.UniversalOptions { return *c.opts }

// NewClient returns a new go-redis client; the caller closes it.
func (c *Conn) NewClient() redis.UniversalClient {
	o := *c.opts
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
