package worker

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/couponq/couponq/internal/redistest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// limiterBundle is a miniredis and a clock that only moves when the test
// says so: the limiters it builds pass that clock to the scripts instead
// of Redis TIME, and miniredis' TIME (read by QuotaUse) follows it.
type limiterBundle struct {
	mr  *miniredis.Miniredis
	rdb *redis.Client

	mu  sync.Mutex
	now time.Time
}

func setupLimiter(t *testing.T) *limiterBundle {
	t.Helper()
	mr := miniredis.RunT(t)
	b := &limiterBundle{mr: mr, now: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
	mr.SetTime(b.now)
	b.rdb = redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = b.rdb.Close() })
	return b
}

// limiter returns a Limiter on the bundle's clock whose sleeps return at
// once: the test moves time.
func (b *limiterBundle) limiter(identity string, rate int, opts ...LimiterOption) *Limiter {
	opts = append([]LimiterOption{WithSleep(func(ctx context.Context, _ time.Duration) error { return ctx.Err() })}, opts...)
	l := NewLimiter(b.rdb, identity, rate, opts...)
	l.now = b.clock
	return l
}

func (b *limiterBundle) clock() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.now
}

// set moves the clock (and miniredis' TIME) to at.
func (b *limiterBundle) set(at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.now = at
	b.mr.SetTime(at)
}

func (b *limiterBundle) advance(d time.Duration) { b.set(b.clock().Add(d)) }

// slots returns the booked slot times of a log key, call slots and empty
// ones, in order.
func (b *limiterBundle) slots(t *testing.T, key string) (calls, empty []time.Time) {
	t.Helper()
	return logSlots(t, b.rdb, key)
}

func logSlots(t *testing.T, rdb redis.UniversalClient, key string) (calls, empty []time.Time) {
	t.Helper()
	zs, err := rdb.ZRangeWithScores(t.Context(), key, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, z := range zs {
		at := time.UnixMicro(int64(z.Score))
		if m := z.Member.(string); strings.HasPrefix(m, "e:") {
			empty = append(empty, at)
		} else {
			calls = append(calls, at)
		}
	}
	return calls, empty
}

// maxInWindow is the strict checker: the most times of sorted that fall in
// one window (t − window, t]. It is the count WeChat Pay's limiter refuses
// above.
func maxInWindow(sorted []time.Duration, window time.Duration) int {
	most, i := 0, 0
	for j, t := range sorted {
		for sorted[i] <= t-window {
			i++
		}
		most = max(most, j-i+1)
	}
	return most
}

func asRateLimited(t *testing.T, err error) *RateLimitedError {
	t.Helper()
	var rl *RateLimitedError
	if !errors.As(err, &rl) {
		t.Fatalf("err = %v, want *RateLimitedError", err)
	}
	var ra interface{ RetryAfter() time.Duration }
	if !errors.As(err, &ra) || ra.RetryAfter() != rl.RetryIn {
		t.Fatalf("RetryAfter() does not report RetryIn %v", rl.RetryIn)
	}
	return rl
}

func TestLimiterSpacingAndWindow(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	l := b.limiter("1900000001", 20)
	ctx := t.Context()

	// Callers arriving together are spaced (1 s + margin)/20 = 51.5 ms
	// apart, as far as 2 s ahead.
	for i := range 39 {
		want := time.Duration(i) * 51500 * time.Microsecond
		if w, err := l.Wait(ctx, "get", 2*time.Second); err != nil || w != want {
			t.Fatalf("call %d: waited %v, %v; want %v", i, w, err, want)
		}
	}
	_, err := l.Wait(ctx, "get", 2*time.Second)
	if rl := asRateLimited(t, err); rl.Endpoint != "get" || rl.RetryIn != 8500*time.Microsecond {
		t.Errorf("40th: %+v, want get, RetryIn 8.5ms (slot at 2.0085 s)", rl)
	}

	// Where the spacing rounds down, the window decides: at 3/s the 4th
	// slot is 1 s + margin after the 1st, not 3 × 343.333 ms.
	l3 := b.limiter("1900000003", 3)
	for i, want := range []time.Duration{0, 343333 * time.Microsecond, 686666 * time.Microsecond, time.Second + DefaultJitterMargin} {
		if w, err := l3.Wait(ctx, "get", 2*time.Second); err != nil || w != want {
			t.Errorf("3/s call %d: waited %v, %v; want %v", i, w, err, want)
		}
	}
}

func TestLimiterMaxWaitExceededBooksNothing(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	l := b.limiter("1900000001", 2, WithJitterMargin(0))
	ctx := t.Context()
	key := "couponq:rate:{1900000001}:deactivate"

	if w, err := l.Wait(ctx, "deactivate", 0); err != nil || w != 0 {
		t.Fatalf("first call: %v, %v", w, err)
	}
	before, _ := b.slots(t, key)
	// The next slot is 500 ms away: refused at maxWait 0, 499 ms, negative …
	for _, maxWait := range []time.Duration{0, 499 * time.Millisecond, -time.Second} {
		_, err := l.Wait(ctx, "deactivate", maxWait)
		rl := asRateLimited(t, err)
		if want := 500*time.Millisecond - max(maxWait, 0); rl.RetryIn != want {
			t.Errorf("maxWait %v: RetryIn = %v, want %v", maxWait, rl.RetryIn, want)
		}
	}
	// … and the refusals booked nothing.
	if after, _ := b.slots(t, key); !slices.Equal(before, after) {
		t.Fatalf("refusals changed the log: %v → %v", before, after)
	}
	for _, want := range []time.Duration{500 * time.Millisecond, time.Second} {
		if w, err := l.Wait(ctx, "deactivate", time.Second); err != nil || w != want {
			t.Fatalf("after refusals: waited %v, %v; want %v", w, err, want)
		}
	}
	if rl := (&RateLimitedError{Endpoint: "get", RetryIn: time.Second}); rl.Error() == "" {
		t.Error("empty Error()")
	}
}

func TestLimiterSeparateBuckets(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	a := b.limiter("1900000001", 1)
	other := b.limiter("1900000002", 1)

	if _, err := a.Wait(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	_, err := a.Wait(ctx, "update", 0)
	asRateLimited(t, err)

	tests := []struct {
		name     string
		l        *Limiter
		endpoint string
	}{
		{"same identity, other endpoint", a, "get"},
		{"same identity, third endpoint", a, "deactivate"},
		{"other identity, same endpoint", other, "update"},
	}
	for _, tt := range tests {
		if w, err := tt.l.Wait(ctx, tt.endpoint, 0); err != nil || w != 0 {
			t.Errorf("%s: waited %v, err %v; want an immediate slot", tt.name, w, err)
		}
	}
}

func TestLimiterKeys(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	l := b.limiter("120344", 20)
	if _, err := l.Wait(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	if err := l.Backoff(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	want := []string{"couponq:rate:{120344}:update", "couponq:rate:{120344}:update:429"}
	if got := b.mr.Keys(); !slices.Equal(got, want) {
		t.Errorf("keys = %v, want %v", got, want)
	}
	for _, k := range want {
		if ttl := b.mr.TTL(k); ttl <= 0 || ttl > backoffStateTTL {
			t.Errorf("%s: TTL %v, want in (0, %v]", k, ttl, backoffStateTTL)
		}
	}
	// Old slots are trimmed as time passes.
	b.advance(time.Hour)
	if _, err := l.Wait(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	if calls, empty := b.slots(t, want[0]); len(calls) != 1 || len(empty) != 0 {
		t.Errorf("after an hour: %d call and %d empty slots, want 1 and 0", len(calls), len(empty))
	}
}

func TestLimiterBackoffBooksEmptySlots(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	got429 := b.limiter("1900000001", 20, WithLimiterMetrics(m))
	peer := b.limiter("1900000001", 20)
	key := "couponq:rate:{1900000001}:update"

	empties := func() int {
		_, e := b.slots(t, key)
		return len(e)
	}
	// A lone 429 books nothing: the peer's call goes at once.
	if err := got429.Backoff(ctx, "update", 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := empties(); n != 0 {
		t.Fatalf("after one 429: %d empty slots, want 0", n)
	}
	if w, err := peer.Wait(ctx, "update", time.Second); err != nil || w != 0 {
		t.Fatalf("peer after a lone 429: waited %v, %v; want no wait", w, err)
	}

	// A second 429 at once books one empty slot, the next free one: the
	// peer's next call takes the slot after it.
	if err := got429.Backoff(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	if n := empties(); n != 1 {
		t.Fatalf("after two 429s at once: %d empty slots, want 1", n)
	}
	if w, err := peer.Wait(ctx, "update", time.Second); err != nil || w != 2*51500*time.Microsecond {
		t.Fatalf("peer after two 429s: waited %v, %v; want two slots, 103ms", w, err)
	}

	// 429s in quick succession book more, at most rate/4 within a window.
	for range 5 {
		b.advance(10 * time.Millisecond)
		if err := got429.Backoff(ctx, "update", 0); err != nil {
			t.Fatal(err)
		}
	}
	if n := empties(); n != 5 {
		t.Errorf("after 7 429s within 60 ms: %d empty slots, want the cap of 5", n)
	}

	// Once 429s stop the level fades: a 429 ten seconds later books none.
	b.advance(10 * time.Second)
	if err := got429.Backoff(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	if n := empties(); n != 0 {
		t.Errorf("a 429 after 10 quiet seconds: %d empty slots, want 0", n)
	}

	for _, tt := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"backoffs", m.backoffs.WithLabelValues("update"), 8},
		{"empty slots", m.emptySlots.WithLabelValues("update"), 5},
		{"peer slots not counted here", m.slots.WithLabelValues("update"), 0},
	} {
		if got := testutil.ToFloat64(tt.c); got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestLimiterMetrics(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	l := b.limiter("x", 20, WithLimiterMetrics(m))
	for range 5 {
		if _, err := l.Wait(ctx, "get", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(m.slots.WithLabelValues("get")); got != 5 {
		t.Errorf("slots = %v, want 5", got)
	}
	if got := testutil.ToFloat64(m.quotaShare.WithLabelValues("get")); got != 0.25 {
		t.Errorf("quota share = %v, want 5/20", got)
	}
	// A nil *Metrics is valid.
	nilMetrics := b.limiter("y", 20, WithLimiterMetrics(nil))
	if _, err := nilMetrics.Wait(ctx, "get", 0); err != nil {
		t.Fatal(err)
	}
	if err := nilMetrics.Backoff(ctx, "get", 0); err != nil {
		t.Fatal(err)
	}
	if probs, err := testutil.GatherAndLint(reg); err != nil || len(probs) > 0 {
		t.Errorf("lint: %v %v", probs, err)
	}
}

func TestQuotaUseAndIdentities(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	a := b.limiter("1900000001", 20)
	c := b.limiter("120344", 20)
	for range 7 {
		if _, err := a.Wait(ctx, "update", time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Wait(ctx, "get", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx, "deactivate", 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Backoff(ctx, "update", 0); err != nil { // an empty slot is no call
		t.Fatal(err)
	}
	// Booked slots count once their time has come.
	if use, err := QuotaUse(ctx, b.rdb, "1900000001"); err != nil || use["update"] != 1 {
		t.Errorf("at once: %v, %v; want 1 update (6 are ahead)", use, err)
	}
	b.advance(400 * time.Millisecond)
	use, err := QuotaUse(ctx, b.rdb, "1900000001")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]int{"update": 7, "deactivate": 0, "get": 1}; !mapsEqual(use, want) {
		t.Errorf("QuotaUse = %v, want %v", use, want)
	}
	b.advance(time.Second) // the window has moved past them
	if use, err := QuotaUse(ctx, b.rdb, "1900000001"); err != nil || use["update"] != 0 {
		t.Errorf("a second later: %v, %v; want 0 updates", use, err)
	}
	ids, err := LimiterIdentities(ctx, b.rdb)
	slices.Sort(ids)
	if err != nil || !slices.Equal(ids, []string{"120344", "1900000001"}) {
		t.Errorf("LimiterIdentities = %v, %v", ids, err)
	}
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestIdentityOfKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key, id string
		ok      bool
	}{
		{"couponq:rate:{1900000001}:update", "1900000001", true},
		{"couponq:rate:{120344}:get:429", "", false},
		{"couponq:rate:1900000001:update", "", false},
		{"couponq:result:x", "", false},
	}
	for _, tt := range tests {
		if id, ok := identityOfKey(tt.key); id != tt.id || ok != tt.ok {
			t.Errorf("identityOfKey(%q) = %q, %v", tt.key, id, ok)
		}
	}
}

func TestLimiterContextCanceledWhileWaiting(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx, cancel := context.WithCancel(t.Context())
	l := b.limiter("1900000001", 1, WithSleep(func(ctx context.Context, d time.Duration) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	}))
	if _, err := l.Wait(ctx, "update", 0); err != nil {
		t.Fatal(err)
	}
	waited, err := l.Wait(ctx, "update", 2*time.Second)
	if !errors.Is(err, context.Canceled) || waited != 0 {
		t.Errorf("got %v, %v; want 0, context.Canceled", waited, err)
	}
}

func TestSleepCtx(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := sleepCtx(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	if err := sleepCtx(t.Context(), time.Nanosecond); err != nil {
		t.Errorf("1ns: %v", err)
	}
}

func TestLimiterUnlimited(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	tests := []struct {
		name string
		l    *Limiter
	}{
		{"nil", nil},
		{"rate 0", NewLimiter(b.rdb, "x", 0)},
		{"rate 0 without redis", NewLimiter(nil, "x", 0)},
		{"negative rate", NewLimiter(b.rdb, "x", -1)},
	}
	for _, tt := range tests {
		for range 100 {
			if w, err := tt.l.Wait(ctx, "update", 0); w != 0 || err != nil {
				t.Fatalf("%s: Wait = %v, %v", tt.name, w, err)
			}
		}
		if err := tt.l.Backoff(ctx, "update", time.Second); err != nil {
			t.Errorf("%s: Backoff = %v", tt.name, err)
		}
	}
}

func TestLimiterRedisDown(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	rdb := redis.NewClient(&redis.Options{Addr: b.mr.Addr(), MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	l := NewLimiter(rdb, "x", 20)
	b.mr.Close()
	_, err := l.Wait(t.Context(), "update", time.Second)
	var rl *RateLimitedError
	if err == nil || errors.As(err, &rl) {
		t.Errorf("Wait = %v, want a Redis error", err)
	}
	if err := l.Backoff(t.Context(), "update", time.Second); err == nil {
		t.Error("Backoff: want a Redis error")
	}
}

// simConfig is one simulated run: processes limiter instances on one
// Redis, workers task slots in all, against a strict WeChat Pay limiter.
type simConfig struct {
	rate      int
	processes int
	workers   int
	run       time.Duration
	latency   time.Duration // from arrival to the answer
	jitter    time.Duration // each arrival is late by uniform [0, jitter]
	p429      float64       // spurious 429s: answered 429 although admitted
	// every call arriving in [outageFrom, outageTo) is answered 429 (the
	// quota spent by someone else).
	outageFrom, outageTo time.Duration
	seed                 uint64
	noMargin             bool // WithJitterMargin(0): the control case
}

// simResult is what the fake WeChat Pay saw, in arrival order.
type simResult struct {
	arrivals []time.Duration // every call
	ok       []time.Duration // answered 2xx
	strict   int             // refused by the strict limiter
	spurious int             // 429s from p429 or the outage
	empty    int             // empty slots booked by Backoff
}

// rate is calls per second arriving in [from, to).
func rateIn(ts []time.Duration, from, to time.Duration) float64 {
	n := 0
	for _, t := range ts {
		if t >= from && t < to {
			n++
		}
	}
	return float64(n) / (to - from).Seconds()
}

// simulate plays the workers in simulated time. Each worker asks for a slot
// with maxWait 2 s (the default LimiterMaxWait), is refused (and asks again
// RetryIn later) or waits for its slot, reaches WeChat Pay jitter later,
// and is answered latency after that; a 429 is reported through Backoff.
// The strict limiter admits a call iff fewer than rate calls were admitted
// in the second before it.
func simulate(t *testing.T, c simConfig) simResult {
	t.Helper()
	b := setupLimiter(t)
	ctx := t.Context()
	start := b.clock()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	limiters := make([]*Limiter, c.processes)
	for i := range limiters {
		limiters[i] = b.limiter("mch", c.rate, WithLimiterMetrics(m))
		if c.noMargin {
			limiters[i].margin = 0
		}
	}
	rnd := rand.New(rand.NewPCG(c.seed, 1))

	const (
		ask = iota
		arrive
		answered
	)
	type worker struct {
		at    time.Duration
		phase int
	}
	ws := make([]worker, c.workers)
	var res simResult
	var admitted []time.Duration
	for {
		w := 0
		for i := range ws {
			if ws[i].at < ws[w].at {
				w = i
			}
		}
		now := ws[w].at
		if now >= c.run {
			break
		}
		b.set(start.Add(now))
		lim := limiters[w%c.processes]
		switch ws[w].phase {
		case ask:
			waited, err := lim.Wait(ctx, "update", 2*time.Second)
			var rl *RateLimitedError
			if errors.As(err, &rl) {
				ws[w].at += rl.RetryIn
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			var j time.Duration
			if c.jitter > 0 {
				j = time.Duration(rnd.Int64N(int64(c.jitter) + 1))
			}
			ws[w] = worker{at: now + waited + j, phase: arrive}
		case arrive:
			res.arrivals = append(res.arrivals, now)
			ws[w] = worker{at: now + c.latency, phase: answered}
			for len(admitted) > 0 && admitted[0] <= now-time.Second {
				admitted = admitted[1:]
			}
			switch {
			case len(admitted) >= c.rate:
				res.strict++
				ws[w].phase = -answered // a 429
			case now >= c.outageFrom && now < c.outageTo, rnd.Float64() < c.p429:
				admitted = append(admitted, now)
				res.spurious++
				ws[w].phase = -answered
			default:
				admitted = append(admitted, now)
				res.ok = append(res.ok, now)
			}
		case -answered:
			if err := lim.Backoff(ctx, "update", 0); err != nil {
				t.Fatal(err)
			}
			ws[w].phase = ask
		case answered:
			ws[w].phase = ask
		}
	}
	res.empty = int(testutil.ToFloat64(m.emptySlots.WithLabelValues("update")))
	return res
}

func TestLimiterSimulation(t *testing.T) {
	t.Parallel()
	const rate = 20
	tests := []struct {
		name    string
		cfg     simConfig
		minRate float64 // calls/s arriving, after 5 s
		minOK   float64 // of which answered 2xx
	}{
		{"no jitter", simConfig{processes: 3, workers: 30}, 0.97 * rate, 0.97 * rate},
		{"jitter up to the margin", simConfig{processes: 3, workers: 30, jitter: DefaultJitterMargin}, 0.96 * rate, 0.96 * rate},
		{"2% spurious 429s", simConfig{processes: 3, workers: 30, p429: 0.02, run: 300 * time.Second}, 0.95 * rate, 0.93 * rate},
		{"2% 429s and jitter", simConfig{processes: 3, workers: 30, p429: 0.02, jitter: DefaultJitterMargin, run: 300 * time.Second}, 0.94 * rate, 0.92 * rate},
		{"8 processes, one worker each", simConfig{processes: 8, workers: 8}, 0.97 * rate, 0.97 * rate},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := tt.cfg
			c.rate, c.latency, c.seed = rate, 35*time.Millisecond, 7
			if c.run == 0 {
				c.run = 120 * time.Second
			}
			res := simulate(t, c)
			most := maxInWindow(res.arrivals, time.Second)
			// Over whole periods of 1 s + margin, the limiter's steady
			// pattern, so no period is counted twice at the edges.
			span := time.Second + DefaultJitterMargin
			from := 5 * time.Second
			to := from + (c.run-from)/span*span
			got, ok := rateIn(res.arrivals, from, to), rateIn(res.ok, from, to)
			t.Logf("%.2f calls/s (%.1f%%), %.2f ok/s, max %d in a window, %d strict 429s, %d spurious, %d empty slots",
				got, 100*got/rate, ok, most, res.strict, res.spurious, res.empty)
			if most > rate || res.strict > 0 {
				t.Errorf("the strict limiter saw %d calls in a window (want ≤ %d) and refused %d", most, rate, res.strict)
			}
			if got < tt.minRate || ok < tt.minOK {
				t.Errorf("%.2f calls/s, %.2f ok/s; want ≥ %.2f and ≥ %.2f", got, ok, tt.minRate, tt.minOK)
			}
		})
	}
}

// TestLimiterSimulationControl shows the checker is not vacuous: without
// the margin, the same jitter puts 21 calls in a window.
func TestLimiterSimulationControl(t *testing.T) {
	t.Parallel()
	res := simulate(t, simConfig{
		rate: 20, processes: 3, workers: 30, run: 30 * time.Second, latency: 35 * time.Millisecond,
		jitter: DefaultJitterMargin, seed: 7, noMargin: true,
	})
	if most := maxInWindow(res.arrivals, time.Second); most <= 20 || res.strict == 0 {
		t.Errorf("margin 0 with 25 ms jitter: max %d in a window, %d strict 429s; want over 20", most, res.strict)
	}
}

// TestLimiterRecoversAfter429s: WeChat Pay answers 429 to everything for
// 2 s (the quota spent elsewhere); the slowdown is shared and bounded, and
// the rate is back to full once the 429s stop.
func TestLimiterRecoversAfter429s(t *testing.T) {
	t.Parallel()
	const rate = 20
	res := simulate(t, simConfig{
		rate: rate, processes: 3, workers: 30, run: 30 * time.Second, latency: 35 * time.Millisecond,
		outageFrom: 10 * time.Second, outageTo: 12 * time.Second, seed: 3,
	})
	during := rateIn(res.arrivals, 10*time.Second, 12*time.Second)
	after := rateIn(res.arrivals, 15*time.Second, 30*time.Second)
	t.Logf("during: %.2f calls/s, %d 429s, %d empty slots; from 3 s after: %.2f calls/s", during, res.spurious, res.empty, after)
	if during < 0.75*rate*0.97 {
		t.Errorf("during the 429s: %.2f calls/s, want the slowdown capped at rate/4", during)
	}
	if after < 0.97*rate {
		t.Errorf("after the 429s: %.2f calls/s, want ≥ %.2f", after, 0.97*rate)
	}
	if most := maxInWindow(res.arrivals, time.Second); most > rate {
		t.Errorf("%d calls in a window", most)
	}
}

// TestLimiterRealRedis checks the scripts on a real redis-server (its Lua
// formats numbers differently from miniredis), on the Redis clock. Nothing
// is decided on elapsed time: the first caller finds an empty log, every
// booked slot is within maxWait, and the stored log — whatever the loop's
// speed — keeps consecutive slots (1 s + margin)/rate apart and any rate+1
// consecutive slots 1 s + margin apart. A host stall between a booking
// and its wake makes the call give its slot up and book the next
// (TestLimiterLateWakeRebooks): the log then holds one call slot more than
// the calls booked, which the slots metric counts.
func TestLimiterRealRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := t.Context()
	const rate = 20
	noSleep := WithSleep(func(context.Context, time.Duration) error { return nil })
	m := NewMetrics(prometheus.NewRegistry())
	slots := func() int { return int(testutil.ToFloat64(m.slots.WithLabelValues("update"))) }
	limiters := []*Limiter{NewLimiter(rdb, "1900000001", rate, noSleep, WithLimiterMetrics(m)),
		NewLimiter(rdb, "1900000001", rate, noSleep, WithLimiterMetrics(m))}

	const maxWait = 1100 * time.Millisecond
	booked, refused := 0, 0
	for i := range 60 {
		waited, err := limiters[i%2].Wait(ctx, "update", maxWait)
		var rl *RateLimitedError
		switch {
		case errors.As(err, &rl):
			refused++
			if rl.RetryIn <= 0 || rl.RetryIn > time.Second {
				t.Errorf("call %d: RetryIn %v", i, rl.RetryIn)
			}
		case err != nil:
			t.Fatal(err)
		default:
			booked++
			if i == 0 && waited != 0 && slots() == 1 {
				t.Errorf("first call waited %v", waited)
			}
			if waited > maxWait {
				t.Errorf("call %d waited %v > maxWait", i, waited)
			}
		}
		if i == 30 { // three 429s in a row book one empty slot (level ≥ 2)
			for range 3 {
				if err := limiters[0].Backoff(ctx, "update", 0); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	calls, empty := logSlots(t, rdb, "couponq:rate:{1900000001}:update")
	if len(calls) != slots() || booked+refused != 60 || len(empty) != 1 {
		t.Fatalf("%d call slots stored, %d booked (%d slots, with those given up), %d refused, %d empty",
			len(calls), booked, slots(), refused, len(empty))
	}
	all := append(slices.Clone(calls), empty...)
	slices.SortFunc(all, func(a, b time.Time) int { return a.Compare(b) })
	span := time.Second + DefaultJitterMargin
	for i := 1; i < len(all); i++ {
		if gap := all[i].Sub(all[i-1]); gap < span/rate {
			t.Errorf("slots %d and %d are %v apart, want ≥ %v", i-1, i, gap, span/rate)
		}
		if i >= rate {
			if gap := all[i].Sub(all[i-rate]); gap < span {
				t.Errorf("slots %d and %d are %v apart, want ≥ %v", i-rate, i, gap, span)
			}
		}
	}
	if len(calls) < int(maxWait/(span/rate)) {
		t.Errorf("%d slots booked, want at least the %d that fit maxWait", len(calls), int(maxWait/(span/rate)))
	}
	use, err := QuotaUse(ctx, rdb, "1900000001")
	if err != nil || use["update"] < 1 || use["update"] > rate {
		t.Errorf("QuotaUse = %v, %v", use, err)
	}
	if ttl := rdb.PTTL(ctx, "couponq:rate:{1900000001}:update").Val(); ttl <= 0 {
		t.Errorf("log TTL %v", ttl)
	}
}

// TestLimiterLateWakeRebooks: a call that wakes more than a third of the
// margin after its slot (the host stalled) gives the slot up and books the
// next one, so calls delayed together do not reach WeChat Pay together; a
// call late by less keeps its slot.
func TestLimiterLateWakeRebooks(t *testing.T) {
	t.Parallel()
	b := setupLimiter(t)
	ctx := t.Context()
	m := NewMetrics(prometheus.NewPedanticRegistry())
	var late []time.Duration // added to successive sleeps
	l := b.limiter("1900000001", 20, WithLimiterMetrics(m), WithSleep(func(_ context.Context, d time.Duration) error {
		var extra time.Duration
		if len(late) > 0 {
			extra, late = late[0], late[1:]
		}
		b.advance(d + extra)
		return nil
	}))
	key := "couponq:rate:{1900000001}:update"
	slot := 51500 * time.Microsecond // (1 s + margin)/20

	if w, err := l.Wait(ctx, "update", time.Second); err != nil || w != 0 {
		t.Fatalf("first call: waited %v, %v", w, err)
	}
	late = []time.Duration{DefaultJitterMargin / 3}
	if w, err := l.Wait(ctx, "update", time.Second); err != nil || w != slot {
		t.Fatalf("call late by margin/3: waited %v, %v; want its slot, %v", w, err, slot)
	}
	// Now 61.5 ms. Late by 20 ms: slot 3 (at 103 ms) is given up at
	// 123 ms; the next free slot is 154.5 ms: 41.5 + 31.5 ms of sleep.
	late = []time.Duration{20 * time.Millisecond}
	if w, err := l.Wait(ctx, "update", time.Second); err != nil || w != 73*time.Millisecond {
		t.Fatalf("call late by 20ms: waited %v, %v; want 73ms", w, err)
	}
	if calls, _ := b.slots(t, key); len(calls) != 4 {
		t.Errorf("%d slots booked, want 4 (one given up)", len(calls))
	}
	if got := testutil.ToFloat64(m.emptySlots.WithLabelValues("update")); got != 1 {
		t.Errorf("empty slots = %v, want the one given up", got)
	}
	// Late by a second: the slot given up, the next free one is now.
	late = []time.Duration{time.Second, time.Second}
	if w, err := l.Wait(ctx, "update", 10*time.Second); err != nil || w != slot || len(late) != 1 {
		t.Fatalf("call late by 1s: waited %v, %v, %d sleeps; want %v, one sleep", w, err, 2-len(late), slot)
	}
}
