package results

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-coupon order (SPEC "Order and updates"): a write starts only after
// every write enqueued before it to the same coupon is terminal; a get
// starts only after the writes enqueued before it are.
//
// Each coupon (brand_id + product_coupon_id) has three keys sharing the
// hash tag {<brand_id>:<product_coupon_id>}, so every script below touches
// one hash slot:
//
//	couponq:order:{B:C}:writes  ZSET: the coupon's writes not yet released, scored by their place
//	couponq:order:{B:C}:gets    ZSET: its gets not yet released, same places
//	couponq:order:{B:C}         HASH: seq (the last place given) and at:<task_id> (when a write was registered, Unix ms)
//
// A change is registered before it is accepted, in the order of its input,
// and released when it is terminal. What a crash or a refused accept leaves
// behind heals: a waiter whose predecessor's result is terminal, or has
// been missing for longer than OrderPhantomGrace, drops it.
const orderKeyPrefix = keyPrefix + "order:"

// OrderPhantomGrace is how long a registered write without a result is
// taken for one whose accept is still on its way (a producer riding out a
// Redis stall); past it, the waiter behind it drops it (its producer died,
// or its accept was refused or undone).
const OrderPhantomGrace = 2 * time.Minute

// OrderKeys returns the order keys of a coupon: its writes, its gets and
// its hash, in that order.
func OrderKeys(brandID, productCouponID string) []string {
	base := orderKeyPrefix + "{" + brandID + ":" + productCouponID + "}"
	return []string{base + ":writes", base + ":gets", base}
}

// OrderEntry names one change in its coupon's order.
type OrderEntry struct {
	TaskID          string
	Op              string // "update", "deactivate" or "get"
	BrandID         string
	ProductCouponID string
}

func (e OrderEntry) kind() string {
	if e.Op == "get" {
		return "g"
	}
	return "w"
}

func (e OrderEntry) keys() []string { return OrderKeys(e.BrandID, e.ProductCouponID) }

// registerOrderScript gives each change of one coupon, in the order given,
// the next place, unless it has one (mode "keep") or always (mode "end":
// couponq retry, the change goes behind everything enqueued so far).
//
// KEYS[1..3] -> the coupon's order keys
// ARGV[1] -> now (Unix ms), ARGV[2] -> TTL in milliseconds, ARGV[3] -> mode
// ARGV[4..] -> per change: kind ("w" or "g"), task_id
var registerOrderScript = newScript("RegisterOrder", `
local n, used = 0, {[3] = true}
for i = 4, #ARGV, 2 do
  local k = 1
  if ARGV[i] == 'g' then k = 2 end
  used[k] = true
  local id = ARGV[i + 1]
  if ARGV[3] == 'end' or not redis.call('ZSCORE', KEYS[k], id) then
    local seq = redis.call('HINCRBY', KEYS[3], 'seq', 1)
    redis.call('ZADD', KEYS[k], seq, id)
    -- only a write is ever a waiter's predecessor (CheckOrder's head)
    if k == 1 then redis.call('HSET', KEYS[3], 'at:' .. id, ARGV[1]) end
    n = n + 1
  end
end
-- the keys this call registered in live on (PEXPIRE leaves a key that
-- does not exist alone)
for k = 1, 3 do
  if used[k] then redis.call('PEXPIRE', KEYS[k], ARGV[2]) end
end
return n
`)

// RegisterOrder gives each entry its place in its coupon's order, in the
// order of entries, one script call per coupon (pipelined). An entry that
// has a place keeps it (a re-sent registration changes nothing) unless
// toEnd is set, which moves it behind every change registered so far
// (couponq retry).
func (s *Store) RegisterOrder(ctx context.Context, entries []OrderEntry, toEnd bool) error {
	if len(entries) == 0 {
		return nil
	}
	mode := "keep"
	if toEnd {
		mode = "end"
	}
	type coupon struct{ brand, id string }
	var order []coupon
	args := map[coupon][]any{}
	for _, e := range entries {
		c := coupon{e.BrandID, e.ProductCouponID}
		if _, ok := args[c]; !ok {
			order = append(order, c)
			args[c] = []any{s.now().UnixMilli(), s.ttlMillis(), mode}
		}
		args[c] = append(args[c], e.kind(), e.TaskID)
	}
	calls := make([]scriptCall, len(order))
	for i, c := range order {
		calls[i] = scriptCall{keys: OrderKeys(c.brand, c.id), args: args[c]}
	}
	if _, err := runPipelined(ctx, s.rdb, registerOrderScript, calls); err != nil {
		return fmt.Errorf("couponq: register the order of %d changes: %w", len(entries), err)
	}
	return nil
}

// checkOrderScript says whether a change may start: 'go', 'unregistered',
// or 'wait' with the write it waits for (the coupon's first), its place
// and when it was registered.
//
// KEYS[1..3] -> the coupon's order keys
// ARGV[1] -> kind, ARGV[2] -> task_id
var checkOrderScript = newScript("CheckOrder", `
local mine = KEYS[1]
if ARGV[1] == 'g' then mine = KEYS[2] end
local s = redis.call('ZSCORE', mine, ARGV[2])
if not s then return {'unregistered'} end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #head == 0 or head[1] == ARGV[2] or tonumber(head[2]) > tonumber(s) then return {'go'} end
return {'wait', head[1], head[2], redis.call('HGET', KEYS[3], 'at:' .. head[1]) or ''}
`)

// OrderCheck is what CheckOrder found.
type OrderCheck struct {
	// Go: nothing enqueued before the change is left to wait for.
	Go bool
	// Unregistered: the change has no place in the order (enqueued by
	// other means, or its producer died before registering it).
	Unregistered bool
	// Otherwise the change waits for Pred, the coupon's first write, at
	// place PredPlace, registered at PredSince (zero if unknown).
	Pred      string
	PredPlace string
	PredSince time.Time
}

// CheckOrder reports whether the change e may start now.
func (s *Store) CheckOrder(ctx context.Context, e OrderEntry) (OrderCheck, error) {
	return parseOrderCheck(e, checkOrderScript.Run(ctx, s.rdb, e.keys(), e.kind(), e.TaskID))
}

// CheckOrderIn queues CheckOrder's script on pipe (it only reads), so a
// caller can send it with other reads in one round trip. The returned
// func reads its answer after the pipeline ran; when Redis did not know
// the script yet, it asks again with CheckOrder.
func (s *Store) CheckOrderIn(ctx context.Context, pipe redis.Pipeliner, e OrderEntry) func() (OrderCheck, error) {
	cmd := checkOrderScript.EvalSha(ctx, pipe, e.keys(), e.kind(), e.TaskID)
	return func() (OrderCheck, error) {
		if redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			return s.CheckOrder(ctx, e)
		}
		return parseOrderCheck(e, cmd)
	}
}

func parseOrderCheck(e OrderEntry, cmd *redis.Cmd) (OrderCheck, error) {
	res, err := cmd.StringSlice()
	return parseOrderAnswer(e, res, err)
}

// parseOrderAnswer reads checkOrderScript's answer res (err: its error).
func parseOrderAnswer(e OrderEntry, res []string, err error) (OrderCheck, error) {
	if err != nil {
		return OrderCheck{}, fmt.Errorf("couponq: check the order of %s: %w", e.TaskID, err)
	}
	switch {
	case len(res) == 1 && res[0] == "go":
		return OrderCheck{Go: true}, nil
	case len(res) == 1 && res[0] == "unregistered":
		return OrderCheck{Unregistered: true}, nil
	case len(res) == 4 && res[0] == "wait":
		c := OrderCheck{Pred: res[1], PredPlace: res[2]}
		if ms, err := strconv.ParseInt(res[3], 10, 64); err == nil {
			c.PredSince = time.UnixMilli(ms)
		}
		return c, nil
	}
	return OrderCheck{}, fmt.Errorf("couponq: check the order of %s: unexpected answer %q", e.TaskID, res)
}

// dropOrderScript removes a write from its coupon's order if it still has
// the place the caller saw (a retry may have given it another since).
//
// KEYS[1..3] -> the coupon's order keys
// ARGV[1] -> task_id, ARGV[2] -> its place as seen
var dropOrderScript = newScript("DropFromOrder", `
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], 'at:' .. ARGV[1])
  return 1
end
return 0
`)

// DropFromOrder removes the write predID of e's coupon from the order if
// it still holds place: a waiter found its result terminal or long
// missing. It reports whether it did.
func (s *Store) DropFromOrder(ctx context.Context, e OrderEntry, predID, place string) (bool, error) {
	n, err := dropOrderScript.Run(ctx, s.rdb, e.keys(), predID, place).Int()
	if err != nil {
		return false, fmt.Errorf("couponq: drop %s from the order: %w", predID, err)
	}
	return n == 1, nil
}

// releaseOrderScript removes a terminal change from its coupon's order
// and, when a write left it, returns who may start now: the coupon's new
// first write and the gets before it (up to ARGV[3]).
//
// KEYS[1..3] -> the coupon's order keys
// ARGV[1] -> kind, ARGV[2] -> task_id, ARGV[3] -> limit
var releaseOrderScript = newScript("ReleaseOrder", `
local set = KEYS[1]
if ARGV[1] == 'g' then set = KEYS[2] end
local removed = redis.call('ZREM', set, ARGV[2])
-- only a write has an at: field (RegisterOrder)
if ARGV[1] == 'g' then return {} end
redis.call('HDEL', KEYS[3], 'at:' .. ARGV[2])
if removed == 0 then return {} end
local wake = {}
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local upto = '+inf'
if #head > 0 then
  wake[1] = head[1]
  upto = '(' .. head[2]
end
for _, g in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', upto, 'LIMIT', 0, tonumber(ARGV[3]))) do
  wake[#wake + 1] = g
end
return wake
`)

// maxWake bounds the gets one release names to be woken.
const maxWake = 100

// ReleaseOrder removes terminal changes from their coupons' orders (one
// pipelined script call each) and returns the task IDs that may start
// now because of it, to be woken. It is idempotent: a change released
// already wakes nobody.
func (s *Store) ReleaseOrder(ctx context.Context, entries []OrderEntry) ([]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	calls := make([]scriptCall, len(entries))
	for i, e := range entries {
		calls[i] = scriptCall{keys: e.keys(), args: []any{e.kind(), e.TaskID, maxWake}}
	}
	cmds, err := runPipelined(ctx, s.rdb, releaseOrderScript, calls)
	if err != nil {
		return nil, fmt.Errorf("couponq: release %d changes from the order: %w", len(entries), err)
	}
	var wake []string
	for _, c := range cmds {
		ids, _ := c.StringSlice()
		wake = append(wake, ids...)
	}
	return wake, nil
}

// scriptCall is one call of a script in runPipelined.
type scriptCall struct {
	keys []string
	args []any
}

// pipelineChunk bounds the script calls sent in one pipeline.
const pipelineChunk = 256

// runPipelined runs script once per call, pipelined by EVALSHA (see
// pipelined). It returns the commands in the order of calls.
//
// A single call is sent with script.Run instead: through the producer's
// automatic pipelining (package autopipe), which coalesces the
// one-task calls of many goroutines.
func runPipelined(ctx context.Context, rdb redis.UniversalClient, script *redis.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	if len(calls) == 1 {
		cmd := script.Run(ctx, rdb, calls[0].keys, calls[0].args...)
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		return []*redis.Cmd{cmd}, nil
	}
	if bundle, ok := bundled(rdb, script); ok {
		return runBundled(ctx, rdb, bundle, calls)
	}
	out := make([]*redis.Cmd, 0, len(calls))
	for len(calls) > 0 {
		chunk := calls[:min(len(calls), pipelineChunk)]
		calls = calls[len(chunk):]
		cmds := make([]*redis.Cmd, len(chunk))
		err := pipelined(ctx, rdb, func(p redis.Pipeliner) {
			for i, c := range chunk {
				cmds[i] = script.EvalSha(ctx, p, c.keys, c.args...)
			}
		}, script)
		if err != nil {
			return nil, err
		}
		out = append(out, cmds...)
	}
	return out, nil
}

// pipelined sends fill's commands in one pipeline. The commands Redis
// refused for not knowing their script (NOSCRIPT: a fresh server, one
// restarted, or a cluster master that never ran it) are sent again, and
// only they, once scripts are loaded: the others ran, and their answers
// stand (a script sent again would answer for its own earlier run, e.g.
// "already terminal"). It returns the first other error.
func pipelined(ctx context.Context, rdb redis.UniversalClient, fill func(redis.Pipeliner), scripts ...*redis.Script) error {
	cmds, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		fill(p)
		return nil
	})
	if err == nil {
		return nil
	}
	var again []redis.Cmder
	for _, c := range cmds {
		switch cerr := c.Err(); {
		case cerr == nil || errors.Is(cerr, redis.Nil):
		case redis.HasErrorPrefix(cerr, "NOSCRIPT"):
			again = append(again, c)
		default:
			return cerr
		}
	}
	if len(again) == 0 {
		return err
	}
	for _, sc := range scripts {
		if lerr := sc.Load(ctx, rdb).Err(); lerr != nil {
			return lerr
		}
	}
	_, err = rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, c := range again {
			_ = p.Process(ctx, c)
		}
		return nil
	})
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}
