package worker

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Minimum Redis version: asynq's archive script uses ZRANGE … BYSCORE.
const minRedisMajor, minRedisMinor = 6, 2

// RedisCheck is what CheckRedis found of a Redis server.
type RedisCheck struct {
	// Version is the server's version.
	Version string
	// Policy is its maxmemory-policy; "" when it could not be read, and
	// then PolicyErr says why (managed Redis often refuses CONFIG and
	// hides it).
	Policy    string
	PolicyErr error
}

// Evicting reports a known maxmemory-policy other than noeviction.
func (c RedisCheck) Evicting() bool { return c.Policy != "" && c.Policy != "noeviction" }

// Eviction returns an *EvictionError when the policy evicts, else nil.
func (c RedisCheck) Eviction() error {
	if !c.Evicting() {
		return nil
	}
	return &EvictionError{Policy: c.Policy}
}

// Warnings lists what CheckRedis could not settle: a policy it could not
// read.
func (c RedisCheck) Warnings() []string {
	if c.PolicyErr == nil {
		return nil
	}
	return []string{fmt.Sprintf("cannot read maxmemory-policy (%v): make sure it is noeviction, or Redis may silently drop queued tasks", c.PolicyErr)}
}

// EvictionError is a Redis whose maxmemory-policy evicts keys: under
// memory pressure it silently drops queued tasks, leases and results, and
// asynq and couponq recreate some of them empty.
type EvictionError struct {
	Policy string // the maxmemory-policy in effect
}

func (e *EvictionError) Error() string {
	return fmt.Sprintf("Redis maxmemory-policy is %s, not noeviction: under memory pressure Redis would silently evict queued tasks, leases and results (set maxmemory-policy noeviction)", e.Policy)
}

// CheckRedis checks the server behind rdb before it is used. A Redis that
// does not answer, or is older than 6.2 (asynq's archive needs 6.2), is an
// error. The maxmemory-policy comes from CONFIG GET or, where CONFIG is
// disabled (managed Redis), from INFO memory; the caller decides what an
// evicting one means (RedisCheck.Eviction). miniredis never evicts. On a
// cluster every master is checked.
func CheckRedis(ctx context.Context, rdb redis.UniversalClient) (RedisCheck, error) {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return checkClusterMasters(ctx, cc) // each master, not one at random
	}
	version, server, err := redisVersion(ctx, rdb)
	if err != nil {
		return RedisCheck{}, fmt.Errorf("worker: check Redis: %w", err)
	}
	if err := checkVersion(version); err != nil {
		return RedisCheck{Version: version}, err
	}
	if server == "miniredis" {
		return RedisCheck{Version: version, Policy: "noeviction"}, nil // in-memory test server
	}
	policy, perr := maxmemoryPolicy(ctx, rdb)
	return RedisCheck{Version: version, Policy: policy, PolicyErr: perr}, nil
}

// redisVersion reads the server version from INFO server, or from HELLO
// where INFO lacks it (miniredis).
func redisVersion(ctx context.Context, rdb redis.UniversalClient) (version, server string, err error) {
	info, ierr := rdb.Info(ctx, "server").Result()
	if ierr == nil {
		if v := infoField(info, "redis_version"); v != "" {
			return v, "redis", nil
		}
	}
	res, herr := rdb.Do(ctx, "HELLO", "3").Result()
	if herr != nil {
		if ierr != nil {
			return "", "", fmt.Errorf("INFO server: %w", ierr)
		}
		return "", "", fmt.Errorf("no redis_version in INFO server, and HELLO: %w", herr)
	}
	m, ok := res.(map[any]any)
	if !ok {
		return "", "", fmt.Errorf("HELLO answered %T", res)
	}
	version, _ = m["version"].(string)
	server, _ = m["server"].(string)
	if version == "" {
		return "", "", fmt.Errorf("HELLO named no version")
	}
	return version, server, nil
}

func maxmemoryPolicy(ctx context.Context, rdb redis.UniversalClient) (string, error) {
	cfg, cerr := rdb.ConfigGet(ctx, "maxmemory-policy").Result()
	if cerr == nil {
		if p := cfg["maxmemory-policy"]; p != "" {
			return p, nil
		}
	}
	info, ierr := rdb.Info(ctx, "memory").Result()
	if ierr == nil {
		if p := infoField(info, "maxmemory_policy"); p != "" {
			return p, nil
		}
	}
	if cerr != nil {
		return "", fmt.Errorf("CONFIG GET: %w; INFO memory: %v", cerr, ierr)
	}
	return "", fmt.Errorf("neither CONFIG GET nor INFO memory names it")
}

// infoField returns field's value in an INFO answer.
func infoField(info, field string) string {
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if ok && k == field {
			return v
		}
	}
	return ""
}

// checkVersion refuses a Redis older than 6.2.
func checkVersion(version string) error {
	major, minor, ok := parseVersion(version)
	if !ok {
		return fmt.Errorf("worker: check Redis: unreadable version %q", version)
	}
	if major < minRedisMajor || major == minRedisMajor && minor < minRedisMinor {
		return fmt.Errorf("worker: Redis %s is too old: couponq needs Redis ≥ %d.%d (asynq's archive uses ZRANGE … BYSCORE)",
			version, minRedisMajor, minRedisMinor)
	}
	return nil
}

func parseVersion(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}
