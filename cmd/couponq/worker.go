package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/worker"
)

const defaultRedisURL = "redis://127.0.0.1:6379/0"

// workerConfig is every setting of couponq worker, from flags with
// environment fallbacks.
type workerConfig struct {
	RedisURL        string
	Concurrency     int
	Rate            int
	MaxRetry        int
	HTTPAddr        string
	ResultTTL       time.Duration
	LogFormat       string
	ShutdownTimeout time.Duration
	Queues          string
	MonitoringAuth  string
	RetryBase       time.Duration
	RetryCap        time.Duration
}

// Validate names the flag and variable at fault.
func (c *workerConfig) Validate() error {
	switch {
	case c.Concurrency < 1:
		return usageErrorf("--concurrency (COUPONQ_CONCURRENCY) must be at least 1, got %d", c.Concurrency)
	case c.Rate < 0:
		return usageErrorf("--rate (COUPONQ_RATE) must be 0 (unlimited) or more, got %d", c.Rate)
	case c.MaxRetry < 0:
		return usageErrorf("--max-retry (COUPONQ_MAX_RETRY) must be 0 or more, got %d", c.MaxRetry)
	case c.ResultTTL <= 0:
		return usageErrorf("--result-ttl (COUPONQ_RESULT_TTL) must be positive, got %s", c.ResultTTL)
	case c.ShutdownTimeout <= 0:
		return usageErrorf("--shutdown-timeout (COUPONQ_SHUTDOWN_TIMEOUT) must be positive, got %s", c.ShutdownTimeout)
	case c.RetryBase <= 0 || c.RetryCap < c.RetryBase:
		return usageErrorf("--retry-base and --retry-cap must be positive with base ≤ cap, got %s and %s", c.RetryBase, c.RetryCap)
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return usageErrorf("--http (COUPONQ_HTTP_ADDR) %q is not host:port: %v", c.HTTPAddr, err)
		}
	}
	if c.MonitoringAuth != "" {
		if u, p, ok := strings.Cut(c.MonitoringAuth, ":"); !ok || u == "" || p == "" {
			return usageErrorf("--monitoring-auth (COUPONQ_MONITORING_AUTH) must be user:password")
		}
	}
	if _, err := parseQueues(c.Queues); err != nil {
		return err
	}
	return nil
}

// parseQueues reads "name[=priority],…" (priority default 1).
func parseQueues(s string) (map[string]int, error) {
	qs := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, prio, hasPrio := strings.Cut(part, "=")
		p := 1
		if hasPrio {
			n, err := strconv.Atoi(prio)
			if err != nil || n < 1 {
				return nil, usageErrorf("--queues (COUPONQ_QUEUES): priority of %q must be a positive number", name)
			}
			p = n
		}
		if name == "" || strings.ContainsAny(name, "{}: ") {
			return nil, usageErrorf("--queues (COUPONQ_QUEUES): invalid queue name %q", name)
		}
		qs[name] = p
	}
	if len(qs) == 0 {
		return nil, usageErrorf("--queues (COUPONQ_QUEUES) names no queue")
	}
	return qs, nil
}

func addRedisFlag(cmd *cobra.Command, ef *envFlags, dst *string) {
	cmd.Flags().StringVar(dst, "redis", defaultRedisURL, "Redis URL: redis://, rediss:// or redis-sentinel://h1:p1,h2:p2/0?master=NAME")
	ef.add(cmd.Flags(), "redis", "COUPONQ_REDIS_URL")
}

func parseRedis(s string) (*redisurl.Conn, error) {
	c, err := redisurl.Parse(s)
	if err != nil {
		return nil, usageErrorf("--redis (COUPONQ_REDIS_URL): %v", err)
	}
	return c, nil
}

func newWorkerCmd(e *env) *cobra.Command {
	var c workerConfig
	var ef envFlags
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run the worker: apply queued changes through the WeChat Pay API",
		Long: `Runs the asynq server that applies queued coupon changes through the signed
WeChat Pay API v3, with retries, exponential backoff and a rate limit shared by
every worker through Redis. Runs until SIGINT or SIGTERM, then finishes or hands
back in-flight tasks within --shutdown-timeout.

The HTTP listener (--http) serves /metrics (Prometheus), /healthz, /readyz and
/monitoring/ (asynqmon, read-only).
` + wechatpayEnvHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := ef.apply(cmd.Flags(), e.getenv); err != nil {
				return err
			}
			if err := c.Validate(); err != nil {
				return err
			}
			return runWorker(cmd.Context(), e, &c)
		},
	}
	f := cmd.Flags()
	addRedisFlag(cmd, &ef, &c.RedisURL)
	f.IntVar(&c.Concurrency, "concurrency", 20, "tasks processed at once by this worker")
	ef.add(f, "concurrency", "COUPONQ_CONCURRENCY")
	f.IntVar(&c.Rate, "rate", 20, "API calls per second for each endpoint, shared by all workers of one identity (mchid, or brand_id in brand mode); 0 = unlimited")
	ef.add(f, "rate", "COUPONQ_RATE")
	f.IntVar(&c.MaxRetry, "max-retry", 10, "retries of a retryable failure before the task is failed")
	ef.add(f, "max-retry", "COUPONQ_MAX_RETRY")
	f.StringVar(&c.HTTPAddr, "http", "127.0.0.1:9090", "address of /metrics, /healthz, /readyz and /monitoring/; empty to disable")
	ef.add(f, "http", "COUPONQ_HTTP_ADDR")
	f.DurationVar(&c.ResultTTL, "result-ttl", tasks.DefaultResultTTL, "how long result and batch keys live")
	ef.add(f, "result-ttl", "COUPONQ_RESULT_TTL")
	f.StringVar(&c.LogFormat, "log-format", "auto", "auto (colour text on a terminal, JSON otherwise), text or json")
	ef.add(f, "log-format", "COUPONQ_LOG_FORMAT")
	f.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGINT/SIGTERM, how long in-flight tasks may finish before they are handed back")
	ef.add(f, "shutdown-timeout", "COUPONQ_SHUTDOWN_TIMEOUT")
	f.StringVar(&c.Queues, "queues", tasks.DefaultQueue, "queues to serve with priorities: name[=priority],…")
	ef.add(f, "queues", "COUPONQ_QUEUES")
	f.StringVar(&c.MonitoringAuth, "monitoring-auth", "", "user:password for basic auth on /monitoring/ (default: no auth)")
	ef.add(f, "monitoring-auth", "COUPONQ_MONITORING_AUTH")
	f.DurationVar(&c.RetryBase, "retry-base", time.Second, "first retry delay; doubles each retry, with full jitter")
	ef.add(f, "retry-base", "COUPONQ_RETRY_BASE")
	f.DurationVar(&c.RetryCap, "retry-cap", 5*time.Minute, "longest retry delay")
	ef.add(f, "retry-cap", "COUPONQ_RETRY_CAP")
	return cmd
}

func runWorker(ctx context.Context, e *env, c *workerConfig) error {
	log, err := newLogger(c.LogFormat, e.stderr, slog.LevelInfo)
	if err != nil {
		return err
	}
	rc, err := parseRedis(c.RedisURL)
	if err != nil {
		return err
	}
	api, err := wechatpayClient(e.getenv, wechatpay.WithLogger(log))
	if err != nil {
		return err
	}
	defer api.Close()
	queues, _ := parseQueues(c.Queues)
	rdb := rc.NewClient()
	defer rdb.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := worker.NewMetrics(reg)
	w, err := worker.New(worker.Config{
		Redis:           rc,
		Queues:          queues,
		Concurrency:     c.Concurrency,
		MaxRetry:        c.MaxRetry,
		RetryBase:       c.RetryBase,
		RetryCap:        c.RetryCap,
		ResultTTL:       c.ResultTTL,
		ShutdownTimeout: c.ShutdownTimeout,
		Identity:        api.Identity(),
		Rate:            c.Rate,
		Logger:          log,
		Metrics:         metrics,
		Limiter:         worker.NewLimiter(rdb, api.Identity(), c.Rate, worker.WithLimiterMetrics(metrics)),
	}, api)
	if err != nil {
		return usageErrorf("%v", err)
	}

	if c.HTTPAddr != "" {
		h, closer, err := worker.NewHTTPHandler(worker.HTTPConfig{
			Redis:          rc,
			Registry:       reg,
			MonitoringAuth: c.MonitoringAuth,
			Ready:          api.Ready,
		})
		if err != nil {
			return err
		}
		defer closer.Close()
		ln, err := net.Listen("tcp", c.HTTPAddr)
		if err != nil {
			return fmt.Errorf("--http %s: %w", c.HTTPAddr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http listener stopped", "err", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		log.Info("serving http", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz /monitoring/")
	}
	log.Info("worker starting", "redis", rc.String(), "mode", string(api.Mode()), "identity", api.Identity(),
		"concurrency", c.Concurrency, "rate", c.Rate, "queues", c.Queues)
	return w.Run(ctx)
}
