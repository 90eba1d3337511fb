package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/internal/testutil"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// healthWorld is a real redis-server and the fake WeChat Pay, for workers
// whose settings are wrong in one way or another.
type healthWorld struct {
	srv  *redistest.Server
	rdb  *redis.Client
	conn *redisurl.Conn
	fake *wechatpaytest.Server
}

func newHealthWorld(t *testing.T, srv *redistest.Server, fakeOpts ...wechatpaytest.Option) *healthWorld {
	t.Helper()
	if srv == nil {
		srv = redistest.Start(t)
	}
	conn, err := redisurl.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	return &healthWorld{srv: srv, rdb: srv.Client(), conn: conn, fake: wechatpaytest.NewServer(t, fakeOpts...)}
}

// enqueue puts a batch of n changes, one coupon each (updates and
// deactivations in turn), through the Producer and returns their task IDs.
func (h *healthWorld) enqueue(t *testing.T, batch string, n int) []string {
	t.Helper()
	ids := h.fake.SeedCoupons(h.fake.BrandID(), n)
	cs := make([]tasks.Change, n)
	for i, id := range ids {
		key := fmt.Sprintf("%s_%04d", batch, i)
		if i%2 == 0 {
			cs[i] = tasks.Change{Op: tasks.OpUpdate, ProductCouponID: id, BrandID: h.fake.BrandID(), OutRequestNo: key,
				DisplayInfo: &wechatpay.DisplayInfo{Name: "周末8折券", OriginalPrice: int64(1000 + i)}}
		} else {
			cs[i] = tasks.Change{Op: tasks.OpDeactivate, ProductCouponID: id, BrandID: h.fake.BrandID(), OutRequestNo: key,
				DeactivateReason: "促销结束"}
		}
	}
	p, err := tasks.NewProducer(h.rdb)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	rep, err := p.EnqueueBatch(t.Context(), tasks.Changes(cs), tasks.BatchOptions{ID: batch})
	if err != nil || rep.Err() != nil || rep.Total != n {
		t.Fatalf("enqueue: %v, %v, %+v", err, rep.Err(), rep)
	}
	out := make([]string, n)
	for i, c := range cs {
		out[i] = c.TaskID()
	}
	return out
}

// runningWorker is a Worker whose Run goes on until stop.
type runningWorker struct {
	*Worker
	log  *syncBuffer
	done chan error
	stop func() error
}

// start runs a Worker of api until stop (or the test's end).
func (h *healthWorld) start(t *testing.T, api API, mutate ...func(*Config)) *runningWorker {
	t.Helper()
	buf := &syncBuffer{}
	cfg := Config{Redis: h.conn, Concurrency: 4, MaxRetry: 3, RetryBase: 10 * time.Millisecond, RetryCap: 50 * time.Millisecond,
		ShutdownTimeout: 5 * time.Second, ProbeInterval: 50 * time.Millisecond, RedisCheckInterval: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, m := range mutate {
		m(&cfg)
	}
	w, err := New(cfg, api)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rw := &runningWorker{Worker: w, log: buf, done: make(chan error, 1)}
	go func() { rw.done <- w.Run(ctx) }()
	var once sync.Once
	var runErr error
	rw.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-rw.done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("Run did not return 30s after its context ended")
			}
			w.Close()
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := rw.stop(); err != nil {
			t.Errorf("worker: %v", err)
		}
		if t.Failed() {
			t.Logf("worker log:\n%s", buf.String())
		}
	})
	return rw
}

// syncBuffer is a bytes.Buffer that a worker writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// probes counts the credentials probes the fake has seen.
func (h *healthWorld) probes() int {
	n := 0
	for _, q := range h.fake.Requests() {
		if q.Path == wechatpay.CertificatesPath {
			n++
		}
	}
	return n
}

// couponCalls lists the product-coupon requests the fake has seen.
func (h *healthWorld) couponCalls() []wechatpaytest.Request {
	var out []wechatpaytest.Request
	for _, q := range h.fake.Requests() {
		if q.Path != wechatpay.CertificatesPath {
			out = append(out, q)
		}
	}
	return out
}

// untouched checks that nothing of batch was done: every result still
// queued with no attempt, the batch counters at zero, every task still in
// its queue with no retry used.
func (h *healthWorld) untouched(t *testing.T, batch string, ids []string) {
	t.Helper()
	r := tasks.NewReader(h.rdb)
	for _, id := range ids {
		res, err := r.Result(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if res.Status != tasks.StatusQueued || res.Attempts != 0 {
			t.Errorf("%s: %s with %d attempts (%s %s), want queued with none", id, res.Status, res.Attempts, res.ErrorCode, res.ErrorMessage)
		}
	}
	st, err := r.Batch(t.Context(), batch)
	if err != nil {
		t.Fatal(err)
	}
	if st.Succeeded+st.Failed != 0 || st.Done() {
		t.Errorf("batch %+v, want nothing done", st)
	}
	h.inQueue(t, ids, 0)
}

// inQueue checks that every task is pending, scheduled or retrying (not
// archived, not gone) with at most maxRetried retries counted.
func (h *healthWorld) inQueue(t *testing.T, ids []string, maxRetried int) {
	t.Helper()
	insp := asynq.NewInspectorFromRedisClient(h.rdb)
	for _, id := range ids {
		ti, err := insp.GetTaskInfo(DefaultQueue, id)
		if err != nil {
			t.Errorf("%s: %v", id, err)
			continue
		}
		switch ti.State {
		case asynq.TaskStatePending, asynq.TaskStateScheduled, asynq.TaskStateRetry, asynq.TaskStateActive:
		default:
			t.Errorf("%s is %v, want still queued", id, ti.State)
		}
		if ti.Retried > maxRetried {
			t.Errorf("%s used %d retries, want at most %d", id, ti.Retried, maxRetried)
		}
	}
}

// finished waits for batch to finish with every task succeeded and,
// unless attempts is 0, checks that each write made that many calls (an
// update one more: it reads the coupon first).
func (h *healthWorld) finished(t *testing.T, batch string, ids []string, attempts int) {
	t.Helper()
	bt := pollBatch(t, h.rdb, batch, time.Minute)
	if bt["succeeded"] != fmt.Sprint(len(ids)) || bt["failed"] != "0" {
		t.Fatalf("batch %v, want %d succeeded", bt, len(ids))
	}
	r := tasks.NewReader(h.rdb)
	for _, id := range ids {
		res, err := r.Result(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		want := attempts
		if res.Op == tasks.OpUpdate {
			want++ // the GET that reads the coupon before the PATCH
		}
		if attempts > 0 && res.Attempts != want {
			t.Errorf("%s: %d attempts, want %d", id, res.Attempts, want)
		}
	}
}

func generateKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestMisconfiguredWorkerLeavesBatchUntouched: a worker whose settings
// WeChat Pay refuses (wrong APIv3 key, clock 10 minutes off, wrong
// certificate serial, wrong WeChat Pay public key) takes no task: it keeps
// probing, says why it is not ready, and the batch waits — no call, no
// attempt, no retry used, nothing failed. A worker with the right settings
// then finishes it, one call each.
func TestMisconfiguredWorkerLeavesBatchUntouched(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		keyMode   wechatpaytest.KeyMode
		skew      time.Duration
		bad       func(f *wechatpaytest.Server) []wechatpay.Option
		wantCause wechatpay.Credential
	}{
		{name: "wrong APIv3 key", keyMode: wechatpaytest.CertificateMode, wantCause: wechatpay.CredentialAPIv3Key,
			bad: func(f *wechatpaytest.Server) []wechatpay.Option {
				serial, key := f.MerchantKey()
				return []wechatpay.Option{wechatpay.WithBaseURL(f.URL), wechatpay.WithPartner(f.MchID(), serial, key),
					wechatpay.WithPlatformCertificates(strings.Repeat("0", 32))}
			}},
		{name: "clock skewed", keyMode: wechatpaytest.PublicKeyMode, skew: 10 * time.Minute, wantCause: wechatpay.CredentialClock},
		{name: "wrong certificate serial", keyMode: wechatpaytest.PublicKeyMode, wantCause: wechatpay.CredentialMerchantKey,
			bad: func(f *wechatpaytest.Server) []wechatpay.Option {
				_, key := f.MerchantKey()
				id, pub := f.PublicKey()
				return []wechatpay.Option{wechatpay.WithBaseURL(f.URL), wechatpay.WithPartner(f.MchID(), "5157F09EFDC096DE15EBE81A47057A72", key),
					wechatpay.WithPublicKey(id, pub)}
			}},
		{name: "wrong WeChat Pay public key", keyMode: wechatpaytest.PublicKeyMode, wantCause: wechatpay.CredentialWeChatPayKey,
			bad: func(f *wechatpaytest.Server) []wechatpay.Option {
				serial, key := f.MerchantKey()
				id, _ := f.PublicKey()
				return []wechatpay.Option{wechatpay.WithBaseURL(f.URL), wechatpay.WithPartner(f.MchID(), serial, key),
					wechatpay.WithPublicKey(id, &generateKey(t).PublicKey)}
			}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A Redis of its own: workers take any task of their queue.
			h := newHealthWorld(t, nil, wechatpaytest.WithKeyMode(tt.keyMode), wechatpaytest.WithClockSkew(tt.skew))
			batch := fmt.Sprintf("misconf%d", i)
			ids := h.enqueue(t, batch, 12)
			api := h.fake.Client()
			if tt.bad != nil {
				var err error
				if api, err = wechatpay.NewClient(tt.bad(h.fake)...); err != nil {
					t.Fatal(err)
				}
			}
			defer api.Close()
			w := h.start(t, api)
			// Alive and probing: several probes answered, and Ready says why.
			testutil.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
				if n := h.probes(); n < 4 {
					return fmt.Errorf("%d probes", n)
				}
				err := w.Ready(t.Context())
				if err == nil || !strings.Contains(err.Error(), "likely cause: "+string(tt.wantCause)) {
					return fmt.Errorf("Ready = %v", err)
				}
				return nil
			}, "the worker did not probe or did not name %q", tt.wantCause)
			if calls := h.couponCalls(); len(calls) != 0 {
				t.Errorf("%d product-coupon calls sent, first %+v", len(calls), calls[0])
			}
			h.untouched(t, batch, ids)
			if !strings.Contains(w.log.String(), "likely_cause="+strings.ReplaceAll(string(tt.wantCause), " ", `" `)) &&
				!strings.Contains(w.log.String(), `likely_cause="`+string(tt.wantCause)+`"`) &&
				!strings.Contains(w.log.String(), "likely_cause="+string(tt.wantCause)) {
				t.Errorf("the log does not name the likely cause %q", tt.wantCause)
			}
			if err := w.stop(); err != nil {
				t.Fatal(err)
			}

			// Restarted with the right settings, it finishes the batch.
			h.fake.SetClockSkew(0)
			good := h.fake.Client()
			defer good.Close()
			h.start(t, good)
			h.finished(t, batch, ids, 1)
		})
	}
}

// TestWorkerStopsForTheClockAndResumes: a worker that is running when
// WeChat Pay's clock moves 6 minutes away stops taking tasks at once
// without failing any or using a retry, says so, and resumes by itself
// when the clocks agree again.
func TestWorkerStopsForTheClockAndResumes(t *testing.T) {
	t.Parallel()
	h := newHealthWorld(t, nil)
	api := h.fake.Client()
	defer api.Close()
	w := h.start(t, api)
	first := h.enqueue(t, "before", 6)
	h.finished(t, "before", first, 1)

	h.fake.SetClockSkew(6 * time.Minute)
	ids := h.enqueue(t, "during", 12)
	testutil.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
		if err := w.Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "likely cause: clock") {
			return fmt.Errorf("Ready = %v", err)
		}
		return nil
	}, "the worker did not stop for the clock")
	// The tasks that met the clock came back: none failed, none used a
	// retry, and once the server is down none is running.
	r := tasks.NewReader(h.rdb)
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		for _, id := range ids {
			res, err := r.Result(t.Context(), id)
			if err != nil {
				return err
			}
			switch res.Status {
			case tasks.StatusQueued, tasks.StatusRetrying:
			case tasks.StatusRunning:
				return fmt.Errorf("%s still running", id)
			default:
				t.Fatalf("%s is %s (%s %s) while the clock is off", id, res.Status, res.ErrorCode, res.ErrorMessage)
			}
			if res.Attempts > 1 {
				t.Errorf("%s: %d attempts: calls were made while the clock was known off", id, res.Attempts)
			}
		}
		return nil
	}, "the batch did not settle")
	h.inQueue(t, ids, 0)
	signErrors := 0
	for _, q := range h.couponCalls() {
		if q.Code == wechatpay.CodeSignError {
			signErrors++
		}
	}
	t.Logf("%d SIGN_ERROR answers before the worker stopped", signErrors)
	if signErrors > credentialTrip+w.cfg.Concurrency {
		t.Errorf("%d SIGN_ERROR answers: the worker went on calling", signErrors)
	}

	h.fake.SetClockSkew(0)
	h.finished(t, "during", ids, 0)
}

// TestReadyzAnswersOnPausedRedis: with Redis frozen (SIGSTOP), /readyz
// answers 503 within its timeout instead of hanging on the PING.
func TestReadyzAnswersOnPausedRedis(t *testing.T) {
	t.Parallel()
	h := newHealthWorld(t, nil)
	api := h.fake.Client()
	defer api.Close()
	w := h.start(t, api)
	const timeout = 300 * time.Millisecond
	srv := h.serveHTTP(t, HTTPConfig{Ready: w.Ready, ReadyTimeout: timeout})
	srv.waitStatus(t, http.StatusOK, "")

	h.srv.Pause() // its cleanup resumes Redis before the worker stops
	client := &http.Client{Timeout: 8 * timeout}
	for range 2 {
		start := time.Now()
		resp, err := client.Get(srv.URL + "/readyz")
		if err != nil {
			t.Fatalf("GET /readyz on a paused Redis: %v (after %v; the timeout is %v)", err, time.Since(start).Round(time.Millisecond), timeout)
		}
		body := readAll(resp)
		t.Logf("/readyz on a paused Redis: %d %q in %v", resp.StatusCode, body, time.Since(start).Round(time.Millisecond))
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "redis") {
			t.Errorf("got %d %q, want 503 naming redis", resp.StatusCode, body)
		}
	}
}

// TestReadyzWhileRedisEvicts: a maxmemory-policy set to evict while the
// worker runs makes /readyz answer 503 naming it, until it is put back.
func TestReadyzWhileRedisEvicts(t *testing.T) {
	t.Parallel()
	h := newHealthWorld(t, nil)
	api := h.fake.Client()
	defer api.Close()
	w := h.start(t, api)
	srv := h.serveHTTP(t, HTTPConfig{Ready: w.Ready})
	srv.waitStatus(t, http.StatusOK, "")
	if err := h.rdb.ConfigSet(t.Context(), "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	srv.waitStatus(t, http.StatusServiceUnavailable, "maxmemory-policy is allkeys-lru, not noeviction")
	if err := h.rdb.ConfigSet(t.Context(), "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	srv.waitStatus(t, http.StatusOK, "")
}

// TestRunRefusesEvictingRedis: Run will not start on an evicting Redis,
// naming the policy and noeviction, unless AllowEviction says so.
func TestRunRefusesEvictingRedis(t *testing.T) {
	t.Parallel()
	h := newHealthWorld(t, nil)
	if err := h.rdb.ConfigSet(t.Context(), "maxmemory-policy", "volatile-lru").Err(); err != nil {
		t.Fatal(err)
	}
	api := h.fake.Client()
	defer api.Close()
	w := h.start(t, api)
	select {
	case err := <-w.done:
		var ee *EvictionError
		if !errors.As(err, &ee) || ee.Policy != "volatile-lru" || !strings.Contains(err.Error(), "noeviction") {
			t.Errorf("Run = %v, want an *EvictionError naming volatile-lru and noeviction", err)
		}
		w.done <- nil // for the cleanup's stop
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not refuse the evicting Redis")
	}
	if n := len(h.fake.Requests()); n != 0 {
		t.Errorf("%d WeChat Pay requests from a worker that refused to start", n)
	}

	allowed := h.start(t, api, func(c *Config) { c.AllowEviction = true })
	ids := h.enqueue(t, "allowed", 4)
	h.finished(t, "allowed", ids, 1)
	if err := allowed.Ready(t.Context()); err != nil {
		t.Errorf("Ready with AllowEviction = %v", err)
	}
}

// TestRunWaitsForRedis: a worker started before its Redis waits, saying so
// in its log and in Ready, and works once Redis is up.
func TestRunWaitsForRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Reserve(t)
	conn, err := redisurl.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	h := &healthWorld{srv: srv, conn: conn, fake: wechatpaytest.NewServer(t)}
	api := h.fake.Client()
	defer api.Close()
	w := h.start(t, api)
	testutil.Eventually(t, 30*time.Second, 10*time.Millisecond, func() error {
		select {
		case err := <-w.done:
			t.Fatalf("Run returned before Redis was up: %v", err)
		default:
		}
		if !strings.Contains(w.log.String(), "waiting for Redis") {
			return errors.New("no waiting line in the log")
		}
		if err := w.Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "waiting for Redis") {
			return fmt.Errorf("Ready = %v", err)
		}
		return nil
	}, "the worker did not wait for Redis")

	srv.Launch()
	h.rdb = srv.Client()
	ids := h.enqueue(t, "late", 4)
	h.finished(t, "late", ids, 1)
}

// httpServer serves NewHTTPHandler over the world's Redis.
type httpServer struct{ *httptest.Server }

func (h *healthWorld) serveHTTP(t *testing.T, cfg HTTPConfig) *httpServer {
	t.Helper()
	cfg.Redis = h.conn
	hd, closer, err := NewHTTPHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(hd)
	t.Cleanup(func() { srv.Close(); _ = closer.Close() })
	return &httpServer{srv}
}

// waitStatus polls /readyz until it answers status with a body holding
// want.
func (s *httpServer) waitStatus(t *testing.T, status int, want string) {
	t.Helper()
	testutil.Eventually(t, 30*time.Second, 20*time.Millisecond, func() error {
		resp, err := s.Client().Get(s.URL + "/readyz")
		if err != nil {
			return err
		}
		body := readAll(resp)
		if resp.StatusCode != status || !strings.Contains(body, want) {
			return fmt.Errorf("%d %q", resp.StatusCode, body)
		}
		return nil
	}, "/readyz never answered %d %q", status, want)
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}
