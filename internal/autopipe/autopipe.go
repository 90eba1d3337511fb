// Package autopipe is automatic pipelining for go-redis: the script calls
// and Pipelined calls of many goroutines go to Redis together, a pipeline a
// round trip. The producer hands it to asynq's client and to its
// results.Store, the worker to its results.Store.
package autopipe

import (
	"context"
	"errors"
	"sync"

	"github.com/redis/go-redis/v9"
)

// ErrClosed is the error of a call made after the Client was closed.
var ErrClosed = errors.New("couponq: pipelined Redis client closed")

// Client is the redis.UniversalClient the producer hands to asynq
// and to its results.Store, and the worker to its results.Store. Script
// calls (EVALSHA, EVAL: asynq's enqueue and the Store's scripts, a few per
// task) and Pipelined calls made by many goroutines at once are written to
// Redis together as one pipeline and their replies read back together;
// every other command goes straight to the wrapped client. This is
// automatic pipelining: a caller still waits for its own reply, so the
// order of each task's steps holds ("Accept, then enqueue"; a Pipelined
// call's commands stay together and in order), but 32 goroutines cost
// Redis and the client a handful of socket reads and writes instead of one
// pair each.
//
// asynq v0.26 has no batch enqueue; this gives the
// producer its throughput without touching asynq's task encoding.
//
// go-redis re-sends a whole pipeline after a read timeout (a Redis stall),
// so any command in it may run twice, the first run's reply lost: every
// script sent through here must be idempotent (asynq's enqueue is; the
// Store's scripts are made so: see tasks/handoff.go, and for the batch step
// and Retrying's token internal/results).
type Client struct {
	redis.UniversalClient
	reqs     chan *pipeReq
	closed   chan struct{}
	mu       sync.RWMutex // held for reading while sending to reqs
	isClosed bool
	wg       sync.WaitGroup
	maxBatch int
}

// pipeReq is one caller's commands: a script call, or the commands of a
// Pipelined call, which stay together and in order in one pipeline.
type pipeReq struct {
	cmds  []redis.Cmder
	group bool // from Pipelined
	done  chan struct{}
}

// New wraps rdb and starts flushers goroutines, each sending up to maxBatch
// queued calls per round trip. Close stops them; it does not close rdb.
func New(rdb redis.UniversalClient, flushers, maxBatch int) *Client {
	c := &Client{
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

// Unwrap returns the client c sends through: a caller that must know the
// kind of server behind c (one server, a cluster) asks it.
func (c *Client) Unwrap() redis.UniversalClient { return c.UniversalClient }

// EvalSha queues EVALSHA for the next pipeline.
func (c *Client) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return c.do(ctx, scriptArgs("evalsha", sha1, keys, args))
}

// Eval queues EVAL for the next pipeline (go-redis falls back to it when
// Redis does not know a script yet).
func (c *Client) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return c.do(ctx, scriptArgs("eval", script, keys, args))
}

// Close stops the flushers. It does not close the wrapped client, which
// belongs to the caller.
func (c *Client) Close() error {
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

func (c *Client) do(ctx context.Context, args []any) *redis.Cmd {
	cmd := redis.NewCmd(ctx, args...)
	if err := c.send(ctx, &pipeReq{cmds: []redis.Cmder{cmd}, done: make(chan struct{})}); err != nil {
		// Not sent, or the caller gave up: the command may still run, its
		// reply going to cmd, which the caller no longer sees.
		fresh := redis.NewCmd(ctx, args...)
		fresh.SetErr(err)
		return fresh
	}
	return cmd
}

// Pipelined runs fn's commands in the next pipeline, together with the
// other callers' commands and in their own order, and answers as go-redis'
// Pipelined does: the commands, and the first error among them.
func (c *Client) Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error) {
	p := c.UniversalClient.Pipeline()
	if err := fn(p); err != nil {
		return nil, err
	}
	cmds := p.Cmds()
	if len(cmds) == 0 {
		return cmds, nil
	}
	if err := c.send(ctx, &pipeReq{cmds: cmds, group: true, done: make(chan struct{})}); err != nil {
		for _, cmd := range cmds {
			if cmd.Err() == nil {
				cmd.SetErr(err)
			}
		}
		return cmds, err
	}
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return cmds, err
		}
	}
	return cmds, nil
}

// send queues req for the flushers and waits for it to run, or for ctx.
func (c *Client) send(ctx context.Context, req *pipeReq) error {
	c.mu.RLock()
	if c.isClosed {
		c.mu.RUnlock()
		return ErrClosed
	}
	select {
	case c.reqs <- req:
		c.mu.RUnlock()
	case <-ctx.Done():
		c.mu.RUnlock()
		return ctx.Err()
	}
	select {
	case <-req.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Client) flush() {
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
		c.exec(c.fill(batch))
	}
}

// drain runs the calls still queued at Close.
func (c *Client) drain() {
	for {
		batch := c.fill(make([]*pipeReq, 0, c.maxBatch))
		if len(batch) == 0 {
			return
		}
		c.exec(batch)
	}
}

// fill adds to batch the calls queued now, up to maxBatch, without
// waiting for more.
func (c *Client) fill(batch []*pipeReq) []*pipeReq {
	for len(batch) < c.maxBatch {
		select {
		case r := <-c.reqs:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

func (c *Client) exec(batch []*pipeReq) {
	// The batch runs on its own context: one caller giving up must not
	// cancel the others' commands. go-redis' timeouts still apply.
	ctx := context.Background()
	pipe := c.UniversalClient.Pipeline()
	for _, r := range batch {
		for _, cmd := range r.cmds {
			_ = pipe.Process(ctx, cmd)
		}
	}
	// Each command carries its own reply or error, except when the pipeline
	// failed as a whole (a refused AUTH, a timeout after retries): go-redis
	// then leaves the commands it did not reach without either, and a caller
	// would take "no error" for success. Give those the pipeline's error: a
	// script call that answered nothing; a Pipelined command without an
	// error when no command carries Exec's error (Exec's error is then the
	// pipeline's, not the first command's own).
	if _, err := pipe.Exec(ctx); err != nil {
		failed := true
		for _, r := range batch {
			for _, cmd := range r.cmds {
				failed = failed && !errors.Is(cmd.Err(), err)
			}
		}
		for _, r := range batch {
			for _, cmd := range r.cmds {
				if cmd.Err() != nil {
					continue
				}
				if sc, ok := cmd.(*redis.Cmd); ok && !r.group {
					if sc.Val() == nil {
						sc.SetErr(err)
					}
				} else if failed {
					cmd.SetErr(err)
				}
			}
		}
	}
	for _, r := range batch {
		close(r.done)
	}
}
