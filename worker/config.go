package worker

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
)

// Defaults of Config.
const (
	DefaultQueue           = tasks.DefaultQueue // one name for producer and worker
	DefaultConcurrency     = 20
	DefaultMaxRetry        = 10
	DefaultRetryBase       = time.Second
	DefaultRetryCap        = 5 * time.Minute
	DefaultShutdownTimeout = 30 * time.Second
	DefaultLimiterMaxWait  = 2 * time.Second
	// NoRetry as Config.MaxRetry fails a task on its first retryable
	// failure (0 takes DefaultMaxRetry, as every zero field takes its
	// default).
	NoRetry = -1
	// DefaultTaskCheckInterval is how long an idle processor sleeps between
	// polls of empty queues (asynq's default is 1 s; lower means less
	// latency for a new task and more Redis traffic).
	DefaultTaskCheckInterval = 100 * time.Millisecond
	// DefaultDelayedTaskCheckInterval is how often due retries are moved to
	// pending (asynq's default is 5 s).
	DefaultDelayedTaskCheckInterval = time.Second
	// DefaultArchiveSweepInterval is how often archived tasks are checked
	// for results that never became terminal.
	DefaultArchiveSweepInterval = time.Minute
	// DefaultAdoptAfter is the grace period after which a change its
	// producer accepted but never handed to asynq is enqueued by the
	// workers, and an open batch whose producer is no longer seen sealed.
	DefaultAdoptAfter = time.Minute
	// MinAdoptAfter keeps the grace period well above the producer's
	// heartbeat (500 ms), so a live producer's batch is never sealed.
	MinAdoptAfter = 2 * time.Second
	// DefaultProbeInterval is how often a worker that does not take tasks
	// asks WeChat Pay again whether it accepts its credentials.
	DefaultProbeInterval = 5 * time.Second
	// DefaultRedisCheckInterval is how often a running worker checks Redis
	// again (PING and maxmemory-policy), as asynq's health check does.
	DefaultRedisCheckInterval = 15 * time.Second
)

// Config configures a Worker. Zero values take the defaults; New rejects
// values that cannot work, naming the field.
type Config struct {
	// Redis is where the queues and results live (a *redisurl.Conn).
	// Required.
	Redis asynq.RedisConnOpt
	// Queues to serve with their priorities. Default {"couponq": 1}.
	Queues map[string]int
	// Concurrency is the number of tasks processed at once. Default 20.
	Concurrency int
	// MaxRetry: a task whose call still fails with a retryable error after
	// MaxRetry retries is failed. Default 10; NoRetry for none; at most
	// 1000, the asynq MaxRetry couponq enqueues with, so that the worker
	// and not asynq decides when a task fails.
	MaxRetry int
	// RetryBase and RetryCap shape the retry delay: full jitter over
	// min(RetryBase·2^n, RetryCap). Defaults 1 s and 5 min.
	RetryBase, RetryCap time.Duration
	// ResultTTL is how long result and batch keys live after their last
	// write. Default 168h.
	ResultTTL time.Duration
	// ShutdownTimeout is how long Run waits for in-flight tasks once its
	// context is done before handing them back to the queue. Default 30 s.
	ShutdownTimeout time.Duration
	// Identity is the rate-limit bucket identity (Client.Identity()).
	// Required when Rate > 0 and Limiter is nil.
	Identity string
	// Rate is the API calls per second per endpoint per identity used to
	// build a Limiter when Limiter is nil; 0 = unlimited.
	Rate int
	// AdoptAfter is the grace period of the adoption sweep (see
	// tasks.Adopter): changes accepted longer ago and still queued without
	// an asynq task are enqueued, batches whose producer was not seen for
	// as long are sealed. Default 1 min; at least MinAdoptAfter.
	AdoptAfter time.Duration
	// LimiterMaxWait is the longest a handler holds its task waiting for a
	// rate-limit slot; a slot further away hands the task back to the queue
	// without counting a failure. Default 2 s.
	LimiterMaxWait time.Duration
	// Logger receives the worker's and asynq's logs. Default: discarded.
	Logger *slog.Logger
	// Metrics receives call, retry, limiter and outcome observations.
	// nil = none.
	Metrics *Metrics
	// Limiter is the shared rate limiter. nil = built from Rate and
	// Identity, or unlimited when Rate is 0.
	Limiter *Limiter
	// AllowEviction lets Run start on a Redis whose maxmemory-policy
	// evicts keys (logged as an error); by default Run refuses it with an
	// *EvictionError, and Ready reports it while it holds.
	AllowEviction bool
	// ProbeInterval is how often a worker that is not taking tasks (its
	// credentials not verified yet, or refused) asks WeChat Pay again.
	// Default 5 s.
	ProbeInterval time.Duration
	// RedisCheckInterval is how often Run checks Redis again while it
	// runs (PING, maxmemory-policy) for Ready. Default 15 s.
	RedisCheckInterval time.Duration
}

// DefaultConfig returns a Config with every default filled in, Redis
// and Identity left to the caller; cmd binds its flags into it so that
// each default is stated once.
func DefaultConfig() Config {
	return Config{Rate: 20}.withDefaults()
}

// ConfigError is a setting of Config or HTTPConfig that cannot work.
type ConfigError struct {
	Struct  string // "Config" or "HTTPConfig"
	Field   string // the field's name
	Problem string // what is wrong, e.g. "is -2: must be NoRetry (-1) or more"
}

// Error implements error.
func (e *ConfigError) Error() string {
	return "worker: " + e.Struct + "." + e.Field + " " + e.Problem
}

// withDefaults returns cfg with zero values replaced by defaults.
func (cfg Config) withDefaults() Config {
	if len(cfg.Queues) == 0 {
		cfg.Queues = map[string]int{DefaultQueue: 1}
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.MaxRetry == 0 {
		cfg.MaxRetry = DefaultMaxRetry
	}
	if cfg.RetryBase == 0 {
		cfg.RetryBase = DefaultRetryBase
	}
	if cfg.RetryCap == 0 {
		cfg.RetryCap = max(DefaultRetryCap, cfg.RetryBase)
	}
	if cfg.ResultTTL == 0 {
		cfg.ResultTTL = tasks.DefaultResultTTL
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.LimiterMaxWait == 0 {
		cfg.LimiterMaxWait = DefaultLimiterMaxWait
	}
	if cfg.AdoptAfter == 0 {
		cfg.AdoptAfter = DefaultAdoptAfter
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.RedisCheckInterval == 0 {
		cfg.RedisCheckInterval = DefaultRedisCheckInterval
	}
	return cfg
}

// Validate reports every setting of cfg (after defaults) that cannot work,
// each naming its field.
func (cfg Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &ConfigError{Struct: "Config", Field: field, Problem: fmt.Sprintf(format, args...)})
	}
	if nilConnOpt(cfg.Redis) {
		bad("Redis", "is required (a *redisurl.Conn from redisurl.Parse)")
	}
	for q, p := range cfg.Queues {
		switch {
		case strings.TrimSpace(q) == "":
			bad("Queues", "has a blank queue name")
		case strings.ContainsAny(q, "{}"):
			bad("Queues", "queue %q contains { or }, which breaks asynq's Redis Cluster hash tag", q)
		}
		if p <= 0 {
			bad("Queues", "queue %q has priority %d: must be ≥ 1", q, p)
		}
	}
	if cfg.Concurrency < 0 {
		bad("Concurrency", "is %d: must be ≥ 1 (0 for the default %d)", cfg.Concurrency, DefaultConcurrency)
	}
	switch {
	case cfg.MaxRetry < NoRetry:
		bad("MaxRetry", "is %d: must be NoRetry (-1) or more", cfg.MaxRetry)
	case cfg.MaxRetry > results.MaxRetry:
		bad("MaxRetry", "is %d: must be at most %d, the queue's retry ceiling", cfg.MaxRetry, results.MaxRetry)
	}
	if cfg.RetryBase < 0 {
		bad("RetryBase", "is %v: must be positive", cfg.RetryBase)
	}
	if cfg.RetryCap < 0 {
		bad("RetryCap", "is %v: must be positive", cfg.RetryCap)
	}
	if cfg.RetryBase > 0 && cfg.RetryCap > 0 && cfg.RetryCap < cfg.RetryBase {
		bad("RetryCap", "(%v) is below Config.RetryBase (%v)", cfg.RetryCap, cfg.RetryBase)
	}
	if cfg.ResultTTL < 0 {
		bad("ResultTTL", "is %v: must be positive", cfg.ResultTTL)
	} else if cfg.ResultTTL > 0 && cfg.ResultTTL < time.Second {
		bad("ResultTTL", "is %v: must be at least 1s", cfg.ResultTTL)
	}
	if cfg.ShutdownTimeout < 0 {
		bad("ShutdownTimeout", "is %v: must be positive", cfg.ShutdownTimeout)
	}
	if cfg.AdoptAfter != 0 && cfg.AdoptAfter < MinAdoptAfter {
		bad("AdoptAfter", "is %v: must be at least %v", cfg.AdoptAfter, MinAdoptAfter)
	}
	if cfg.LimiterMaxWait < 0 {
		bad("LimiterMaxWait", "is %v: must be positive", cfg.LimiterMaxWait)
	}
	if cfg.ProbeInterval < 0 {
		bad("ProbeInterval", "is %v: must be positive", cfg.ProbeInterval)
	}
	if cfg.RedisCheckInterval < 0 {
		bad("RedisCheckInterval", "is %v: must be positive", cfg.RedisCheckInterval)
	}
	if cfg.Rate < 0 {
		bad("Rate", "is %d: must be ≥ 0 (0 = unlimited)", cfg.Rate)
	}
	if cfg.Rate > 0 && cfg.Limiter == nil && cfg.Identity == "" {
		bad("Identity", "is required when Config.Rate > 0 (the mchid, or brand_id in brand mode)")
	}
	return errors.Join(errs...)
}

// nilConnOpt reports whether opt is nil or a nil pointer in the interface
// (a nil *redisurl.Conn), which would panic in MakeRedisClient.
func nilConnOpt(opt asynq.RedisConnOpt) bool {
	if opt == nil {
		return true
	}
	v := reflect.ValueOf(opt)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
