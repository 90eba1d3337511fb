package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultJitterMargin is how much later than its booked slot, relative to
// the other calls, a call may reach WeChat Pay without a 429.
//
// WeChat Pay counts calls as they arrive, and arrival = slot + (Redis round
// trip, timer overshoot, signing, network). Only the spread of that delay
// matters: the limiter keeps any N+1 consecutive slots at least
// window + margin apart, so however each call's delay falls within a range
// of width margin, N+1 arrivals never fit in one window. 30 ms covers the
// usual loopback-to-internet spread and costs margin/(window+margin) ≈ 2.9%
// of the quota (BenchmarkQuota: with 25 ms, a few calls per thousand still
// arrived over the ceiling on a loaded 2-core host; 30 ms keeps ≥ 97%).
const DefaultJitterMargin = 30 * time.Millisecond

// rateWindow is the window of WeChat Pay's quota: N calls per any second.
const rateWindow = time.Second

// backoffHalfLife is how fast the memory of 429s fades: each 429 adds 1 to
// a level halving every backoffHalfLife, and books floor(level) - 1 empty
// slots. A lone 429 books none (a stray 429 costs its own call, nothing
// more); a run of them within a second books more; once they stop the
// level is back near 0 within a few seconds. Half a second keeps random
// 429s at a few per cent of calls from ever booking one (with one empty
// slot per lone 429, 2% stray 429s cost 2% of the quota).
const backoffHalfLife = 500 * time.Millisecond

// backoffStateTTL is how long the 429 state outlives the last 429: ten
// half-lives, when the level is below 0.001.
const backoffStateTTL = 10 * backoffHalfLife

// maxQueue caps how far ahead a Wait may book, whatever its maxWait, so a
// huge maxWait cannot overflow the microsecond arithmetic.
const maxQueue = time.Hour

// Limiter keeps the calls to each WeChat Pay endpoint of one identity within
// rate calls in any sliding window of one second, for every worker process
// together. Its state lives in Redis, a log of booked slot times per
// endpoint written by one Lua script on the Redis clock, so any number of
// processes share one budget and one clock.
//
// A call books the earliest slot t ≥ now such that the slots booked before
// it and later than t − (1 s + margin) number fewer than rate: any rate+1
// consecutive slots are then 1 s + margin apart, which tolerates arrival
// jitter up to the margin (DefaultJitterMargin). A 429 seen by any process
// (Backoff) books a few empty slots in the same log: a short slowdown shared
// by all, proportional to how often 429s come, never a pause.
//
// A nil *Limiter is valid and unlimited.
type Limiter struct {
	rdb      redis.UniversalClient
	identity string
	rate     int
	margin   time.Duration
	metrics  *Metrics
	sleep    func(ctx context.Context, d time.Duration) error
	// now, when set (tests only), replaces the Redis clock in the scripts.
	now func() time.Time

	id  string        // makes this process's log members unique
	seq atomic.Uint64 // and this counter within it
}

// LimiterOption configures a Limiter.
type LimiterOption func(*Limiter)

// WithJitterMargin sets the margin added to the window between any slot and
// the one rate slots later (default DefaultJitterMargin): the arrival
// jitter the limiter absorbs, at a cost of margin/(1 s + margin) of the
// quota. Negative values mean 0.
func WithJitterMargin(d time.Duration) LimiterOption {
	return func(l *Limiter) { l.margin = max(d, 0) }
}

// WithLimiterMetrics reports booked slots, 429 backoffs, empty slots and
// the share of the quota in use to m. A nil m reports nothing.
func WithLimiterMetrics(m *Metrics) LimiterOption {
	return func(l *Limiter) { l.metrics = m }
}

// WithSleep replaces the function Wait blocks with. It must return nil after
// d, or ctx's error as soon as ctx is done. Tests inject one that advances a
// fake clock; the default selects on a timer and ctx.Done().
func WithSleep(sleep func(ctx context.Context, d time.Duration) error) LimiterOption {
	return func(l *Limiter) {
		if sleep != nil {
			l.sleep = sleep
		}
	}
}

// NewLimiter returns a limiter of rate calls per second for each endpoint of
// identity (the mchid, or the brand_id in brand mode), shared through rdb by
// every process using the same identity. A rate of 0 or less returns nil,
// which is unlimited. It panics if rate > 0 and rdb is nil.
func NewLimiter(rdb redis.UniversalClient, identity string, rate int, opts ...LimiterOption) *Limiter {
	if rate <= 0 {
		return nil
	}
	if rdb == nil {
		panic("worker.NewLimiter: nil Redis client")
	}
	var id [6]byte
	_, _ = rand.Read(id[:]) // never fails (crypto/rand since Go 1.24)
	l := &Limiter{
		rdb:      rdb,
		identity: identity,
		rate:     rate,
		margin:   DefaultJitterMargin,
		sleep:    sleepCtx,
		id:       hex.EncodeToString(id[:]),
	}
	for _, opt := range opts {
		opt(l)
	}
	return l
}

// RateLimitedError reports that no call slot for Endpoint was free within the
// time the caller was willing to wait. Nothing was reserved; the caller should
// retry after RetryIn (the worker hands the task back to asynq without
// counting it as a failure).
type RateLimitedError struct {
	Endpoint string        // the op: "update", "deactivate" or "get"
	RetryIn  time.Duration // when a Wait with the same maxWait can expect to succeed
}

// Error implements error.
func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("worker: rate limit of %s reached: retry in %s", e.Endpoint, e.RetryIn)
}

// RetryAfter returns RetryIn; the worker core detects rate limiting through
// this method.
func (e *RateLimitedError) RetryAfter() time.Duration { return e.RetryIn }

// Wait blocks until the caller may make one call to endpoint, and reports how
// long it waited. The endpoint is the op ("update", "deactivate", "get").
//
// Wait books the earliest free slot — but only if it is at most maxWait
// away; otherwise it books nothing and returns a *RateLimitedError. A slot
// is booked only by a caller that then waits for it, so refused callers
// never eat the quota. If ctx ends while waiting, Wait returns ctx's error
// and the booked slot is lost (it still counts: the call may be made by
// nobody, but never by two).
func (l *Limiter) Wait(ctx context.Context, endpoint string, maxWait time.Duration) (waited time.Duration, err error) {
	if l == nil || l.rate <= 0 {
		return 0, nil
	}
	for rebooks := 0; ; rebooks++ {
		start := l.clock()
		b, err := l.book(ctx, endpoint, maxWait)
		if err != nil {
			return waited, fmt.Errorf("worker: rate limiter %s: %w", endpoint, err)
		}
		if !b.booked {
			return waited, &RateLimitedError{Endpoint: endpoint, RetryIn: b.retryIn}
		}
		l.metrics.observeSlot(endpoint, float64(b.inWindow)/float64(l.rate))
		// The script measured the delay on Redis' clock about half a round
		// trip ago: take that off, so every call reaches its slot the same
		// time after it whatever its round trip took (the spread of that
		// lateness is what the margin must absorb).
		booked := l.clock()
		target := booked.Add(b.delay - booked.Sub(start)/2)
		if delay := target.Sub(booked); delay > 0 {
			if err := l.sleep(ctx, delay); err != nil {
				return waited, fmt.Errorf("worker: rate limiter %s: %w", endpoint, err)
			}
			waited += delay
		}
		woke := l.clock()
		// A call that wakes well after its slot (the host stalled: a
		// timer, the scheduler, a paused VM) would arrive with the calls
		// of later slots, and after a stall they all arrive at once: it
		// gives its slot up, left empty, and books the next free one. The
		// margin is mostly for the network, so a third of it is allowed
		// here.
		if woke.Sub(target) <= l.margin/3 || rebooks == maxRebooks {
			return waited, nil
		}
		l.metrics.observeRebook(endpoint)
	}
}

// maxRebooks bounds how many late slots one Wait gives up.
const maxRebooks = 2

// clock is the limiter's local clock: the injected one in tests, where
// scripts and sleeps take no time unless the test says so.
func (l *Limiter) clock() time.Time {
	if l.now != nil {
		return l.now()
	}
	return time.Now()
}

// booking is the answer of the booking script.
type booking struct {
	booked   bool
	delay    time.Duration // from now to the booked slot
	retryIn  time.Duration // refused: when the slot would fit maxWait
	inWindow int           // call slots in the window ending at the slot
}

// book runs bookScript for one call slot of endpoint.
func (l *Limiter) book(ctx context.Context, endpoint string, maxWait time.Duration) (booking, error) {
	maxWait = min(max(maxWait, 0), maxQueue)
	member := l.id + ":" + strconv.FormatUint(l.seq.Add(1), 36)
	res, err := bookScript.Run(ctx, l.rdb, []string{l.logKey(endpoint)},
		l.rate, rateWindow.Microseconds(), l.margin.Microseconds(),
		maxWait.Microseconds(), member, l.nowArg()).Int64Slice()
	if err != nil {
		return booking{}, err
	}
	if len(res) != 4 {
		return booking{}, fmt.Errorf("booking script answered %v", res)
	}
	if res[0] == 0 {
		return booking{retryIn: max(time.Duration(res[1])*time.Microsecond, time.Millisecond)}, nil
	}
	return booking{
		booked:   true,
		delay:    time.Duration(res[1]) * time.Microsecond,
		inWindow: int(res[2]),
	}, nil
}

// Backoff tells every process sharing the limiter that WeChat Pay answered
// 429 on endpoint anyway. The call that got it is lost, not the quota: no
// pause; instead the next free slots are booked empty (left unused), none
// for a lone 429 and more when 429s come in quick succession, at most rate/4
// (at least 1) per second, and none once 429s stop. d, the Retry-After
// WeChat Pay gave, is the task's own delay (the handler defers the task by
// it) and does not slow the others. Backoff on an unlimited Limiter does
// nothing.
func (l *Limiter) Backoff(ctx context.Context, endpoint string, d time.Duration) error {
	if l == nil || l.rate <= 0 {
		return nil
	}
	_ = d
	member := l.id + ":" + strconv.FormatUint(l.seq.Add(1), 36)
	n, err := backoffScript.Run(ctx, l.rdb, []string{l.logKey(endpoint), l.backoffKey(endpoint)},
		l.rate, rateWindow.Microseconds(), l.margin.Microseconds(),
		backoffHalfLife.Microseconds(), max(l.rate/4, 1), backoffStateTTL.Milliseconds(),
		member, l.nowArg()).Int64()
	if err != nil {
		return fmt.Errorf("worker: rate limiter %s: backoff: %w", endpoint, err)
	}
	l.metrics.observeBackoff(endpoint, int(n))
	return nil
}

// nowArg is the clock override of the scripts: "" (use Redis TIME) unless a
// test set l.now.
func (l *Limiter) nowArg() string {
	if l.now == nil {
		return ""
	}
	return strconv.FormatInt(l.now().UnixMicro(), 10)
}

// The script library. Every script touches only keys of one identity's hash
// tag, so they run on Redis Cluster. Times are integer microseconds (exact
// in a Lua double until the year 2255); members are "c:<µs>:<owner>" for a
// call slot and "e:<µs>:<owner>" for an empty one, scored by their time.
const luaCommon = `
local function clock(arg)
  if arg ~= nil and arg ~= "" then return tonumber(arg) end
  local t = redis.call("TIME")
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- earliest returns the first time t ≥ now such that the n slots before t
-- all lie at or before t - span: then no n+1 consecutive slots fit in
-- span. Slots are booked in order (t ≥ the last one), so only the tail
-- needs checking, and at least span/n apart, so that a backlog is served
-- evenly rather than in bursts of n at once (same rate, no bunched
-- arrivals for a stricter or burst-limited server to refuse together).
local function earliest(key, n, span, now)
  local t = now
  local last = redis.call("ZRANGE", key, -1, -1, "WITHSCORES")
  if last[2] then t = math.max(t, tonumber(last[2]) + math.floor(span / n)) end
  local nth = redis.call("ZRANGE", key, -n, -n, "WITHSCORES")
  if nth[2] then t = math.max(t, tonumber(nth[2]) + span) end
  return t
end

local function fmt(t) return string.format("%d", t) end

local function add(key, kind, t, owner, now, span)
  redis.call("ZADD", key, fmt(t), kind .. ":" .. fmt(t) .. ":" .. owner)
  -- The log lives until its last slot can no longer constrain anyone.
  redis.call("PEXPIRE", key, math.floor((t - now + span) / 1000) + 1000)
end

-- trim drops slots that cannot constrain any slot ≥ now.
local function trim(key, span, now)
  redis.call("ZREMRANGEBYSCORE", key, "-inf", fmt(now - span))
end

-- calls counts call slots (not empty ones) in (t - window, t].
local function calls(key, window, t)
  local n = 0
  for _, m in ipairs(redis.call("ZRANGEBYSCORE", key, "(" .. fmt(t - window), fmt(t))) do
    if string.sub(m, 1, 2) == "c:" then n = n + 1 end
  end
  return n
end
`

// bookScript books one call slot if it is at most maxWait away.
// KEYS[1] the log; ARGV rate, window µs, margin µs, maxWait µs, owner,
// now µs ("" = TIME). Answers {1, delay µs, calls in the window ending at
// the slot, slot µs} or {0, retryIn µs, 0, 0}.
var bookScript = redis.NewScript(luaCommon + `
local key = KEYS[1]
local n, window, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local maxwait, owner = tonumber(ARGV[4]), ARGV[5]
local span = window + margin
local now = clock(ARGV[6])
trim(key, span, now)
local t = earliest(key, n, span, now)
if t - now > maxwait then
  return {0, t - now - maxwait, 0, 0}
end
add(key, "c", t, owner, now, span)
return {1, t - now, calls(key, window, t), t}
`)

// backoffScript records a 429 and books the empty slots it costs.
// KEYS[1] the log; KEYS[2] the 429 state, a hash of level (at its time
// at) and booked (empty slots booked in the window that began at since).
// ARGV rate, window µs, margin µs, half-life µs, cap of empty slots per
// window, state TTL ms, owner, now µs ("" = TIME). Answers the empty slots
// booked.
var backoffScript = redis.NewScript(luaCommon + `
local key, state = KEYS[1], KEYS[2]
local n, window, margin = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local halflife, cap, ttl, owner = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local span = window + margin
local now = clock(ARGV[8])
trim(key, span, now)

local s = redis.call("HMGET", state, "level", "at", "since", "booked")
local level, at = tonumber(s[1]) or 0, tonumber(s[2]) or now
local since, booked = tonumber(s[3]) or now, tonumber(s[4]) or 0
level = level * math.pow(0.5, math.max(now - at, 0) / halflife) + 1
-- At most cap empty slots are booked per window (since … since+window).
if now - since >= window or now < since then since, booked = now, 0 end
-- A lone 429 (level 1) books nothing: random 429s cost only their own
-- call; each one close after another (level ≥ 2) books floor(level) - 1.
local k = math.max(math.min(math.floor(level) - 1, cap - booked), 0)
for i = 1, k do
  add(key, "e", earliest(key, n, span, now), owner .. ":" .. i, now, span)
end
redis.call("HSET", state, "level", tostring(level), "at", fmt(now),
  "since", fmt(since), "booked", tostring(booked + k))
redis.call("PEXPIRE", state, ttl)
return k
`)

// quotaScript counts the call slots of one log in the last window.
// KEYS[1] the log; ARGV window µs, now µs ("" = TIME).
var quotaScript = redis.NewScript(luaCommon + `
return calls(KEYS[1], tonumber(ARGV[1]), clock(ARGV[2]))
`)

// LimitedOps are the endpoints the limiter keeps logs for, in display order.
var LimitedOps = []string{"update", "deactivate", "get"}

// QuotaUse returns, for each op of LimitedOps, the calls the limiters of
// identity booked in the last second on the Redis clock: what WeChat Pay
// will count against the quota. Read-only; one script per key, so it works
// on Redis Cluster.
func QuotaUse(ctx context.Context, rdb redis.UniversalClient, identity string) (map[string]int, error) {
	return quotaUse(ctx, rdb, identity, "")
}

func quotaUse(ctx context.Context, rdb redis.UniversalClient, identity, now string) (map[string]int, error) {
	use := make(map[string]int, len(LimitedOps))
	for _, op := range LimitedOps {
		n, err := quotaScript.Run(ctx, rdb, []string{limiterLogKey(identity, op)}, rateWindow.Microseconds(), now).Int()
		if err != nil {
			return nil, fmt.Errorf("worker: quota use of %s: %w", op, err)
		}
		use[op] = n
	}
	return use, nil
}

// LimiterIdentities returns the identities that have limiter logs in rdb
// (each master of a cluster is scanned), for callers that do not know
// which identity the workers use.
func LimiterIdentities(ctx context.Context, rdb redis.UniversalClient) ([]string, error) {
	seen := map[string]bool{}
	var ids []string
	scan := func(ctx context.Context, c *redis.Client) error {
		it := c.Scan(ctx, 0, limiterKeyPrefix+"{*}:*", 100).Iterator()
		for it.Next(ctx) {
			if id, ok := identityOfKey(it.Val()); ok && !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
		return it.Err()
	}
	var err error
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		var mu sync.Mutex // ForEachMaster runs in parallel
		err = c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scan(ctx, m)
		})
	case *redis.Client:
		err = scan(ctx, c)
	default:
		err = fmt.Errorf("cannot scan a %T", rdb)
	}
	if err != nil {
		return nil, fmt.Errorf("worker: limiter identities: %w", err)
	}
	return ids, nil
}

// identityOfKey extracts the identity of a log key
// couponq:rate:{<identity>}:<op>; other keys (the :429 state) are ignored.
func identityOfKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, limiterKeyPrefix+"{")
	if !ok {
		return "", false
	}
	id, op, ok := strings.Cut(rest, "}:")
	if !ok || strings.Contains(op, ":") {
		return "", false
	}
	return id, true
}

const limiterKeyPrefix = "couponq:rate:"

// limiterLogKey names the slot log of one endpoint of identity. The hash tag
// keeps all of an identity's limiter keys in one Cluster slot.
func limiterLogKey(identity, op string) string {
	return limiterKeyPrefix + "{" + identity + "}:" + op
}

func (l *Limiter) logKey(endpoint string) string { return limiterLogKey(l.identity, endpoint) }

func (l *Limiter) backoffKey(endpoint string) string { return l.logKey(endpoint) + ":429" }

// sleepCtx waits for d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
