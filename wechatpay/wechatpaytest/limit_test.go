package wechatpaytest_test

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// clock is a test clock moved only by set.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// set moves the clock to t0+d.
func (c *clock) set(d time.Duration) {
	c.mu.Lock()
	c.t = t0.Add(d)
	c.mu.Unlock()
}

// limitBundle is a fake on a test clock with one seeded coupon.
type limitBundle struct {
	s     *wechatpaytest.Server
	c     *wechatpay.Client
	clk   *clock
	brand string
	id    string
}

func setupLimit(t *testing.T, opts ...wechatpaytest.Option) *limitBundle {
	t.Helper()
	clk := newClock()
	s := wechatpaytest.NewServer(t, append([]wechatpaytest.Option{wechatpaytest.WithClock(clk.Now)}, opts...)...)
	c := s.Client()
	t.Cleanup(func() { c.Close() })
	return &limitBundle{s: s, c: c, clk: clk, brand: s.BrandID(), id: s.SeedCoupons(s.BrandID(), 1)[0]}
}

// get makes n GETs at the clock's current time and returns how many were
// answered 200; every other answer must be the ceiling's 429.
func (b *limitBundle) get(t *testing.T, n int) int {
	t.Helper()
	ok := 0
	for range n {
		_, err := b.c.GetProductCoupon(t.Context(), &wechatpay.GetProductCouponRequest{ProductCouponID: b.id, BrandID: b.brand})
		switch got := errString(err); got {
		case "ok":
			ok++
		case "429 RATELIMIT_EXCEEDED":
		default:
			t.Fatalf("GET answered %s", got)
		}
	}
	return ok
}

// step is n calls at t0+at, of which ok are to be admitted.
type step struct {
	at    time.Duration
	n, ok int
}

func TestQPSModels(t *testing.T) {
	t.Parallel()
	ms := time.Millisecond
	tests := []struct {
		name  string
		model []wechatpaytest.Option
		qps   int
		steps []step
		want  wechatpaytest.EndpointStats
	}{
		{
			name: "sliding: the 21st within 1 s of the oldest is refused, at 1 s it is admitted",
			qps:  20,
			steps: []step{
				{at: 0, n: 1, ok: 1},
				{at: 10 * ms, n: 19, ok: 19},
				{at: 999 * ms, n: 5, ok: 0},    // 20 in (t0-1ms, t0+999ms]
				{at: 1000 * ms, n: 2, ok: 1},   // t0's call left the window; the 5 refused never entered it
				{at: 1009 * ms, n: 1, ok: 0},   // the 19 at 10 ms are still in it
				{at: 1010 * ms, n: 20, ok: 19}, // they left; the one at 1000 ms has not
			},
			want: wechatpaytest.EndpointStats{Admitted: 40, OverCeiling: 8, MaxInWindow: 20},
		},
		{
			name: "sliding: any window, not one anchored at the first call",
			qps:  20,
			steps: []step{
				{at: 0, n: 10, ok: 10},
				{at: 500 * ms, n: 10, ok: 10},
				{at: 1000 * ms, n: 11, ok: 10}, // the 10 at 500 ms still count
				{at: 1499 * ms, n: 1, ok: 0},
				{at: 1500 * ms, n: 10, ok: 10},
			},
			want: wechatpaytest.EndpointStats{Admitted: 40, OverCeiling: 2, MaxInWindow: 20},
		},
		{
			name:  "sliding is the default even with the model named",
			model: []wechatpaytest.Option{wechatpaytest.WithQPSModel(wechatpaytest.SlidingWindow)},
			qps:   2,
			steps: []step{{at: 0, n: 3, ok: 2}, {at: 500 * ms, n: 1, ok: 0}, {at: 1000 * ms, n: 3, ok: 2}},
			want:  wechatpaytest.EndpointStats{Admitted: 4, OverCeiling: 3, MaxInWindow: 2},
		},
		{
			name:  "token bucket refills continuously and forgives a burst",
			model: []wechatpaytest.Option{wechatpaytest.WithQPSModel(wechatpaytest.TokenBucket)},
			qps:   2,
			steps: []step{
				{at: 0, n: 3, ok: 2},
				{at: 500 * ms, n: 2, ok: 1}, // one token back: 3 calls within 1 s
				{at: 3000 * ms, n: 3, ok: 2},
			},
			want: wechatpaytest.EndpointStats{Admitted: 5, OverCeiling: 3, MaxInWindow: 3},
		},
		{
			name:  "no ceiling still measures the window",
			qps:   0,
			steps: []step{{at: 0, n: 5, ok: 5}, {at: 999 * ms, n: 2, ok: 2}, {at: 1000 * ms, n: 1, ok: 1}},
			want:  wechatpaytest.EndpointStats{Admitted: 8, MaxInWindow: 7},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupLimit(t, append(tt.model, wechatpaytest.WithQPS(tt.qps))...)
			for _, st := range tt.steps {
				b.clk.set(st.at)
				if ok := b.get(t, st.n); ok != st.ok {
					t.Errorf("at +%v: %d of %d admitted, want %d", st.at, ok, st.n, st.ok)
				}
			}
			if got := b.s.Stats()[wechatpaytest.OpGet]; got != tt.want {
				t.Errorf("Stats = %+v, want %+v", got, tt.want)
			}
			for _, r := range b.s.Requests() {
				if r.Status == 429 && r.Fault != wechatpaytest.FaultQPS {
					t.Errorf("429 logged as %+v", r)
				}
			}
		})
	}
}

// TestJitterBeforeAdmission: calls one second apart on the test clock,
// each delayed by a seeded 0–500 ms, are judged at their delayed times, so
// a call delayed less than the one before it is refused.
func TestJitterBeforeAdmission(t *testing.T) {
	t.Parallel()
	const calls, maxJitter = 30, 500 * time.Millisecond
	run := func() (statuses []int, times []time.Time) {
		b := setupLimit(t, wechatpaytest.WithQPS(1), wechatpaytest.WithJitter(0, maxJitter), wechatpaytest.WithSeed(11))
		for i := range calls {
			b.clk.set(time.Duration(i) * time.Second)
			b.get(t, 1)
		}
		for i, r := range b.s.Requests() {
			if d := r.Time.Sub(t0.Add(time.Duration(i) * time.Second)); d < 0 || d > maxJitter {
				t.Errorf("call %d delayed %v, want 0..%v", i, d, maxJitter)
			}
			statuses, times = append(statuses, r.Status), append(times, r.Time)
		}
		return statuses, times
	}
	statuses, times := run()
	if again, _ := run(); fmt.Sprint(again) != fmt.Sprint(statuses) {
		t.Errorf("same seed, other answers:\n%v\n%v", statuses, again)
	}
	// Without jitter every call would pass; the delayed times decide.
	var last time.Time
	refused := 0
	for i, at := range times {
		want := 200
		if i > 0 && at.Sub(last) < time.Second {
			want = 429
		}
		if want == 200 {
			last = at
		} else {
			refused++
		}
		if statuses[i] != want {
			t.Errorf("call %d at +%v answered %d, want %d", i, at.Sub(t0), statuses[i], want)
		}
	}
	if refused == 0 {
		t.Errorf("no call refused: jitter not applied before admission? %v", statuses)
	}
}

// TestJitterSleepsOnTheRealClock: without WithClock the delay is waited.
// Timers never fire early, so the bound holds however slow the machine.
func TestJitterSleepsOnTheRealClock(t *testing.T) {
	t.Parallel()
	s := wechatpaytest.NewServer(t, wechatpaytest.WithJitter(5*time.Millisecond, 5*time.Millisecond))
	c := s.Client()
	defer c.Close()
	id := s.SeedCoupons(s.BrandID(), 1)[0]
	start := time.Now()
	if _, err := c.GetProductCoupon(t.Context(), &wechatpay.GetProductCouponRequest{ProductCouponID: id, BrandID: s.BrandID()}); err != nil {
		t.Fatal(err)
	}
	if d := s.Requests()[0].Time.Sub(start); d < 5*time.Millisecond {
		t.Errorf("request seen %v after it was sent, want at least 5ms", d)
	}
}

func TestSpurious429(t *testing.T) {
	t.Parallel()
	t.Run("share honoured, counted apart, nothing applied", func(t *testing.T) {
		t.Parallel()
		const calls, share = 400, 0.25
		b := setupLimit(t, wechatpaytest.WithSpurious429(share), wechatpaytest.WithSeed(5))
		spurious := 0
		for i := range calls {
			key := fmt.Sprintf("spur_%04d", i)
			_, err := b.c.UpdateProductCoupon(t.Context(), update(b.brand, b.id, key, "名字券"))
			want := 1
			if errString(err) == "429 RATELIMIT_EXCEEDED" {
				spurious, want = spurious+1, 0
			} else if err != nil {
				t.Fatal(err)
			}
			if n := b.s.AppliedCount(key); n != want {
				t.Fatalf("%s applied %d times after %v", key, n, err)
			}
		}
		// Binomial(400, 0.25): sd 8.7; the seed makes it exact, the bound says what is meant.
		if lo, hi := calls*share*0.7, calls*share*1.3; float64(spurious) < lo || float64(spurious) > hi {
			t.Errorf("%d spurious 429s of %d, want about %v", spurious, calls, calls*share)
		}
		want := wechatpaytest.EndpointStats{Admitted: calls, Spurious429: spurious, MaxInWindow: calls}
		if got := b.s.Stats()[wechatpaytest.OpUpdate]; got != want {
			t.Errorf("Stats = %+v, want %+v", got, want)
		}
		for _, r := range b.s.Requests() {
			if r.Status == 429 && r.Fault != wechatpaytest.FaultSpurious429 {
				t.Errorf("429 logged as %+v", r)
			}
		}
	})
	t.Run("a spurious 429 counts toward the window", func(t *testing.T) {
		t.Parallel()
		b := setupLimit(t, wechatpaytest.WithQPS(20), wechatpaytest.WithSpurious429(0.5), wechatpaytest.WithSeed(5))
		ok := b.get(t, 30)
		st := b.s.Stats()[wechatpaytest.OpGet]
		if st.Admitted != 20 || st.OverCeiling != 10 || st.Spurious429 == 0 || ok != 20-st.Spurious429 {
			t.Errorf("%d answered 200, Stats %+v", ok, st)
		}
	})
	t.Run("Faults.Status429 counts as spurious", func(t *testing.T) {
		t.Parallel()
		b := setupLimit(t, wechatpaytest.WithQPS(2))
		b.s.SetFaults(wechatpaytest.Faults{Status429: 1})
		b.get(t, 3)
		want := wechatpaytest.EndpointStats{Admitted: 2, OverCeiling: 1, Spurious429: 2, MaxInWindow: 2}
		if got := b.s.Stats()[wechatpaytest.OpGet]; got != want {
			t.Errorf("Stats = %+v, want %+v", got, want)
		}
	})
}

func TestLimitOptionsOutOfRangePanic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opt  wechatpaytest.Option
		want string
	}{
		{"negative jitter", wechatpaytest.WithJitter(-time.Millisecond, time.Millisecond), "WithJitter"},
		{"jitter min over max", wechatpaytest.WithJitter(2*time.Millisecond, time.Millisecond), "WithJitter"},
		{"share over 1", wechatpaytest.WithSpurious429(1.5), "WithSpurious429"},
		{"negative share", wechatpaytest.WithSpurious429(-0.1), "WithSpurious429"},
		{"NaN share", wechatpaytest.WithSpurious429(math.NaN()), "WithSpurious429"},
		{"unknown model", wechatpaytest.WithQPSModel(7), "WithQPSModel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			defer func() {
				if msg := fmt.Sprint(recover()); !strings.Contains(msg, tt.want) {
					t.Errorf("panic %q lacks %q", msg, tt.want)
				}
			}()
			s := wechatpaytest.NewServer(nil, tt.opt)
			s.Close()
		})
	}
}

func TestQPSModelString(t *testing.T) {
	t.Parallel()
	for m, want := range map[wechatpaytest.QPSModel]string{
		wechatpaytest.SlidingWindow: "sliding", wechatpaytest.TokenBucket: "token-bucket", 7: "QPSModel(7)",
	} {
		if got := m.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(m), got, want)
		}
	}
}
