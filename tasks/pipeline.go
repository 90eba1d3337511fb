package tasks

import (
	"context"
	"errors"
	"sync"

	"github.com/redis/go-redis/v9"
)

// errPipelineClosed is the error of a script call made after the producer
// was closed.
var errPipelineClosed = errors.New("couponq: producer closed")

// pipelinedClient is the redis.UniversalClient the producer hands to asynq
// and to its results.Store. Every other command goes straight to the wrapped
// client, but script calls (EVALSHA, EVAL: asynq's enqueue and the results.Store's
// Accept, one of each per task) made by many goroutines at once are written
// to Redis together as one pipeline and their replies read back together.
// This is automatic pipelining: a caller still waits for its own reply, so
// the order "Accept, then enqueue" of each task holds, but 32 goroutines
// cost Redis a handful of socket reads and writes instead of 64.
//
// asynq v0.26 has no batch enqueue; this gives the
// producer its throughput without touching asynq's task encoding.
//
// go-redis re-sends a whole pipeline after a read timeout (a Redis stall),
// so any command in it may run twice, the first run's reply lost: every
// script sent through here must be idempotent (asynq's enqueue is; the
// Store's accept is made so; see handoff.go).
type pipelinedClient struct {
	redis.UniversalClient
	reqs     chan *pipeReq
	closed   chan struct{}
	mu       sync.RWMutex // held for reading while sending to reqs
	isClosed bool
	wg       sync.WaitGroup
	maxBatch int
}

type pipeReq struct {
	cmd  *redis.Cmd
	done chan struct{}
}

// newPipelinedClient starts flushers goroutines, each sending up to
// maxBatch queued script calls per round trip.
func newPipelinedClient(rdb redis.UniversalClient, flushers, maxBatch int) *pipelinedClient {
	c := &pipelinedClient{
		UniversalClient: rdb,
		reqs:            make(chan *pipeReq, maxBatch*flushers),
		closed:          make(chan struct{}),
		maxBatch:        maxBatch,
	}
	c.wg.Add(flushers)
	for range flushers {
		go c.flush()
	}
	return c
}

// EvalSha queues EVALSHA for the next pipeline.
func (c *pipelinedClient) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return c.do(ctx, scriptArgs("evalsha", sha1, keys, args))
}

// Eval queues EVAL for the next pipeline (go-redis falls back to it when
// Redis does not know a script yet).
func (c *pipelinedClient) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return c.do(ctx, scriptArgs("eval", script, keys, args))
}

// Close stops the flushers. It does not close the wrapped client, which
// belongs to the caller.
func (c *pipelinedClient) Close() error {
	c.mu.Lock()
	if !c.isClosed {
		c.isClosed = true
		close(c.closed) // every send has completed: the flushers drain reqs
	}
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

func scriptArgs(name, script string, keys []string, args []any) []any {
	a := make([]any, 0, 3+len(keys)+len(args))
	a = append(a, name, script, len(keys))
	for _, k := range keys {
		a = append(a, k)
	}
	return append(a, args...)
}

func (c *pipelinedClient) do(ctx context.Context, args []any) *redis.Cmd {
	cmd := redis.NewCmd(ctx, args...)
	req := &pipeReq{cmd: cmd, done: make(chan struct{})}
	c.mu.RLock()
	if c.isClosed {
		c.mu.RUnlock()
		cmd.SetErr(errPipelineClosed)
		return cmd
	}
	select {
	case c.reqs <- req:
		c.mu.RUnlock()
	case <-ctx.Done():
		c.mu.RUnlock()
		cmd.SetErr(ctx.Err())
		return cmd
	}
	select {
	case <-req.done:
		return cmd
	case <-ctx.Done():
		// The command may still run; its reply goes to cmd, which the
		// caller no longer sees.
		fresh := redis.NewCmd(ctx, args...)
		fresh.SetErr(ctx.Err())
		return fresh
	}
}

func (c *pipelinedClient) flush() {
	defer c.wg.Done()
	batch := make([]*pipeReq, 0, c.maxBatch)
	for {
		select {
		case r := <-c.reqs:
			batch = append(batch[:0], r)
		case <-c.closed:
			c.drain()
			return
		}
	fill:
		for len(batch) < c.maxBatch {
			select {
			case r := <-c.reqs:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		c.exec(batch)
	}
}

// drain runs the calls still queued at Close.
func (c *pipelinedClient) drain() {
	for {
		batch := make([]*pipeReq, 0, c.maxBatch)
	fill:
		for len(batch) < c.maxBatch {
			select {
			case r := <-c.reqs:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return
		}
		c.exec(batch)
	}
}

func (c *pipelinedClient) exec(batch []*pipeReq) {
	// The batch runs on its own context: one caller giving up must not
	// cancel the others' commands. go-redis' timeouts still apply.
	ctx := context.Background()
	pipe := c.UniversalClient.Pipeline()
	for _, r := range batch {
		_ = pipe.Process(ctx, r.cmd)
	}
	// Each command carries its own reply or error, except when the pipeline
	// failed as a whole (a refused AUTH, a timeout after retries): go-redis
	// then leaves the commands it did not reach without either, and a caller
	// would take "no error" for success. Give those the pipeline's error.
	if _, err := pipe.Exec(ctx); err != nil {
		for _, r := range batch {
			if r.cmd.Err() == nil && r.cmd.Val() == nil {
				r.cmd.SetErr(err)
			}
		}
	}
	for _, r := range batch {
		close(r.done)
	}
}
