package worker

import (
	"errors"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
)

func TestCheckVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		version string
		ok      bool
	}{
		{"6.2.0", true}, {"6.2.14", true}, {"7.0.15", true}, {"8.4.0", true}, {"10.0.0", true},
		{"6.0.20", false}, {"5.0.7", false}, {"4.0", false}, {"", false}, {"seven", false},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			t.Parallel()
			if err := checkVersion(tt.version); (err == nil) != tt.ok {
				t.Errorf("checkVersion(%q) = %v, want ok=%v", tt.version, err, tt.ok)
			}
		})
	}
	if err := checkVersion("6.0.9"); err == nil || !strings.Contains(err.Error(), "too old") || !strings.Contains(err.Error(), "6.2") {
		t.Errorf("message: %v", err)
	}
}

func TestCheckRedisMiniredis(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	chk, err := CheckRedis(t.Context(), rdb)
	if err != nil || len(chk.Warnings()) != 0 || chk.Eviction() != nil {
		t.Errorf("CheckRedis(miniredis) = %+v, %v", chk, err)
	}
}

func TestCheckRedisReal(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	chk, err := CheckRedis(t.Context(), rdb)
	if err != nil || len(chk.Warnings()) != 0 || chk.Eviction() != nil {
		t.Fatalf("CheckRedis(noeviction) = %+v, %v", chk, err)
	}
	if err := rdb.ConfigSet(t.Context(), "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	chk, err = CheckRedis(t.Context(), rdb)
	if err != nil {
		t.Fatal(err)
	}
	var ee *EvictionError
	if e := chk.Eviction(); !errors.As(e, &ee) || ee.Policy != "allkeys-lru" || !strings.Contains(e.Error(), "noeviction") {
		t.Errorf("Eviction() = %v, want an *EvictionError naming allkeys-lru and noeviction", e)
	}

	// Managed Redis often refuses CONFIG: the policy comes from INFO memory.
	if err := rdb.Do(t.Context(), "ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all", "-config").Err(); err != nil {
		t.Fatal(err)
	}
	app := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "app", Password: "s3cret"})
	defer app.Close()
	if err := app.ConfigGet(t.Context(), "maxmemory-policy").Err(); err == nil {
		t.Fatal("CONFIG GET allowed for the restricted user")
	}
	chk, err = CheckRedis(t.Context(), app)
	if err != nil {
		t.Fatal(err)
	}
	if chk.Policy != "allkeys-lru" || chk.Eviction() == nil {
		t.Errorf("CheckRedis without CONFIG = %+v, want allkeys-lru from INFO memory", chk)
	}

	// Neither CONFIG nor INFO: the policy is unknown, a warning only.
	if err := rdb.Do(t.Context(), "ACL", "SETUSER", "blind", "on", ">s3cret", "~*", "&*", "+@all", "-config", "-info").Err(); err != nil {
		t.Fatal(err)
	}
	blind := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "blind", Password: "s3cret"})
	defer blind.Close()
	chk, err = CheckRedis(t.Context(), blind)
	if err != nil {
		t.Fatal(err)
	}
	if w := chk.Warnings(); chk.Policy != "" || chk.Eviction() != nil || len(w) != 1 || !strings.Contains(w[0], "noeviction") {
		t.Errorf("CheckRedis without CONFIG and INFO = %+v, warnings %q: want unknown, one warning", chk, w)
	}
}

func TestInfoField(t *testing.T) {
	t.Parallel()
	info := "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n# Memory\r\nmaxmemory_policy:volatile-lru\r\n"
	if got := infoField(info, "redis_version"); got != "7.0.15" {
		t.Errorf("redis_version = %q", got)
	}
	if got := infoField(info, "maxmemory_policy"); got != "volatile-lru" {
		t.Errorf("maxmemory_policy = %q", got)
	}
	if got := infoField(info, "missing"); got != "" {
		t.Errorf("missing = %q", got)
	}
}
