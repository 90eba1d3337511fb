package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/worker"
)

const (
	defaultRedisURL = "redis://127.0.0.1:6379/0"
	redisFlagUsage  = "Redis URL: redis://, rediss://, redis-sentinel:// or redis-cluster:// (see the README)"
)

// workerFlags is every setting of couponq worker: the worker.Config that
// its flags are bound into (its defaults are worker.DefaultConfig's), and
// the settings of the command itself.
type workerFlags struct {
	cfg            worker.Config
	RedisURL       string
	MaxRetry       int
	HTTPAddr       string
	LogFormat      string
	Queues         string
	MonitoringAuth string
	// MonitoringAuthFile holds "user:password", kept out of ps.
	MonitoringAuthFile string
	// warnings are logged once the logger exists.
	warnings []string
}

// workerSettings names each setting's flag, variable and worker.Config
// field once; a ConfigError about a field is reported by its flag.
var workerSettings = []envFlag{
	{"redis", "COUPONQ_REDIS_URL", "Redis"},
	{"concurrency", "COUPONQ_CONCURRENCY", "Concurrency"},
	{"rate", "COUPONQ_RATE", "Rate"},
	{"max-retry", "COUPONQ_MAX_RETRY", "MaxRetry"},
	{"http", "COUPONQ_HTTP_ADDR", ""},
	{"result-ttl", "COUPONQ_RESULT_TTL", "ResultTTL"},
	{"log-format", "COUPONQ_LOG_FORMAT", ""},
	{"shutdown-timeout", "COUPONQ_SHUTDOWN_TIMEOUT", "ShutdownTimeout"},
	{"queues", "COUPONQ_QUEUES", "Queues"},
	{"monitoring-auth", "COUPONQ_MONITORING_AUTH", "MonitoringAuth"},
	{"monitoring-auth-file", "COUPONQ_MONITORING_AUTH_FILE", ""},
	{"retry-base", "COUPONQ_RETRY_BASE", "RetryBase"},
	{"retry-cap", "COUPONQ_RETRY_CAP", "RetryCap"},
	{"adopt-after", "COUPONQ_ADOPT_AFTER", "AdoptAfter"},
	{"allow-eviction", "COUPONQ_ALLOW_EVICTION", "AllowEviction"},
}

// config completes the worker.Config from the command's own settings:
// --max-retry 0 means no retries, and a zero where the library would take a
// default is refused rather than silently replaced.
func (c *workerFlags) config() (worker.Config, error) {
	cfg := c.cfg
	switch {
	case c.MaxRetry < 0:
		return cfg, settingError("MaxRetry", fmt.Sprintf("is %d: must be 0 (no retries) or more", c.MaxRetry))
	case c.MaxRetry == 0:
		cfg.MaxRetry = worker.NoRetry
	default:
		cfg.MaxRetry = c.MaxRetry
	}
	for field, zero := range map[string]bool{
		"Concurrency":     cfg.Concurrency == 0,
		"ResultTTL":       cfg.ResultTTL == 0,
		"ShutdownTimeout": cfg.ShutdownTimeout == 0,
		"RetryBase":       cfg.RetryBase == 0,
		"RetryCap":        cfg.RetryCap == 0,
		"AdoptAfter":      cfg.AdoptAfter == 0,
	} {
		if zero {
			return cfg, settingError(field, "is 0: must be positive")
		}
	}
	qs, err := parseQueues(c.Queues)
	if err != nil {
		return cfg, err
	}
	cfg.Queues = qs
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			return cfg, usageErrorf("--http (COUPONQ_HTTP_ADDR) %q is not host:port: %v", c.HTTPAddr, err)
		}
	}
	return cfg, nil
}

// settingError reports a problem of a worker.Config field by its flag and
// variable.
func settingError(field, problem string) error {
	for _, s := range workerSettings {
		if s.field == field {
			return usageErrorf("--%s (%s) %s", s.flag, s.env, problem)
		}
	}
	return usageErrorf("worker: %s %s", field, problem)
}

// asSettingError turns the worker's *ConfigError into a usage error naming
// the flag; other errors pass unchanged.
func asSettingError(err error) error {
	var ce *worker.ConfigError
	if errors.As(err, &ce) {
		return settingError(ce.Field, ce.Problem)
	}
	return err
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
	cmd.Flags().StringVar(dst, "redis", defaultRedisURL, redisFlagUsage)
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
	c := workerFlags{cfg: worker.DefaultConfig()}
	ef := envFlags(workerSettings)
	cmd := &cobra.Command{
		Use:   "worker",
		Short: "Run the worker: apply queued changes through the WeChat Pay API",
		Long: `Runs the asynq server that applies queued coupon changes through the signed
WeChat Pay API v3, with retries, exponential backoff and a rate limit shared by
every worker through Redis. Runs until SIGINT or SIGTERM, then finishes or hands
back in-flight tasks within --shutdown-timeout.

The HTTP listener (--http) serves /metrics (Prometheus), /healthz, /readyz and
/monitoring/ (asynqmon, read-only). Without --monitoring-auth, /monitoring/
shows queues and task IDs but no payloads, results, Redis INFO or server list,
and a listener reachable from other hosts logs a warning at start. Failed
logins are slowed down per client address (429 after 5, the wait doubling).
` + wechatpayEnvHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Before the environment fills it in: only a password typed on
			// the command line shows in ps.
			if cmd.Flags().Changed("monitoring-auth") {
				c.warnings = append(c.warnings, "--monitoring-auth on the command line is visible to every user of this host (ps, /proc): "+
					"use COUPONQ_MONITORING_AUTH or --monitoring-auth-file instead")
			}
			if err := ef.apply(cmd.Flags(), e.getenv); err != nil {
				return err
			}
			cfg, err := c.config()
			if err != nil {
				return err
			}
			if err := c.readMonitoringAuthFile(); err != nil {
				return err
			}
			return runWorker(cmd.Context(), e, &c, cfg)
		},
	}
	f := cmd.Flags()
	d := &c.cfg
	f.StringVar(&c.RedisURL, "redis", defaultRedisURL, redisFlagUsage)
	f.IntVar(&d.Concurrency, "concurrency", d.Concurrency, "tasks processed at once by this worker")
	f.IntVar(&d.Rate, "rate", d.Rate, "API calls per second for each endpoint, shared by all workers of one identity (mchid, or brand_id in brand mode); 0 = unlimited")
	f.IntVar(&c.MaxRetry, "max-retry", d.MaxRetry, "retries of a retryable failure before the task is failed; 0 = none")
	f.StringVar(&c.HTTPAddr, "http", "127.0.0.1:9090", "address of /metrics, /healthz, /readyz and /monitoring/; empty to disable")
	f.DurationVar(&d.ResultTTL, "result-ttl", d.ResultTTL, "how long result and batch keys live")
	f.StringVar(&c.LogFormat, "log-format", "auto", "auto (colour text on a terminal, JSON otherwise), text or json")
	f.DurationVar(&d.ShutdownTimeout, "shutdown-timeout", d.ShutdownTimeout, "on SIGINT/SIGTERM, how long in-flight tasks may finish before they are handed back")
	f.StringVar(&c.Queues, "queues", worker.DefaultQueue, "queues to serve with priorities: name[=priority],…")
	f.StringVar(&c.MonitoringAuth, "monitoring-auth", "", "user:password for basic auth on /monitoring/ (default: no auth; on the command line it shows in ps: prefer the variable or --monitoring-auth-file)")
	f.StringVar(&c.MonitoringAuthFile, "monitoring-auth-file", "", "file holding user:password for basic auth on /monitoring/ (one line, mode 0600)")
	f.DurationVar(&d.RetryBase, "retry-base", d.RetryBase, "first retry delay; doubles each retry, with full jitter")
	f.DurationVar(&d.RetryCap, "retry-cap", d.RetryCap, "longest retry delay")
	f.DurationVar(&d.AdoptAfter, "adopt-after", d.AdoptAfter, "grace period before the workers enqueue a change its producer accepted but never enqueued (killed), and seal its batch")
	f.BoolVar(&d.AllowEviction, "allow-eviction", false, allowEvictionUsage)
	ef.describe(f)
	return cmd
}

func runWorker(ctx context.Context, e *env, c *workerFlags, cfg worker.Config) error {
	log, err := newLogger(c.LogFormat, e.stderr, slog.LevelInfo)
	if err != nil {
		return err
	}
	for _, w := range c.warnings {
		log.Warn(w)
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
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := worker.NewMetrics(reg)
	cfg.Redis, cfg.Identity, cfg.Logger, cfg.Metrics = rc, api.Identity(), log, metrics
	// worker.New builds the shared limiter from Rate and Identity.
	w, err := worker.New(cfg, api)
	if err != nil {
		return asSettingError(err)
	}
	// What /readyz says and why, for dashboards and alerts.
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "couponq_worker_ready",
		Help: "1 while the worker takes tasks and can do them (what /readyz says), 0 otherwise.",
	}, func() float64 {
		if w.Ready(context.Background()) != nil {
			return 0
		}
		return 1
	}), prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "couponq_wechatpay_clock_skew_seconds",
		Help: "WeChat Pay's clock minus the local one, as the last answer of the last minute showed it (0 when none); the worker stops beyond 240 s.",
	}, func() float64 {
		d, _ := api.ClockSkew()
		return d.Seconds()
	}))

	if c.HTTPAddr != "" {
		h, closer, err := worker.NewHTTPHandler(worker.HTTPConfig{
			Redis:          rc,
			Registry:       reg,
			MonitoringAuth: c.MonitoringAuth,
			Ready:          w.Ready,
		})
		if err != nil {
			return asSettingError(err)
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
		warnListener(log, ln.Addr(), c.MonitoringAuth != "")
		log.Info("serving http", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz /monitoring/")
	}
	log.Info("worker starting", "redis", rc.String(), "mode", string(api.Mode()), "identity", api.Identity(),
		"concurrency", cfg.Concurrency, "rate", cfg.Rate, "max_retry", cfg.MaxRetry, "queues", c.Queues)
	return evictionHint(w.Run(ctx))
}

const allowEvictionUsage = "run even if Redis's maxmemory-policy evicts keys (it may drop tasks and results)"

// evictionHint adds the way out to the refusal of an evicting Redis.
func evictionHint(err error) error {
	var ee *worker.EvictionError
	if errors.As(err, &ee) {
		return fmt.Errorf("%w; --allow-eviction (COUPONQ_ALLOW_EVICTION=true) runs anyway", err)
	}
	return err
}

// enqueueTopology finds which Redis topology enqueue runs on, for its
// stderr, and refuses one couponq cannot run on (worker.CheckTopology)
// before anything is written.
func enqueueTopology(ctx context.Context, rc *redisurl.Conn, rdb redis.UniversalClient) (redisurl.Topology, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	top, err := worker.CheckTopology(cctx, rc, rdb)
	if err != nil {
		return top, fmt.Errorf("%w (nothing was enqueued)", err)
	}
	return top, nil
}

// checkRedisForEnqueue refuses an evicting Redis unless allowed, and warns
// on stderr when the policy cannot be read.
func checkRedisForEnqueue(ctx context.Context, e *env, rdb redis.UniversalClient, allow bool) error {
	chk, err := worker.CheckRedis(ctx, rdb)
	if err != nil {
		return err
	}
	for _, w := range chk.Warnings() {
		fmt.Fprintln(e.stderr, "warning: "+w)
	}
	if ev := chk.Eviction(); ev != nil {
		if !allow {
			return evictionHint(ev)
		}
		fmt.Fprintln(e.stderr, "warning: "+ev.Error())
	}
	return nil
}

// readMonitoringAuthFile takes the monitoring password from
// --monitoring-auth-file. Its errors name the flag, never the content.
func (c *workerFlags) readMonitoringAuthFile() error {
	const name = "--monitoring-auth-file (COUPONQ_MONITORING_AUTH_FILE)"
	if c.MonitoringAuthFile == "" {
		return nil
	}
	if c.MonitoringAuth != "" {
		return usageErrorf("%s and --monitoring-auth (COUPONQ_MONITORING_AUTH) are both set: use one", name)
	}
	b, err := os.ReadFile(c.MonitoringAuthFile)
	if err != nil {
		return usageErrorf("%s: %v", name, err)
	}
	auth := strings.TrimRight(string(b), "\r\n")
	if user, pass, ok := strings.Cut(auth, ":"); !ok || user == "" || pass == "" || strings.ContainsAny(auth, "\r\n") {
		return usageErrorf("%s: %s must hold one line user:password with a non-empty user and password", name, c.MonitoringAuthFile)
	}
	if fi, err := os.Stat(c.MonitoringAuthFile); err == nil && fi.Mode().Perm()&0o077 != 0 {
		c.warnings = append(c.warnings, fmt.Sprintf("%s: %s is readable by other users (mode %v): chmod 600 it", name, c.MonitoringAuthFile, fi.Mode().Perm()))
	}
	c.MonitoringAuth = auth
	return nil
}

// warnListener logs, as warnings, what the HTTP listener at addr exposes to
// other hosts (worker.ListenerWarnings).
func warnListener(log *slog.Logger, addr net.Addr, monitoringAuth bool) {
	for _, w := range worker.ListenerWarnings(addr, monitoringAuth) {
		log.Warn(w, "addr", addr.String())
	}
}
