package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// redisCheckTimeout bounds one CheckRedis of Run.
	redisCheckTimeout = 5 * time.Second
	// redisWaitPause is the pause between attempts to reach a Redis that
	// is not up yet; redisWaitLogEvery how often that wait is logged.
	redisWaitPause    = 500 * time.Millisecond
	redisWaitLogEvery = 5 * time.Second
)

var errDraining = errors.New("worker: draining for shutdown")

// runState is what Ready reports: where Run is, and what it last saw of
// Redis. Ready reads it without any I/O, so it answers at once whatever
// Redis and WeChat Pay do.
type runState struct {
	mu        sync.Mutex
	waitErr   error  // Run is waiting for Redis: why it is not up
	started   bool   // Run got past its Redis check
	serving   bool   // the asynq server is running
	draining  bool   // Run's context is done
	redisErr  error  // the last Redis check failed
	evicting  string // the evicting maxmemory-policy last seen; "" none
	allowEvic bool
}

func (s *runState) update(f func(*runState)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// Ready reports whether the worker is taking tasks and can do them: Run has
// reached Redis and started the asynq server, WeChat Pay accepts the
// credentials, the last Redis check passed, Redis does not evict (unless
// Config.AllowEviction) and the worker is not draining for shutdown. It does
// no I/O: it answers from what Run last saw.
func (w *Worker) Ready(context.Context) error {
	s := &w.state
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.draining:
		return errDraining
	case !s.started && s.waitErr != nil:
		return fmt.Errorf("worker: waiting for Redis: %w", s.waitErr)
	case !s.started:
		return errNotRunning
	case s.redisErr != nil:
		return fmt.Errorf("worker: redis: %w", s.redisErr)
	case s.evicting != "" && !s.allowEvic:
		return fmt.Errorf("worker: %w", &EvictionError{Policy: s.evicting})
	}
	if err := w.gate.admit(); err != nil {
		return fmt.Errorf("worker: not taking tasks: %w", err)
	}
	if !s.serving {
		return errNotRunning
	}
	return nil
}

// awaitRedis checks Redis until it answers, logging every few seconds while
// it does not: a worker started before its Redis waits for it. A Redis that
// answers but is too old, or refuses the client (a wrong password), is an
// error at once. It returns ctx's error if ctx ends first.
func (w *Worker) awaitRedis(ctx context.Context) (RedisCheck, error) {
	start, lastLog := time.Now(), time.Time{}
	for {
		cctx, cancel := context.WithTimeout(ctx, redisCheckTimeout)
		chk, err := CheckRedis(cctx, w.rdb)
		cancel()
		if err == nil {
			if !lastLog.IsZero() {
				w.log.Info("Redis is up", "waited", time.Since(start).Round(time.Millisecond).String())
			}
			return chk, nil
		}
		if ctx.Err() != nil {
			return chk, ctx.Err()
		}
		if chk.Version != "" || !transientRedisError(err) {
			return chk, err
		}
		w.state.update(func(s *runState) { s.waitErr = err })
		if time.Since(lastLog) >= redisWaitLogEvery {
			lastLog = time.Now()
			w.log.Warn("waiting for Redis", "waited", time.Since(start).Round(time.Second).String(), "err", err)
		}
		t := time.NewTimer(redisWaitPause)
		select {
		case <-ctx.Done():
			t.Stop()
			return chk, ctx.Err()
		case <-t.C:
		}
	}
}

// transientRedisError reports an error that may pass by itself: no answer
// (connection refused, reset, timeout) or a server that is still loading,
// busy or failing over. Other server replies (WRONGPASS, NOPERM…) are the
// configuration's.
func transientRedisError(err error) bool {
	var re redis.Error
	if !errors.As(err, &re) {
		return true
	}
	for _, p := range []string{"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY"} {
		if strings.HasPrefix(re.Error(), p) {
			return true
		}
	}
	return false
}

// watchRedis checks Redis every RedisCheckInterval for Ready: that it
// answers, and that its maxmemory-policy does not evict (someone may set it
// while the worker runs).
func (w *Worker) watchRedis(ctx context.Context) {
	t := time.NewTicker(w.cfg.RedisCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, redisCheckTimeout)
		chk, err := CheckRedis(cctx, w.rdb)
		cancel()
		if ctx.Err() != nil {
			return
		}
		w.noteRedis(chk, err)
	}
}

// noteRedis records a Redis check for Ready, logging what changed.
func (w *Worker) noteRedis(chk RedisCheck, err error) {
	var before string
	w.state.update(func(s *runState) {
		before = s.evicting
		s.redisErr = err
		if err == nil {
			s.evicting = ""
			if chk.Evicting() {
				s.evicting = chk.Policy
			}
		}
	})
	switch {
	case err != nil:
		w.log.Error("redis check failed", "err", err)
	case chk.Evicting() && before != chk.Policy:
		w.log.Error("REDIS MISCONFIGURED: "+chk.Eviction().Error(), "allow_eviction", w.cfg.AllowEviction)
	case !chk.Evicting() && before != "":
		w.log.Info("Redis no longer evicts", "maxmemory_policy", chk.Policy)
	}
}
