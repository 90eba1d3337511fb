package results

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Store owns every write to result and batch keys. The producer records
// accepted tasks through it and the worker records attempts and terminal
// outcomes through it. Each write is a Lua script on the keys of one hash
// slot (Redis Cluster refuses others): a status change is a result step,
// then a batch step that applies the task's new state to its batch's
// counters idempotently (see batchstate.go), so a task reaches a terminal
// status, and is counted in its batch, exactly once per run.
type Store struct {
	rdb redis.UniversalClient
	ttl time.Duration
	now func() time.Time
}

// StoreOption configures a Store.
type StoreOption func(*Store)

// WithResultTTL sets how long result and batch keys live after each write.
func WithResultTTL(d time.Duration) StoreOption {
	return func(s *Store) {
		if d > 0 {
			s.ttl = d
		}
	}
}

// WithClock injects the clock used for timestamps (tests).
func WithClock(now func() time.Time) StoreOption {
	return func(s *Store) {
		if now != nil {
			s.now = now
		}
	}
}

// NewStore returns a Store over rdb. It does not take ownership of rdb.
func NewStore(rdb redis.UniversalClient, opts ...StoreOption) *Store {
	s := &Store{rdb: rdb, ttl: DefaultResultTTL, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Redis returns the client the store uses.
func (s *Store) Redis() redis.UniversalClient { return s.rdb }

// TTL returns the result TTL.
func (s *Store) TTL() time.Duration { return s.ttl }

func (s *Store) stamp() string { return s.now().UTC().Format(TimeFormat) }

func (s *Store) ttlMillis() string { return strconv.FormatInt(s.ttl.Milliseconds(), 10) }

// Identity names one task in its result hash.
type Identity struct {
	TaskID          string
	Op              string // "update", "deactivate" or "get"
	BrandID         string
	ProductCouponID string
	OutRequestNo    string
	Batch           string
}

// openBatchScript creates the batch hash, or reopens an existing one for
// more tasks (unsealing it), and refreshes its TTL and its own keys'.
//
// KEYS[1..3] -> couponq:batch:<batch_id> and its own keys (batchScriptKeys)
// ARGV[1] -> now (TimeFormat)
// ARGV[2] -> TTL in milliseconds
var openBatchScript = newScript("OpenBatch", `
for k = 2, 3 do
  if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('PEXPIRE', KEYS[k], ARGV[2]) end
end
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[1])
redis.call('HSETNX', KEYS[1], 'total', '0')
redis.call('HSETNX', KEYS[1], 'duplicates', '0')
redis.call('HSETNX', KEYS[1], 'succeeded', '0')
redis.call('HSETNX', KEYS[1], 'failed', '0')
redis.call('HSETNX', KEYS[1], 'canceled', '0')
redis.call('HSET', KEYS[1], 'sealed', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// OpenBatch creates (or reopens) batch batchID before its first task is
// accepted, and lists it among the open batches (see MarkOpen) first, so a
// producer that dies at any point leaves a batch the workers will seal.
// Until SealBatch, the batch cannot finish. Both steps are idempotent.
func (s *Store) OpenBatch(ctx context.Context, batchID string) error {
	if !hashTagSafe(batchID) {
		return fmt.Errorf("couponq: open batch %q: a batch ID holds no brace (its keys' hash tags would break)", batchID)
	}
	if err := s.MarkOpen(ctx, batchID); err != nil {
		return err
	}
	if err := openBatchScript.Run(ctx, s.rdb, batchScriptKeys(batchID), s.stamp(), s.ttlMillis()).Err(); err != nil {
		return fmt.Errorf("couponq: open batch %s: %w", batchID, err)
	}
	return s.indexBatch(ctx, batchID)
}

// indexBatch lists batchID in BatchesKey (kept at its first creation time)
// and trims the entries older than the TTL. Each is a command on that one
// key: on Redis Cluster it lives in a slot of its own.
func (s *Store) indexBatch(ctx context.Context, batchID string) error {
	now := s.now()
	pipe := s.rdb.Pipeline()
	pipe.ZAddNX(ctx, BatchesKey, redis.Z{Score: float64(now.UnixMilli()), Member: batchID})
	pipe.ZRemRangeByScore(ctx, BatchesKey, "-inf", "("+strconv.FormatInt(now.Add(-s.ttl).UnixMilli(), 10))
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("couponq: list batch %s: %w", batchID, err)
	}
	return nil
}

// MarkOpen records that a producer is still enqueuing into batchID, now: it
// is the producer's heartbeat, repeated while it runs.
func (s *Store) MarkOpen(ctx context.Context, batchID string) error {
	z := redis.Z{Score: float64(s.now().UnixMilli()), Member: batchID}
	if err := s.rdb.ZAdd(ctx, OpenBatchesKey, z).Err(); err != nil {
		return fmt.Errorf("couponq: mark batch %s open: %w", batchID, err)
	}
	return nil
}

// AbandonedBatches returns up to limit open batches whose producer was
// last seen before cutoff.
func (s *Store) AbandonedBatches(ctx context.Context, cutoff time.Time, limit int) ([]string, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, OpenBatchesKey, &redis.ZRangeBy{
		Min: "-inf", Max: "(" + strconv.FormatInt(cutoff.UnixMilli(), 10), Count: int64(limit)}).Result()
	if err != nil {
		return nil, fmt.Errorf("couponq: list abandoned batches: %w", err)
	}
	return ids, nil
}

// sealBatchScript seals a batch and finishes it if every task is terminal.
// A batch hash that does not exist (expired, or its producer died before
// creating it) is left alone.
//
// KEYS[1..3] -> couponq:batch:<batch_id> and its own keys (batchScriptKeys)
// ARGV[1] -> now
// ARGV[2] -> TTL in milliseconds
var sealBatchScript = newScript("SealBatch", luaFinishBatchIfDone+`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'sealed', '1')
finish_batch_if_done(KEYS[1], ARGV[1])
for k = 1, 3 do
  if redis.call('EXISTS', KEYS[k]) == 1 then redis.call('PEXPIRE', KEYS[k], ARGV[2]) end
end
return 1
`)

// SealBatch marks batch batchID complete on the producer side: no more tasks
// will be accepted into it, so it finishes once every task is terminal (at
// once if it accepted none). It then drops the batch from the open ones.
// It is idempotent.
func (s *Store) SealBatch(ctx context.Context, batchID string) error {
	err := s.pipelined(ctx, func(p redis.Pipeliner) {
		sealBatchScript.EvalSha(ctx, p, batchScriptKeys(batchID), s.stamp(), s.ttlMillis())
		// The task set's TTL follows the batch's (a plain command: its
		// own slot).
		p.PExpire(ctx, BatchTasksKey(batchID), s.ttl)
	}, sealBatchScript)
	if err != nil {
		return fmt.Errorf("couponq: seal batch %s: %w", batchID, err)
	}
	if err := s.rdb.ZRem(ctx, OpenBatchesKey, batchID).Err(); err != nil {
		return fmt.Errorf("couponq: seal batch %s: %w", batchID, err)
	}
	return nil
}

// AcceptOutcome is what Accept did with a task.
type AcceptOutcome string

// Accept outcomes.
const (
	// Accepted: the result hash now says queued and the task counts in its
	// batch. A re-sent accept of the same call (a client retry after a
	// timeout) answers Accepted again and counts nothing twice.
	Accepted AcceptOutcome = "accepted"
	// Duplicate: a result with the same task ID and payload exists, of
	// another batch or earlier in this run; nothing was written except the
	// batch's duplicates counter.
	Duplicate AcceptOutcome = "duplicate"
	// Conflict: a result with the same task ID and another payload exists.
	Conflict AcceptOutcome = "conflict"
	// Resumed: an earlier run of the same batch accepted the task and its
	// result is still queued; it counts in the batch already (not again),
	// and the caller makes sure its asynq task exists.
	Resumed AcceptOutcome = "resumed"
	// Underway: an earlier run of the same batch accepted the task and a
	// worker has taken it up since; nothing to do.
	Underway AcceptOutcome = "underway"
	// EarlierFailed: a duplicate whose earlier task is failed or canceled,
	// so it will not run again unless retried. It counts in the batch's
	// duplicates and in its earlier_failed. The outcome AcceptMany returns
	// is "earlier_failed:<that task's batch>": see Kind and EarlierBatch.
	EarlierFailed AcceptOutcome = "earlier_failed"
)

// Kind is the outcome without the earlier batch an EarlierFailed carries.
func (o AcceptOutcome) Kind() AcceptOutcome {
	k, _, _ := strings.Cut(string(o), ":")
	return AcceptOutcome(k)
}

// EarlierBatch is the batch of the earlier, failed or canceled task of an
// EarlierFailed outcome ("" when that task belongs to no batch).
func (o AcceptOutcome) EarlierBatch() string {
	_, b, _ := strings.Cut(string(o), ":")
	return b
}

// Handoff says how the tasks of one accept call will be enqueued: it is
// kept in each result hash so that the task can be enqueued again by a
// rerun or by the workers if the producer dies before doing it.
type Handoff struct {
	// Run names the producer run (a ULID per EnqueueBatch or Enqueue call);
	// with the call's sequence number, it tells a re-sent accept of the
	// same call from a duplicate.
	Run string
	// Seq numbers the accept calls of one run.
	Seq int
	// Queue and Timeout are the asynq queue and per-attempt timeout.
	Queue   string
	Timeout time.Duration
}

// AcceptItem is one task of AcceptMany.
type AcceptItem struct {
	Identity      Identity // its Batch is ignored: AcceptMany's batch applies
	PayloadSHA256 string
	Payload       []byte // the task payload, kept in the result (may be nil)
}

// MaxAcceptMany bounds the tasks of one batch step of AcceptMany: each
// chunk of up to this many is its own call, with its own token.
const MaxAcceptMany = 512

// acceptScript is the result step of accepting one task: it writes a
// queued result hash if the task ID is free, and says what became of the
// task. It answers {outcome} or, for a task of this batch,
// {outcome, runs, status}.
//
// It is idempotent: the result keeps the token of the item that wrote it
// (run/seq/index), and a re-run of that item (a client's re-send after a
// timeout, or the producer's own retry) answers 'accepted' again and
// writes nothing. Without it, the re-run would take the item's own write
// for a duplicate and the change would never be enqueued.
//
// For a taken task ID: another payload is a 'conflict'; the same payload
// written earlier in this run (a repeated line) or by another batch is a
// 'duplicate'; by an earlier run of this batch, 'resumed' (still queued) or
// 'underway'. A duplicate of another batch's failed or canceled task is
// 'earlier_failed:<its batch>'.
//
// KEYS[1] -> couponq:result:<task_id>
// ARGV[1] -> now, ARGV[2] -> TTL in milliseconds
// ARGV[3] -> batch ID ("" = none)
// ARGV[4] -> run ID ("" = none: a re-run counts its own writes duplicates)
// ARGV[5] -> the item's token: run/seq/index
// ARGV[6] -> queue, ARGV[7] -> timeout in seconds
// ARGV[8..14] -> task_id, op, brand_id, product_coupon_id, out_request_no,
// payload_sha256, payload
var acceptScript = newScript("Accept", `
local now, ttl, batch, run, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local sha = ARGV[13]
-- every result hash has a task_id: one HMGET tells new from taken
local cur = redis.call('HMGET', KEYS[1], 'payload_sha256', 'task_id', 'batch', 'run', 'status', 'runs')
if not (cur[1] or cur[2]) then
  redis.call('HSET', KEYS[1], 'task_id', ARGV[8], 'op', ARGV[9], 'brand_id', ARGV[10],
    'product_coupon_id', ARGV[11], 'out_request_no', ARGV[12], 'batch', batch,
    'status', 'queued', 'attempts', '0', 'enqueued_at', now, 'updated_at', now,
    'payload_sha256', sha, 'payload', ARGV[14], 'queue', ARGV[6], 'timeout', ARGV[7],
    'run', token)
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {'accepted', '1', 'queued'}
end
if cur[1] ~= sha then return {'conflict'} end
local runs, st = cur[6] or '1', cur[5] or ''
if run ~= '' and cur[4] == token then return {'accepted', runs, st} end
if run ~= '' and cur[4] and string.sub(cur[4], 1, #run + 1) == run .. '/' then return {'duplicate'} end
if batch ~= '' and cur[3] == batch then
  if st == 'queued' then return {'resumed', runs, st} end
  return {'underway', runs, st}
end
-- a duplicate that will not run again: counted apart, so the batch does
-- not look healthy, and named by its batch for couponq retry
if st == 'failed' or st == 'canceled' then return {'earlier_failed:' .. (cur[3] or '')} end
return {'duplicate'}
`)

// Accept records one task about to be enqueued, as AcceptMany does for
// batch id.Batch, without a run: a re-sent call counts it a duplicate.
// payloadSHA256 is the hex SHA-256 of the task payload.
func (s *Store) Accept(ctx context.Context, id Identity, payloadSHA256 string) (AcceptOutcome, error) {
	out, err := s.AcceptMany(ctx, id.Batch, Handoff{}, []AcceptItem{{Identity: id, PayloadSHA256: payloadSHA256}})
	if err != nil {
		return "", err
	}
	return out[0], nil
}

// AcceptMany records tasks of batch batchID ("" = none) about to be
// enqueued: a task whose ID is free gets its result hash with status
// queued, the handoff and its payload, and counts in the batch (total and
// task set). outcomes[i] is what became of items[i] (see AcceptOutcome).
// Calling it again with the same arguments, as a client retry after a
// timeout does, changes nothing and answers the same.
//
// It takes two round trips per chunk of MaxAcceptMany: the result steps
// (one script per task, pipelined), then the batch step (the states of
// the batch's tasks and the chunk's events, counted once by the chunk's
// token) with the task set's additions. Resumed and underway tasks are
// applied too: a producer killed between the steps of an earlier run
// leaves the batch behind, and the rerun heals it.
func (s *Store) AcceptMany(ctx context.Context, batchID string, h Handoff, items []AcceptItem) ([]AcceptOutcome, error) {
	if batchID != "" && !hashTagSafe(batchID) {
		return nil, fmt.Errorf("couponq: accept into batch %q: a batch ID holds no brace", batchID)
	}
	out := make([]AcceptOutcome, 0, len(items))
	timeout := strconv.FormatInt(int64(h.Timeout/time.Second), 10)
	for part := 0; len(items) > 0; part++ {
		chunk := items[:min(len(items), MaxAcceptMany)]
		items = items[len(chunk):]
		// Each chunk is its own call, with its own token.
		seq := strconv.Itoa(h.Seq) + "." + strconv.Itoa(part)
		calls := make([]scriptCall, len(chunk))
		for i, it := range chunk {
			id := it.Identity
			calls[i] = scriptCall{keys: []string{ResultKey(id.TaskID)}, args: []any{s.stamp(), s.ttlMillis(), batchID, h.Run,
				h.Run + "/" + seq + "/" + strconv.Itoa(i), h.Queue, timeout,
				id.TaskID, id.Op, id.BrandID, id.ProductCouponID, id.OutRequestNo, it.PayloadSHA256, it.Payload}}
		}
		cmds, err := runPipelined(ctx, s.rdb, acceptScript, calls)
		if err != nil {
			return nil, fmt.Errorf("couponq: accept %d tasks into batch %q: %w", len(chunk), batchID, err)
		}
		a := batchApply{batch: batchID, reopen: true}
		if h.Run != "" {
			a.events.token = "accept:" + h.Run + "/" + seq
		}
		for i, c := range cmds {
			res, err := c.StringSlice()
			if err != nil || len(res) == 0 {
				return nil, fmt.Errorf("couponq: accept %s into batch %q: answer %v: %w", chunk[i].Identity.TaskID, batchID, c.Val(), err)
			}
			o := AcceptOutcome(res[0])
			out = append(out, o)
			switch o.Kind() {
			case Duplicate:
				a.events.duplicates++
			case EarlierFailed:
				a.events.duplicates++
				a.events.earlierFailed++
			case Conflict:
				a.events.conflicts++
			default:
				if len(res) == 3 {
					id := chunk[i].Identity.TaskID
					a.states = append(a.states, taskState{taskID: id, runs: res[1], status: res[2]})
					a.addTasks = append(a.addTasks, id)
				}
			}
		}
		if _, err := s.applyBatches(ctx, []batchApply{a}); err != nil {
			return nil, fmt.Errorf("couponq: accept %d tasks into batch %q: %w", len(chunk), batchID, err)
		}
	}
	return out, nil
}

// Register lists taskIDs of queue as accepted but not yet confirmed in
// asynq (see UnconfirmedKey), before they are accepted: a producer killed
// after the accept leaves them for the workers to adopt. It is idempotent.
func (s *Store) Register(ctx context.Context, queue string, taskIDs []string) error {
	if len(taskIDs) == 0 {
		return nil
	}
	score := float64(s.now().UnixMilli())
	zs := make([]redis.Z, len(taskIDs))
	for i, id := range taskIDs {
		zs[i] = redis.Z{Score: score, Member: id}
	}
	if err := s.rdb.ZAddNX(ctx, UnconfirmedKey(queue), zs...).Err(); err != nil {
		return fmt.Errorf("couponq: register %d tasks: %w", len(taskIDs), err)
	}
	return nil
}

// Confirm drops taskIDs of queue from the unconfirmed ones: their asynq
// task exists, or nothing is left to enqueue for them.
func (s *Store) Confirm(ctx context.Context, queue string, taskIDs []string) error {
	for len(taskIDs) > 0 {
		chunk := taskIDs[:min(len(taskIDs), 1000)]
		taskIDs = taskIDs[len(chunk):]
		members := make([]any, len(chunk))
		for i, id := range chunk {
			members[i] = id
		}
		if err := s.rdb.ZRem(ctx, UnconfirmedKey(queue), members...).Err(); err != nil {
			return fmt.Errorf("couponq: confirm %d tasks: %w", len(chunk), err)
		}
	}
	return nil
}

// Unconfirmed returns up to limit task IDs of queue registered before
// cutoff and not confirmed since.
func (s *Store) Unconfirmed(ctx context.Context, queue string, cutoff time.Time, limit int) ([]string, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, UnconfirmedKey(queue), &redis.ZRangeBy{
		Min: "-inf", Max: "(" + strconv.FormatInt(cutoff.UnixMilli(), 10), Count: int64(limit)}).Result()
	if err != nil {
		return nil, fmt.Errorf("couponq: list unconfirmed tasks of %s: %w", queue, err)
	}
	return ids, nil
}

// unacceptScript is the result step of Unaccept: it removes a result hash
// still queued. Returns {1, batch} when it undid the task, {0} when a
// worker touched the result, {-1} when there is no result (already undone:
// a re-send finds its own work done).
//
// KEYS[1] -> couponq:result:<task_id>
var unacceptScript = newScript("Unaccept", `
local cur = redis.call('HMGET', KEYS[1], 'status', 'batch')
if not cur[1] then return {-1} end
if cur[1] ~= 'queued' then return {0} end
redis.call('DEL', KEYS[1])
return {1, cur[2] or ''}
`)

// Unaccept undoes Accept when the task cannot be enqueued after all: asynq
// holds its task ID for another task. With duplicate set, the task is
// counted as a duplicate of its batch instead (else as a conflict). It does nothing once a
// worker has touched the result.
//
// It reports whether the result is gone: false means a worker already runs
// the task under this result (asynq held the task ID and delivered it), so
// the task stays counted in the batch.
//
// The result goes first, then the batch step takes the task out of the
// batch (counting it as a duplicate or conflict if it was in) and out of
// the task set. A re-send after a crash in between finds no result and
// does the batch step again, which counts nothing twice.
func (s *Store) Unaccept(ctx context.Context, id Identity, duplicate bool) (bool, error) {
	res, err := unacceptScript.Run(ctx, s.rdb, []string{ResultKey(id.TaskID)}).Slice()
	if err != nil || len(res) == 0 {
		return false, fmt.Errorf("couponq: unaccept %s: answer %v: %w", id.TaskID, res, err)
	}
	if n, _ := res[0].(int64); n == 0 {
		return false, nil
	}
	if id.Batch == "" {
		return true, nil
	}
	gone := "gone:" + BatchFieldConflicts
	if duplicate {
		gone = "gone:" + BatchFieldDuplicates
	}
	a := batchApply{batch: id.Batch, states: []taskState{{taskID: id.TaskID, runs: "0", status: gone}}, remTasks: []string{id.TaskID}}
	if _, err := s.applyBatches(ctx, []batchApply{a}); err != nil {
		return false, fmt.Errorf("couponq: unaccept %s: %w", id.TaskID, err)
	}
	return true, nil
}

// Handed is what a result hash says of a task's hand-off to asynq.
type Handed struct {
	TaskID  string
	Status  Status // "" when there is no result
	Op      string
	Batch   string
	Run     string // the run ID, without the call's token
	Queue   string
	Timeout time.Duration
	Payload []byte // nil when the result predates FieldPayload
}

// Handoffs reads the hand-off fields of each task's result in one round trip.
func (s *Store) Handoffs(ctx context.Context, taskIDs []string) ([]Handed, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(taskIDs))
	for i, id := range taskIDs {
		cmds[i] = pipe.HMGet(ctx, ResultKey(id), FieldStatus, FieldOp, FieldBatch, FieldRun, FieldQueue, FieldTimeout, FieldPayload)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("couponq: read %d results: %w", len(taskIDs), err)
	}
	out := make([]Handed, len(taskIDs))
	for i, c := range cmds {
		v := c.Val()
		str := func(j int) string { s, _ := v[j].(string); return s }
		h := Handed{TaskID: taskIDs[i], Status: Status(str(0)), Op: str(1), Batch: str(2), Queue: str(4)}
		h.Run, _, _ = strings.Cut(str(3), "/")
		if n, err := strconv.Atoi(str(5)); err == nil {
			h.Timeout = time.Duration(n) * time.Second
		}
		if p, ok := v[6].(string); ok {
			h.Payload = []byte(p)
		}
		out[i] = h
	}
	return out, nil
}

// beginScript marks a task running (writing its identity if the hash is
// missing) unless it is terminal. Returns {status, attempts so far}, and
// for a terminal task its batch and runs too.
//
// KEYS[1] -> couponq:result:<task_id>
// ARGV[1] -> now
// ARGV[2] -> TTL in milliseconds
// ARGV[3..7] -> task_id, op, brand_id, product_coupon_id, out_request_no
var beginScript = newScript("Begin", `
local cur = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'batch', 'runs')
local st = cur[1]
if st == 'succeeded' or st == 'failed' or st == 'canceled' then
  return {st, cur[2] or '0', cur[3] or '', cur[4] or '1'}
end
local attempts = cur[2] or '0'
if not st then
  redis.call('HSET', KEYS[1], 'task_id', ARGV[3], 'op', ARGV[4], 'brand_id', ARGV[5],
    'product_coupon_id', ARGV[6], 'out_request_no', ARGV[7], 'batch', '',
    'attempts', '0', 'enqueued_at', ARGV[1])
  attempts = '0'
end
redis.call('HSET', KEYS[1], 'status', 'running', 'updated_at', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'running', attempts}
`)

// Begin marks a task running as a worker picks it up and returns the status
// it now has and the API calls recorded by earlier runs (the attempts
// field). A terminal status means the task already finished (asynq
// re-delivered it after a crash): the caller must not call the API again.
// Begin then applies that outcome to the task's batch again before it
// returns (the crash may have come between Finish's two steps), so an
// error means the re-delivery must not be acknowledged yet.
// A task enqueued by other means than the Producer gets its result hash here.
func (s *Store) Begin(ctx context.Context, id Identity) (status Status, attempts int, err error) {
	res, err := beginScript.Run(ctx, s.rdb, []string{ResultKey(id.TaskID)}, s.stamp(), s.ttlMillis(),
		id.TaskID, id.Op, id.BrandID, id.ProductCouponID, id.OutRequestNo).StringSlice()
	if err != nil {
		return "", 0, fmt.Errorf("couponq: begin %s: %w", id.TaskID, err)
	}
	if len(res) != 2 && len(res) != 4 {
		return "", 0, fmt.Errorf("couponq: begin %s: %d values from the script", id.TaskID, len(res))
	}
	n, err := strconv.Atoi(res[1])
	if err != nil {
		return "", 0, fmt.Errorf("couponq: begin %s: attempts %q: %w", id.TaskID, res[1], err)
	}
	if len(res) == 4 {
		if err := s.settleOne(ctx, id.TaskID, res[2], res[3], res[0]); err != nil {
			return "", 0, fmt.Errorf("couponq: begin %s: count its outcome in its batch: %w", id.TaskID, err)
		}
	}
	return Status(res[0]), n, nil
}

// Started is what Start read as a worker took a task, and whether it
// began the task.
type Started struct {
	Status   Status // the task's status before Start ("" = no result)
	Batch    string // the batch its result names
	Request  []byte // the body an earlier run fixed (nil = none)
	Canceled bool   // the batch its header names is canceled
	// Order is the task's order check (when Start was given an entry),
	// OrderErr the check's error.
	Order    OrderCheck
	OrderErr error
	// Begun: the task was not terminal, its batch not canceled and its
	// order let it go, and Start did what Begin does (it is running).
	// Attempts is then what Begin answers, and Request the body stored
	// by FixRequest's rule when Start was given one to fix.
	Begun    bool
	Attempts int
}

// startScript is, on a single server, the reads a worker makes before a
// task starts (its status, batch and fixed request; its header batch's
// cancel mark; its order check, checkOrderScript's body) and, when they
// let it start, Begin (beginScript's body) and FixRequest of a body known
// before the task starts (fixRequestScript's): one round trip, not two or
// three.
//
// KEYS[1] -> couponq:result:<task_id>, KEYS[2] -> couponq:batch:<header batch>
// KEYS[3..5] -> the coupon's order keys (ordered tasks only)
// ARGV[1..7] -> beginScript's arguments
// ARGV[8] -> the task's kind in the order ("" = not ordered)
// ARGV[9] -> the body to fix once begun ("" = none)
//
// Returns {status, batch, request (as fixed, when begun with a body),
// canceled (0/1), the order check or nil, Begin's answer or nil}.
var startScript = redis.NewScript(luaTerminal + luaStep("check_step", checkOrderScript) +
	luaStep("begin_step", beginScript) + luaStep("fix_step", fixRequestScript) + `
local cur = redis.call('HMGET', KEYS[1], 'status', 'batch', 'request')
local canceled = redis.call('HEXISTS', KEYS[2], 'canceled_at')
local chk = false
local go = true
if ARGV[8] ~= '' then
  chk = check_step({KEYS[3], KEYS[4], KEYS[5]}, {ARGV[8], ARGV[3]})
  go = chk[1] == 'go' or (chk[1] == 'unregistered' and ARGV[8] == 'g')
end
local begun = false
if go and canceled == 0 and not terminal(cur[1]) then
  begun = begin_step({KEYS[1]}, {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]})
  if ARGV[9] ~= '' then cur[3] = fix_step({KEYS[1]}, {ARGV[9]}) end
end
return {cur[1], cur[2], cur[3], canceled, chk, begun}
`)

// Start reads, as a worker takes task id from its queue, what decides
// whether it may start (see Started), and begins it (Begin) when nothing
// holds it back: one round trip on a single server. batch is the batch
// the task's header names, order its entry in its coupon's order (nil =
// not ordered). fix, when not empty, is a write's body known before the
// task starts: once begun, Start fixes it as FixRequest does. It answers
// nil, and does nothing, where it cannot: a cluster (the keys lie in
// several slots), or no batch header; the caller then reads, begins and
// fixes as before.
func (s *Store) Start(ctx context.Context, id Identity, batch string, order *OrderEntry, fix []byte) (*Started, error) {
	if batch == "" || !singleServer(s.rdb) {
		return nil, nil
	}
	keys := []string{ResultKey(id.TaskID), BatchKey(batch)}
	kind := ""
	if order != nil {
		keys = append(keys, order.keys()...)
		kind = order.kind()
	}
	cmd := startScript.Run(ctx, s.rdb, keys, s.stamp(), s.ttlMillis(),
		id.TaskID, id.Op, id.BrandID, id.ProductCouponID, id.OutRequestNo, kind, fix)
	res, err := cmd.Slice()
	if err == nil && len(res) != 6 {
		err = fmt.Errorf("%d values from the script", len(res))
	}
	if err != nil {
		return nil, fmt.Errorf("couponq: read the start state of %s: %w", id.TaskID, err)
	}
	str := func(v any) string { s, _ := v.(string); return s }
	st := &Started{Status: Status(str(res[0])), Batch: str(res[1])}
	if body := str(res[2]); body != "" {
		st.Request = []byte(body)
	}
	n, _ := res[3].(int64)
	st.Canceled = n == 1
	if order != nil {
		chk, _ := res[4].([]any)
		ans := make([]string, len(chk))
		for i, v := range chk {
			ans[i] = str(v)
		}
		st.Order, st.OrderErr = parseOrderAnswer(*order, ans, nil)
	}
	if begun, ok := res[5].([]any); ok {
		if len(begun) != 2 || str(begun[0]) != string(StatusRunning) {
			return nil, fmt.Errorf("couponq: begin %s: answer %v", id.TaskID, begun)
		}
		a, err := strconv.Atoi(str(begun[1]))
		if err != nil {
			return nil, fmt.Errorf("couponq: begin %s: attempts %q: %w", id.TaskID, str(begun[1]), err)
		}
		st.Begun, st.Attempts = true, a
	}
	return st, nil
}

// Statuses returns the status of each task in taskIDs, in one round trip;
// "" for a task without a result hash (expired, or never couponq's).
func (s *Store) Statuses(ctx context.Context, taskIDs []string) ([]Status, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(taskIDs))
	for i, id := range taskIDs {
		cmds[i] = pipe.HGet(ctx, ResultKey(id), FieldStatus)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("couponq: read %d statuses: %w", len(taskIDs), err)
	}
	out := make([]Status, len(taskIDs))
	for i, c := range cmds {
		out[i] = Status(c.Val())
	}
	return out, nil
}

// Attempt is what a handler run learned from the API: the calls it made
// and the last answer.
type Attempt struct {
	Calls        int    // API calls made in this run, added to attempts
	HTTPStatus   int    // 0 when no answer arrived
	ErrorCode    string // WeChat Pay's code, or couponq's (e.g. NETWORK_ERROR)
	ErrorMessage string
	RequestID    string
	Coupon       []byte // on success: the ProductCoupon JSON as received
	CouponState  string // on success
	// Token names a Retrying record ("" = none): a call re-sent with the
	// same token (go-redis sends a pipeline again after a read timeout;
	// the worker's store pipelines) adds its calls to attempts once.
	Token string
}

func (a *Attempt) args() []any {
	hs := ""
	if a.HTTPStatus != 0 {
		hs = strconv.Itoa(a.HTTPStatus)
	}
	return []any{strconv.Itoa(a.Calls), hs, a.ErrorCode, a.ErrorMessage, a.RequestID}
}

// retryingScript records a failed attempt to be retried, unless terminal.
//
// KEYS[1] -> couponq:result:<task_id>
// ARGV[1] -> now
// ARGV[2] -> TTL in milliseconds
// ARGV[3] -> API calls made in this run
// ARGV[4..7] -> http_status, error_code, error_message, request_id
// ARGV[8] -> the record's token ("" = none), kept in retry_token
var retryingScript = newScript("Retrying", `
local cur = redis.call('HMGET', KEYS[1], 'status', 'retry_token', 'attempts')
local st = cur[1]
if st == 'succeeded' or st == 'failed' or st == 'canceled' then return 0 end
if ARGV[8] ~= '' and cur[2] == ARGV[8] then return 1 end
-- attempts += the run's calls, and the token, in the same HSET
redis.call('HSET', KEYS[1], 'status', 'retrying', 'updated_at', ARGV[1], 'http_status', ARGV[4],
  'error_code', ARGV[5], 'error_message', ARGV[6], 'request_id', ARGV[7],
  'attempts', tostring((tonumber(cur[3]) or 0) + (tonumber(ARGV[3]) or 0)), 'retry_token', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// Retrying records a failed attempt that will be retried. It does nothing
// to a terminal result.
func (s *Store) Retrying(ctx context.Context, taskID string, a Attempt) error {
	args := append([]any{s.stamp(), s.ttlMillis()}, a.args()...)
	args = append(args, a.Token)
	if err := retryingScript.Run(ctx, s.rdb, []string{ResultKey(taskID)}, args...).Err(); err != nil {
		return fmt.Errorf("couponq: record retry of %s: %w", taskID, err)
	}
	return nil
}

// finishScript is the result step of Finish: it moves a task to its
// terminal status once. Returns {1, batch, runs, status} when it did,
// {0, batch, runs, status} when the task was already terminal, {-1, batch,
// runs, status} when ARGV[11] asked for a task not started and a worker
// runs it. A cancel records only its code and message: the other fields
// keep the task's last attempt.
//
// KEYS[1] -> couponq:result:<task_id>
// ARGV[1] -> now
// ARGV[2] -> TTL in milliseconds
// ARGV[3] -> API calls made in this run
// ARGV[4..7] -> http_status, error_code, error_message, request_id
// ARGV[8] -> terminal status
// ARGV[9] -> coupon JSON, ARGV[10] -> coupon_state
// ARGV[11] -> "unstarted": only a task queued or retrying (not in a call)
var finishScript = newScript("Finish", luaTerminal+`
local cur = redis.call('HMGET', KEYS[1], 'status', 'batch', 'runs', 'attempts')
local st, batch, runs = cur[1], cur[2] or '', cur[3] or '1'
if terminal(st) then return {0, batch, runs, st} end
if ARGV[11] == 'unstarted' and st ~= 'queued' and st ~= 'retrying' then return {-1, batch, runs, st or ''} end
-- attempts += the run's calls, in the same HSET
local attempts = tostring((tonumber(cur[4]) or 0) + (tonumber(ARGV[3]) or 0))
if ARGV[8] == 'canceled' then
  redis.call('HSET', KEYS[1], 'status', ARGV[8], 'updated_at', ARGV[1], 'finished_at', ARGV[1],
    'error_code', ARGV[5], 'error_message', ARGV[6], 'attempts', attempts)
else
  redis.call('HSET', KEYS[1], 'status', ARGV[8], 'updated_at', ARGV[1], 'finished_at', ARGV[1],
    'http_status', ARGV[4], 'error_code', ARGV[5], 'error_message', ARGV[6], 'request_id', ARGV[7],
    'coupon', ARGV[9], 'coupon_state', ARGV[10], 'attempts', attempts)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, batch, runs, ARGV[8]}
`)

// Finish moves a task to its terminal status (succeeded, failed or
// canceled) with the last attempt's details, and counts it in its batch,
// finishing the batch when it was the last. It happens at most once per
// run of a task: a second call returns false and changes no result.
//
// Two round trips: the result step, then the batch step (with the task
// set, for a task the batch did not count yet: its accept's batch step
// was lost). A crash in between is healed by calling Finish again (as
// the task's re-run does: asynq re-delivers it) or Begin, Settle or
// RepairBatch: the batch step is applied again whether or not this call
// changed the result.
func (s *Store) Finish(ctx context.Context, taskID string, status Status, a Attempt) (bool, error) {
	n, _, err := s.finish(ctx, []string{taskID}, status, a, "", nil)
	if err != nil {
		return false, err
	}
	return n[0] == 1, nil
}

// FinishAndRelease is Finish, then ReleaseOrder(release) in the same round
// trip as Finish's batch step: a worker's finished change leaves its
// coupon's order one round trip sooner. wake is what the release says may
// start now. An error of either step is err: the caller runs the task
// again, and both steps are idempotent.
//
// batch is the batch the caller read from the task's result ("" = not
// known). On a single server, where one script may touch every key, the
// result step, that batch's step and the release are then one script
// (finishOneScript): one round trip, not two. Should the result name
// another batch, its step follows as Finish's does.
func (s *Store) FinishAndRelease(ctx context.Context, taskID, batch string, status Status, a Attempt, release []OrderEntry) (done bool, wake []string, err error) {
	if batch != "" && hashTagSafe(batch) && status.Terminal() && singleServer(s.rdb) {
		return s.finishOne(ctx, taskID, batch, status, a, release)
	}
	n, wake, err := s.finish(ctx, []string{taskID}, status, a, "", release)
	if err != nil {
		return false, nil, err
	}
	return n[0] == 1, wake, nil
}

// finishOneScript runs Finish's result step (finishScript), then, when the
// result names the expected batch, its batch step (applyBatchScript and
// addTasksScript, as stateApplies makes it), then the releases
// (releaseOrderScript): each script's own body, in the order the
// two-step path sends them, in one call. Only on a single server: its
// keys lie in several slots.
//
// KEYS[1] -> couponq:result:<task_id>
// KEYS[2..4] -> the expected batch's script keys (batchScriptKeys)
// KEYS[5] -> its task set
// KEYS[6..] -> per release: the coupon's order keys
// ARGV[1..11] -> finishScript's arguments
// ARGV[12] -> the expected batch, ARGV[13] -> task_id, ARGV[14] -> maxWake
// ARGV[15..] -> per release: kind, task_id
//
// Returns {finishScript's answer, applyBatchScript's answer or nil when
// the batch step did not run, the task IDs the releases wake}.
var finishOneScript = redis.NewScript(luaTerminal + luaStep("finish_step", finishScript) +
	luaStep("apply_step", applyBatchScript) + luaStep("add_tasks", addTasksScript) +
	luaStep("release_step", releaseOrderScript) + `
local r = finish_step({KEYS[1]}, {unpack(ARGV, 1, 11)})
local applied = false
if r[2] == ARGV[12] and terminal(r[4]) then
  applied = apply_step({KEYS[2], KEYS[3], KEYS[4]}, {ARGV[1], ARGV[2], '', '', '0', '0', '0', ARGV[13], r[3], r[4]})
  add_tasks({KEYS[5]}, {ARGV[2], ARGV[13]})
end
local wake = {}
for i = 15, #ARGV, 2 do
  local k = 6 + (i - 15) / 2 * 3
  for _, id in ipairs(release_step({KEYS[k], KEYS[k + 1], KEYS[k + 2]}, {ARGV[i], ARGV[i + 1], ARGV[14]})) do
    wake[#wake + 1] = id
  end
end
return {r, applied, wake}
`)

// finishOne is FinishAndRelease on a single server (finishOneScript).
func (s *Store) finishOne(ctx context.Context, taskID, batch string, status Status, a Attempt, release []OrderEntry) (bool, []string, error) {
	keys := make([]string, 0, 5+3*len(release))
	keys = append(append(append(keys, ResultKey(taskID)), batchScriptKeys(batch)...), BatchTasksKey(batch))
	args := make([]any, 0, 14+2*len(release))
	args = append(append(args, s.stamp(), s.ttlMillis()), a.args()...)
	args = append(args, string(status), string(a.Coupon), a.CouponState, "", batch, taskID, maxWake)
	for _, e := range release {
		keys = append(keys, e.keys()...)
		args = append(args, e.kind(), e.TaskID)
	}
	cmd := finishOneScript.Run(ctx, s.rdb, keys, args...)
	res, err := cmd.Slice()
	var fin []any
	if err == nil && len(res) == 3 {
		fin, _ = res[0].([]any)
	}
	if len(fin) != 4 {
		return false, nil, fmt.Errorf("couponq: finish %s: answer %v: %w", taskID, cmd.Val(), err)
	}
	n, _ := fin[0].(int64)
	b, _ := fin[1].(string)
	runs, _ := fin[2].(string)
	st, _ := fin[3].(string)
	var wake []string
	if ids, ok := res[2].([]any); ok {
		for _, id := range ids {
			if id, ok := id.(string); ok {
				wake = append(wake, id)
			}
		}
	}
	// The batch step did not run (the result names another batch), or
	// found a batch of an older couponq (-2, rebuilt first): as Finish.
	applied, _ := res[1].([]any)
	legacy := len(applied) > 0 && applied[0] == int64(-2)
	if (applied == nil && Status(st).Terminal()) || legacy {
		states := []taskState{{taskID: taskID, runs: runsOf(runs), status: st}}
		if _, err := s.applyBatches(ctx, stateApplies([]string{b}, states)); err != nil {
			return false, nil, fmt.Errorf("couponq: finish %s: count in the batch: %w", taskID, err)
		}
	}
	return n == 1, wake, nil
}

// finish runs the result step of Finish for each task (pipelined), then
// the batch steps of their batches in one pipeline, with the order
// releases of release. It returns each task's answer (see finishScript)
// and the task IDs the releases wake.
func (s *Store) finish(ctx context.Context, taskIDs []string, status Status, a Attempt, only string, release []OrderEntry) ([]int, []string, error) {
	what := "finish " + strconv.Itoa(len(taskIDs)) + " tasks"
	if len(taskIDs) == 1 {
		what = "finish " + taskIDs[0]
	}
	if !status.Terminal() {
		return nil, nil, fmt.Errorf("couponq: %s: status %q is not terminal", what, status)
	}
	args := append([]any{s.stamp(), s.ttlMillis()}, a.args()...)
	args = append(args, string(status), string(a.Coupon), a.CouponState, only)
	calls := make([]scriptCall, len(taskIDs))
	for i, id := range taskIDs {
		calls[i] = scriptCall{keys: []string{ResultKey(id)}, args: args}
	}
	cmds, err := runPipelined(ctx, s.rdb, finishScript, calls)
	if err != nil {
		return nil, nil, fmt.Errorf("couponq: %s: %w", what, err)
	}
	out := make([]int, len(cmds))
	batches, states := make([]string, len(cmds)), make([]taskState, len(cmds))
	for i, c := range cmds {
		res, err := c.Slice()
		if err != nil || len(res) != 4 {
			return nil, nil, fmt.Errorf("couponq: %s: answer %v for %s: %w", what, c.Val(), taskIDs[i], err)
		}
		n, _ := res[0].(int64)
		out[i] = int(n)
		b, _ := res[1].(string)
		runs, _ := res[2].(string)
		st, _ := res[3].(string)
		if Status(st).Terminal() {
			batches[i], states[i] = b, taskState{taskID: taskIDs[i], runs: runsOf(runs), status: st}
		}
	}
	var rel []*redis.Cmd
	extra := func(p redis.Pipeliner) {
		for _, e := range release {
			rel = append(rel, releaseOrderScript.EvalSha(ctx, p, e.keys(), e.kind(), e.TaskID, maxWake))
		}
	}
	if _, err := s.applyBatchesWith(ctx, stateApplies(batches, states), extra, releaseOrderScript); err != nil {
		return nil, nil, fmt.Errorf("couponq: %s: count in the batch and release the order: %w", what, err)
	}
	var wake []string
	for _, c := range rel {
		ids, _ := c.StringSlice()
		wake = append(wake, ids...)
	}
	return out, wake, nil
}
