package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/autopipe"
	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
)

// Worker is couponq's asynq server: it applies coupon changes through the
// API and records every outcome in the result hashes of package tasks.
type Worker struct {
	cfg   Config
	api   API
	rdb   redis.UniversalClient
	store *results.Store // on rdb through autopipe
	// closeStore stops the store's automatic pipelining.
	closeStore func() error
	log        *slog.Logger
	limiter    rateLimiter
	metrics    metricsSink
	policy     RetryPolicy
	mux        *asynq.ServeMux
	adopter    *tasks.Adopter
	waker      *tasks.Waker // wakes the changes a finished one lets start

	// asynq's view of the task being handled; replaced in tests, where
	// ProcessTask runs without asynq's context.
	retryCount func(context.Context) (int, bool)

	sweepInterval time.Duration
	closeOnce     sync.Once

	// gate opens while WeChat Pay accepts the credentials; checker probes
	// them (nil: a test stub, always able).
	gate    *gate
	checker credentialChecker
	state   runState
}

var errNotRunning = errors.New("worker: not running")

// New validates cfg, fills in its defaults and returns a Worker that calls
// api. It opens a Redis client for results (closed by Close); Run starts
// the asynq server.
func New(cfg Config, api API) (*Worker, error) {
	if api == nil {
		return nil, errors.New("worker: New: api is nil")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	rdb, ok := cfg.Redis.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("worker: Config.Redis (%T) does not make a go-redis v9 client", cfg.Redis)
	}
	// The handlers' store calls share round trips (package autopipe).
	storeRDB := autopipe.New(rdb, 2, 256)
	w := &Worker{
		cfg:           cfg,
		api:           api,
		rdb:           rdb,
		closeStore:    storeRDB.Close,
		store:         results.NewStore(storeRDB, results.WithResultTTL(cfg.ResultTTL)),
		log:           cfg.Logger,
		limiter:       cfg.Limiter,
		metrics:       cfg.Metrics,
		policy:        RetryPolicy{Base: cfg.RetryBase, Cap: cfg.RetryCap},
		retryCount:    asynq.GetRetryCount,
		sweepInterval: DefaultArchiveSweepInterval,
		adopter:       tasks.NewAdopter(rdb, cfg.ResultTTL),
		waker:         tasks.NewWaker(rdb),
	}
	if cfg.Limiter == nil && cfg.Rate > 0 {
		w.limiter = NewLimiter(rdb, cfg.Identity, cfg.Rate, WithLimiterMetrics(cfg.Metrics))
	}
	w.gate = newGate(w.log)
	w.checker, _ = api.(credentialChecker)
	w.state.allowEvic = cfg.AllowEviction
	w.mux = asynq.NewServeMux()
	w.mux.HandleFunc(tasks.TypeUpdate, w.process)
	w.mux.HandleFunc(tasks.TypeDeactivate, w.process)
	w.mux.HandleFunc(tasks.TypeGet, w.process)
	return w, nil
}

// Handler returns the asynq handler of the three task types (a ServeMux).
// Tests call its ProcessTask directly.
func (w *Worker) Handler() asynq.Handler { return w.mux }

// Config returns the configuration in effect, defaults filled in.
func (w *Worker) Config() Config { return w.cfg }

// Close releases the worker's Redis client. Call it after Run returns.
func (w *Worker) Close() error {
	var err error
	w.closeOnce.Do(func() { err = errors.Join(w.closeStore(), w.rdb.Close()) })
	return err
}

// asynqConfig is the asynq server configuration: low pickup latency, the
// retry policy, and logs through slog.
func (w *Worker) asynqConfig() asynq.Config {
	return asynq.Config{
		Concurrency:              w.cfg.Concurrency,
		Queues:                   w.cfg.Queues,
		TaskCheckInterval:        DefaultTaskCheckInterval,
		DelayedTaskCheckInterval: DefaultDelayedTaskCheckInterval,
		ShutdownTimeout:          w.cfg.ShutdownTimeout,
		RetryDelayFunc:           w.policy.RetryDelayFunc,
		IsFailure:                IsFailure,
		ErrorHandler:             asynq.ErrorHandlerFunc(w.handleError),
		HealthCheckFunc:          w.healthCheck,
		Logger:                   slogAdapter{w.log.With("component", "asynq")},
		LogLevel:                 asynqLogLevel(w.log),
	}
}

func (w *Worker) handleError(ctx context.Context, t *asynq.Task, err error) {
	id, _ := asynq.GetTaskID(ctx)
	level := slog.LevelWarn
	if !IsFailure(err) || errors.Is(err, asynq.SkipRetry) {
		level = slog.LevelDebug // deferrals and recorded terminal failures
	}
	w.log.Log(ctx, level, "task returned an error", "task_id", id, "type", t.Type(), "err", err)
}

func (w *Worker) healthCheck(err error) {
	if err != nil {
		w.log.Error("redis health check failed", "err", err)
	}
	w.state.update(func(s *runState) { s.redisErr = err })
}

// Run waits for Redis (logging while it is not up), checks it, and serves
// until ctx is done; then it stops taking tasks, lets in-flight ones finish
// for up to ShutdownTimeout and hands the rest back to their queue.
//
// A Redis too old for asynq is an error, and so is one whose
// maxmemory-policy evicts (an *EvictionError) unless Config.AllowEviction.
// The worker takes tasks only while WeChat Pay accepts its credentials: it
// starts the asynq server once a probe (CheckCredentials) passes, shuts it
// down when calls show the credentials refused or the clock off, and probes
// every ProbeInterval until it can start it again. Tasks never fail for the
// worker's own settings: they wait in their queue for a worker that can do
// them.
func (w *Worker) Run(ctx context.Context) error {
	defer w.state.update(func(s *runState) { s.draining, s.serving = true, false })
	chk, err := w.awaitRedis(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for Redis
		}
		return err
	}
	if err := w.checkTopology(ctx, w.cfg.Redis); err != nil {
		return err
	}
	if e := chk.Eviction(); e != nil {
		if !w.cfg.AllowEviction {
			return fmt.Errorf("worker: %w", e)
		}
		w.log.Error("REDIS MISCONFIGURED (allowed by AllowEviction): " + e.Error())
	}
	for _, msg := range chk.Warnings() {
		w.log.Error("REDIS MISCONFIGURED: " + msg)
	}
	w.state.update(func(s *runState) {
		s.started, s.waitErr = true, nil
		if chk.Evicting() {
			s.evicting = chk.Policy // logged above
		}
	})

	w.gate.arm()
	bg, stopBg := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.sweepLoop(bg) })
	wg.Go(func() { w.adoptLoop(bg) })
	wg.Go(func() { w.watchRedis(bg) })
	wg.Go(func() { w.gate.probeLoop(bg, w.checker, w.cfg.ProbeInterval) })
	err = w.serve(ctx)
	stopBg()
	wg.Wait()
	return err
}

// serve runs the asynq server while the gate is open, until ctx is done.
func (w *Worker) serve(ctx context.Context) error {
	for first := true; ; first = false {
		open, changed, reason := w.gate.state()
		if !open {
			if first {
				w.log.Info("worker waiting for WeChat Pay to accept its credentials", "reason", reason)
			}
			select {
			case <-ctx.Done():
				w.state.update(func(s *runState) { s.draining = true })
				w.log.Info("worker stopped")
				return nil
			case <-changed:
				continue
			}
		}
		srv := asynq.NewServer(w.cfg.Redis, w.asynqConfig())
		if err := srv.Start(w.mux); err != nil {
			return fmt.Errorf("worker: start asynq server: %w", err)
		}
		w.state.update(func(s *runState) { s.serving = true })
		w.log.Info("worker started", "queues", w.cfg.Queues, "concurrency", w.cfg.Concurrency, "max_retry", w.cfg.MaxRetry)
		for open {
			select {
			case <-ctx.Done():
				w.state.update(func(s *runState) { s.draining = true })
				w.log.Info("worker shutting down", "timeout", w.cfg.ShutdownTimeout)
				srv.Shutdown()
				w.state.update(func(s *runState) { s.serving = false })
				w.log.Info("worker stopped")
				return nil
			case <-changed:
				open, changed, reason = w.gate.state()
			}
		}
		// In-flight tasks finish or come back; nothing new is taken.
		w.log.Error("worker stops taking tasks until WeChat Pay accepts its credentials", "reason", reason)
		srv.Shutdown()
		w.state.update(func(s *runState) { s.serving = false })
	}
}

func (w *Worker) sweepLoop(ctx context.Context) {
	t := time.NewTicker(w.sweepInterval)
	defer t.Stop()
	for {
		if n, err := w.SweepArchived(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("archive sweep failed", "err", err)
		} else if n > 0 {
			w.log.Warn("archived tasks recorded as failed", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

const sweepPageSize = 100

// SweepArchived records as failed (error_code ARCHIVED, with asynq's last
// error) every archived couponq task of the served queues whose result is
// not terminal. asynq archives without calling the handler when a crashed
// worker's lease expires at the last retry; this keeps such tasks from
// leaving their batch unfinished. It returns how many it finished. Run
// calls it at start and every minute.
func (w *Worker) SweepArchived(ctx context.Context) (int, error) {
	insp := asynq.NewInspectorFromRedisClient(w.rdb)
	finished := 0
	for q := range w.cfg.Queues {
		for page := 1; ; page++ {
			infos, err := insp.ListArchivedTasks(q, asynq.Page(page), asynq.PageSize(sweepPageSize))
			if errors.Is(err, asynq.ErrQueueNotFound) {
				break
			}
			if err != nil {
				return finished, fmt.Errorf("worker: list archived tasks of %s: %w", q, err)
			}
			n, err := w.sweepPage(ctx, infos)
			finished += n
			if err != nil {
				return finished, err
			}
			if len(infos) < sweepPageSize {
				break
			}
		}
	}
	return finished, nil
}

func (w *Worker) sweepPage(ctx context.Context, infos []*asynq.TaskInfo) (int, error) {
	var mine []*asynq.TaskInfo
	for _, ti := range infos {
		if tasks.OpOfType(ti.Type) != "" {
			mine = append(mine, ti)
		}
	}
	if len(mine) == 0 {
		return 0, nil
	}
	ids := make([]string, len(mine))
	for i, ti := range mine {
		ids[i] = ti.ID
	}
	sts, err := w.store.Statuses(ctx, ids)
	if err != nil {
		return 0, fmt.Errorf("worker: read archived results: %w", err)
	}
	n := 0
	for i, ti := range mine {
		if st := sts[i]; st == "" || st.Terminal() {
			continue // no result (expired or foreign) or already final
		}
		msg := "archived by asynq without a final answer"
		if ti.LastErr != "" {
			msg += ": " + ti.LastErr
		}
		done, err := w.store.Finish(ctx, ti.ID, tasks.StatusFailed, results.Attempt{ErrorCode: CodeArchived, ErrorMessage: clip(msg)})
		if err != nil {
			return n, err
		}
		if done {
			n++
			w.metrics.ObserveTerminal(string(tasks.OpOfType(ti.Type)), tasks.StatusFailed)
			w.log.Warn("archived task recorded as failed", "task_id", ti.ID, "queue", ti.Queue, "last_err", ti.LastErr)
		}
		if c, _ := decodePayload(ti.Type, ti.Payload); c.brandID != "" && c.productCouponID != "" {
			w.release(ctx, []results.OrderEntry{{TaskID: ti.ID, Op: string(c.op), BrandID: c.brandID, ProductCouponID: c.productCouponID}}, w.log)
		}
	}
	return n, nil
}
