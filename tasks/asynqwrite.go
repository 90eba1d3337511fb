package tasks

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/couponq/couponq/internal/luabundle"
	"github.com/couponq/couponq/internal/results"
)

// couponq writes the asynq task records of a batch itself, many tasks a
// round trip, because asynq v0.26 enqueues one task a round trip (it has no
// batch enqueue; asynq-notes 1.11). What it writes is exactly what
// asynq.Client.EnqueueContext writes for the same task with the options
// couponq uses (TaskID, Queue, MaxRetry, Timeout, and ProcessAt for a
// not_before): the same Lua scripts on the same keys, the same protobuf
// TaskMessage. asynq's server, Inspector and asynqmon cannot tell the
// difference, and retries and archiving behave the same. The layout is
// asynq's internal one, so it is pinned: TestAsynqRecordsLikeClient
// compares the records with asynq.Client's, byte for byte, and runs them
// through asynq's server, and it fails on any asynq version but
// asynqLayoutVersion.

// asynqLayoutVersion is the asynq release whose Redis layout (keys, Lua
// scripts, TaskMessage encoding) this file reproduces.
const asynqLayoutVersion = "v0.26.0"

// asynqAllQueues is the set of every queue's name (base.AllQueues).
const asynqAllQueues = "asynq:queues"

// asynqPendingKey and asynqScheduledKey are the queue's pending list and
// scheduled set (base.PendingKey, base.ScheduledKey).
func asynqPendingKey(queue string) string   { return "asynq:{" + queue + "}:pending" }
func asynqScheduledKey(queue string) string { return "asynq:{" + queue + "}:scheduled" }

// asynqEnqueueScript is asynq v0.26's enqueueCmd (internal/rdb/rdb.go),
// verbatim.
//
// KEYS[1] -> asynq:{<qname>}:t:<task_id>
// KEYS[2] -> asynq:{<qname>}:pending
// ARGV[1] -> task message data
// ARGV[2] -> task ID
// ARGV[3] -> current unix time in nsec
var asynqEnqueueScript = redis.NewScript(asynqEnqueueSource)

const asynqEnqueueSource = `
if redis.call("EXISTS", KEYS[1]) == 1 then
	return 0
end
redis.call("HSET", KEYS[1],
           "msg", ARGV[1],
           "state", "pending",
           "pending_since", ARGV[3])
redis.call("LPUSH", KEYS[2], ARGV[2])
return 1
`

// asynqScheduleScript is asynq v0.26's scheduleCmd, verbatim.
//
// KEYS[1] -> asynq:{<qname>}:t:<task_id>
// KEYS[2] -> asynq:{<qname>}:scheduled
// ARGV[1] -> task message data
// ARGV[2] -> process_at time in Unix time
// ARGV[3] -> task ID
var asynqScheduleScript = redis.NewScript(asynqScheduleSource)

const asynqScheduleSource = `
if redis.call("EXISTS", KEYS[1]) == 1 then
	return 0
end
redis.call("HSET", KEYS[1],
           "msg", ARGV[1],
           "state", "scheduled")
redis.call("ZADD", KEYS[2], ARGV[2], ARGV[3])
return 1
`

// The scripts' bundles: many records a call (package luabundle).
var (
	asynqEnqueueBundle  = luabundle.Of(asynqEnqueueSource)
	asynqScheduleBundle = luabundle.Of(asynqScheduleSource)
)

// asynqRecord is one task to write as asynq.Client would enqueue it.
type asynqRecord struct {
	taskType string
	payload  []byte
	headers  map[string]string
	taskID   string
	queue    string
	timeout  time.Duration
	// processAt, when after now, schedules the task (asynq.ProcessAt).
	processAt time.Time
}

// encodeTaskMessage encodes r as asynq v0.26's TaskMessage protobuf
// (internal/proto/asynq.proto; base.EncodeMessage): fields in number
// order, zero values left out as proto3 does, header map entries sorted
// by key. Deadline is asynq's "no deadline", time.Unix(0, 0).Unix() = 0,
// left out; MaxRetry is results.MaxRetry.
func encodeTaskMessage(r *asynqRecord) []byte {
	b := make([]byte, 0, 64+len(r.payload)+len(r.taskID)+len(r.taskType))
	str := func(num protowire.Number, s string) {
		if s != "" {
			b = protowire.AppendTag(b, num, protowire.BytesType)
			b = protowire.AppendString(b, s)
		}
	}
	str(1, r.taskType)
	if len(r.payload) > 0 {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, r.payload)
	}
	str(3, r.taskID)
	str(4, r.queue)
	if retry := int32(results.MaxRetry); retry != 0 {
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(retry))
	}
	if secs := int64(r.timeout.Seconds()); secs != 0 {
		b = protowire.AppendTag(b, 8, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(secs))
	}
	keys := make([]string, 0, len(r.headers))
	for k := range r.headers {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := r.headers[k]
		var e []byte
		e = protowire.AppendTag(e, 1, protowire.BytesType)
		e = protowire.AppendString(e, k)
		e = protowire.AppendTag(e, 2, protowire.BytesType)
		e = protowire.AppendString(e, v)
		b = protowire.AppendTag(b, 15, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	return b
}

// asynqWriter writes asynq task records in pipelines.
type asynqWriter struct {
	rdb       redis.UniversalClient
	now       func() time.Time
	published sync.Map // queue → true once added to asynq:queues
}

// writeMany writes recs' task records in one pipeline, as asynq's Enqueue
// (or Schedule, for a task processed later) would each. created[i] is true
// when the task was written, false when its key existed (asynq's
// ErrTaskIDConflict: the caller inspects it as it would asynq's answer).
// errs[i] non-nil means the outcome is unknown (the pipeline failed or
// Redis refused the command): the caller falls back to asynq.Client.
func (w *asynqWriter) writeMany(ctx context.Context, recs []*asynqRecord) (created []bool, errs []error) {
	created, errs = make([]bool, len(recs)), make([]error, len(recs))
	if len(recs) == 0 {
		return created, errs
	}
	for _, r := range recs {
		if _, ok := w.published.Load(r.queue); ok {
			continue
		}
		if err := w.rdb.SAdd(ctx, asynqAllQueues, r.queue).Err(); err != nil {
			for i := range errs {
				errs[i] = fmt.Errorf("couponq: register queue %s with asynq: %w", r.queue, err)
			}
			return created, errs
		}
		w.published.Store(r.queue, true)
	}
	now := w.now()
	// The records go as bundles (package luabundle) of one queue and one
	// script each: a queue's keys share asynq's hash tag, so a bundle is
	// one slot's even on a cluster. A ring spreads them: one call each.
	type part struct {
		script, bundle *redis.Script
		idx            []int
		calls          []luabundle.Call
		cmd            *redis.Cmd
	}
	var parts []*part
	open := map[string]*part{}
	_, ring := w.rdb.(*redis.Ring)
	for i, r := range recs {
		script, bundle, keys, args := asynqEnqueueScript, asynqEnqueueBundle, []string{asynqTaskKey(r.queue, r.taskID), asynqPendingKey(r.queue)},
			[]any{encodeTaskMessage(r), r.taskID, now.UnixNano()}
		if r.processAt.After(now) {
			script, bundle, keys, args = asynqScheduleScript, asynqScheduleBundle, []string{asynqTaskKey(r.queue, r.taskID), asynqScheduledKey(r.queue)},
				[]any{encodeTaskMessage(r), r.processAt.Unix(), r.taskID}
		}
		k := r.queue + "\x00" + keys[1]
		pt := open[k]
		if pt == nil || ring || len(pt.idx) == luabundle.Size {
			pt = &part{script: script, bundle: bundle}
			parts = append(parts, pt)
			open[k] = pt
		}
		pt.idx = append(pt.idx, i)
		pt.calls = append(pt.calls, luabundle.Call{Keys: keys, Args: args})
	}
	run := func(eval bool) error {
		_, err := w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, pt := range parts {
				if pt.cmd != nil && !redis.HasErrorPrefix(pt.cmd.Err(), "NOSCRIPT") {
					continue // answered by the first pipeline
				}
				script, keys, args := pt.script, pt.calls[0].Keys, pt.calls[0].Args
				if len(pt.calls) > 1 {
					script = pt.bundle
					keys, args = luabundle.Args(pt.calls)
				}
				if eval {
					pt.cmd = script.Eval(ctx, p, keys, args...)
				} else {
					pt.cmd = script.EvalSha(ctx, p, keys, args...)
				}
			}
			return nil
		})
		return err
	}
	err := run(false)
	noScript := false
	for _, pt := range parts {
		noScript = noScript || redis.HasErrorPrefix(pt.cmd.Err(), "NOSCRIPT")
	}
	if noScript {
		// Redis did not know the scripts (a fresh server): those commands
		// did not run; send them with their source.
		err = run(true)
	}
	cmds := make([]*redis.Cmd, len(recs))
	for _, pt := range parts {
		each := []*redis.Cmd{pt.cmd}
		if len(pt.calls) > 1 {
			var uerr error
			if each, uerr = luabundle.Unpack(ctx, pt.cmd, len(pt.calls)); uerr != nil {
				each = make([]*redis.Cmd, len(pt.calls))
				for j := range each {
					each[j] = redis.NewCmd(ctx)
					each[j].SetErr(uerr)
				}
			}
		}
		for j, i := range pt.idx {
			cmds[i] = each[j]
		}
	}
	for i, c := range cmds {
		n, cerr := c.Int()
		switch {
		case cerr != nil:
			errs[i] = fmt.Errorf("couponq: write asynq task %s: %w", recs[i].taskID, cerr)
		case n == 1:
			created[i] = true
		}
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		for i := range errs {
			if errs[i] == nil && !created[i] && cmds[i].Err() == nil && cmds[i].Val() == nil {
				errs[i] = fmt.Errorf("couponq: write asynq tasks: %w", err)
			}
		}
	}
	return created, errs
}
