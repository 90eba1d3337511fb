package worker

import (
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
	warnings, err := CheckRedis(t.Context(), rdb)
	if err != nil || len(warnings) != 0 {
		t.Errorf("CheckRedis(miniredis) = %v, %v", warnings, err)
	}
}

func TestCheckRedisReal(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	warnings, err := CheckRedis(t.Context(), rdb)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("CheckRedis(noeviction) = %v, %v", warnings, err)
	}
	if err := rdb.ConfigSet(t.Context(), "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	warnings, err = CheckRedis(t.Context(), rdb)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "allkeys-lru") || !strings.Contains(warnings[0], "noeviction") {
		t.Errorf("warnings = %q, want one naming allkeys-lru and noeviction", warnings)
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
	warnings, err = CheckRedis(t.Context(), app)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "allkeys-lru") {
		t.Errorf("warnings without CONFIG = %q, want one naming allkeys-lru", warnings)
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
