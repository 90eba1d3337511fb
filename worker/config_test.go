package worker

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	redisOpt := asynq.RedisClientOpt{Addr: "127.0.0.1:1"}
	tests := []struct {
		name string
		cfg  Config
		want []string // substrings of the error; none = valid
	}{
		{"zero values take defaults", Config{Redis: redisOpt}, nil},
		{"no redis", Config{}, []string{"Config.Redis is required"}},
		{"typed nil redis", Config{Redis: (*asynq.RedisClientOpt)(nil)}, []string{"Config.Redis is required"}},
		{"negative concurrency", Config{Redis: redisOpt, Concurrency: -1}, []string{"Config.Concurrency is -1"}},
		{"no retry", Config{Redis: redisOpt, MaxRetry: NoRetry}, nil},
		{"max retry below NoRetry", Config{Redis: redisOpt, MaxRetry: -2}, []string{"Config.MaxRetry is -2: must be NoRetry (-1) or more"}},
		{"max retry above the queue's ceiling", Config{Redis: redisOpt, MaxRetry: 1001}, []string{"Config.MaxRetry is 1001: must be at most 1000"}},
		{"cap below base", Config{Redis: redisOpt, RetryBase: time.Minute, RetryCap: time.Second}, []string{"Config.RetryCap (1s) is below Config.RetryBase (1m0s)"}},
		{"negative base", Config{Redis: redisOpt, RetryBase: -time.Second}, []string{"Config.RetryBase is -1s"}},
		{"tiny ttl", Config{Redis: redisOpt, ResultTTL: time.Millisecond}, []string{"Config.ResultTTL is 1ms"}},
		{"negative shutdown", Config{Redis: redisOpt, ShutdownTimeout: -time.Second}, []string{"Config.ShutdownTimeout"}},
		{"bad queue", Config{Redis: redisOpt, Queues: map[string]int{"a{b}": 1, " ": 1, "q": 0}},
			[]string{`queue "a{b}" contains { or }`, "blank queue name", `queue "q" has priority 0`}},
		{"negative rate", Config{Redis: redisOpt, Rate: -1}, []string{"Config.Rate is -1"}},
		{"adoption grace below the producer's heartbeat", Config{Redis: redisOpt, AdoptAfter: time.Second}, []string{"Config.AdoptAfter is 1s: must be at least 2s"}},
		{"rate without identity", Config{Redis: redisOpt, Rate: 20}, []string{"Config.Identity is required when Config.Rate > 0"}},
		{"rate with a limiter needs no identity", Config{Redis: redisOpt, Rate: 20, Limiter: NewLimiter(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), "x", 20)}, nil},
		{"several at once", Config{Concurrency: -1, MaxRetry: -2}, []string{"Config.Redis", "Config.Concurrency", "Config.MaxRetry"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cfg.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate: nil, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestNewDefaultsAndRejections(t *testing.T) {
	t.Parallel()
	mr := miniredis.RunT(t)
	w, err := New(Config{Redis: asynq.RedisClientOpt{Addr: mr.Addr()}}, newStubAPI())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	got := w.Config()
	if got.Concurrency != DefaultConcurrency || got.MaxRetry != DefaultMaxRetry || got.RetryBase != DefaultRetryBase ||
		got.RetryCap != DefaultRetryCap || got.ShutdownTimeout != DefaultShutdownTimeout || got.Queues[DefaultQueue] != 1 ||
		got.ResultTTL != 168*time.Hour || got.LimiterMaxWait != DefaultLimiterMaxWait {
		t.Errorf("defaults not applied: %+v", got)
	}
	ac := w.asynqConfig()
	if ac.TaskCheckInterval != DefaultTaskCheckInterval || ac.DelayedTaskCheckInterval != time.Second || ac.IsFailure == nil ||
		ac.RetryDelayFunc == nil || ac.Logger == nil || ac.LogLevel != asynq.ErrorLevel {
		t.Errorf("asynq config: %+v", ac)
	}
	if _, err := New(Config{Redis: asynq.RedisClientOpt{Addr: mr.Addr()}}, nil); err == nil || !strings.Contains(err.Error(), "api is nil") {
		t.Errorf("New with nil api: %v", err)
	}
	// A rate without a limiter builds the Redis-shared one.
	w3, err := New(Config{Redis: asynq.RedisClientOpt{Addr: mr.Addr()}, Rate: 5, Identity: "1900000109"}, newStubAPI())
	if err != nil {
		t.Fatal(err)
	}
	defer w3.Close()
	if _, ok := w3.limiter.(*Limiter); !ok {
		t.Errorf("limiter = %T, want *Limiter", w3.limiter)
	}
	if w3.limiter.(*Limiter) == nil {
		t.Error("limiter is nil")
	}
	// No rate and no limiter: a nil *Limiter, which is unlimited.
	if l, ok := w.limiter.(*Limiter); !ok || l != nil {
		t.Errorf("limiter = %#v, want a nil *Limiter", w.limiter)
	}
	var ce *ConfigError
	if _, err := New(Config{Redis: asynq.RedisClientOpt{Addr: mr.Addr()}, MaxRetry: -5}, newStubAPI()); !errors.As(err, &ce) || ce.Field != "MaxRetry" || ce.Struct != "Config" {
		t.Errorf("New: %v, want a *ConfigError of MaxRetry", err)
	}
}
