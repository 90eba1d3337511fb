package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

const (
	testBrand = "120344"
	testBatch = "batch-1"
)

// testBundle is one worker on its own miniredis with a stub API.
type testBundle struct {
	mr      *miniredis.Miniredis
	rdb     *redis.Client
	store   *results.Store
	api     *stubAPI
	limiter *fakeLimiter
	metrics *fakeMetrics
	w       *Worker
	ctx     context.Context
}

type retryKey struct{}

type retryInfo struct{ retried, max int }

// withRetry makes ctx look like asynq's for a task retried n times with
// asynq max retry maxRetry.
func withRetry(ctx context.Context, n, maxRetry int) context.Context {
	return context.WithValue(ctx, retryKey{}, retryInfo{n, maxRetry})
}

func setup(t *testing.T, mutate ...func(*Config)) *testBundle {
	t.Helper()
	mr := miniredis.RunT(t)
	b := &testBundle{mr: mr, api: newStubAPI(), limiter: &fakeLimiter{}, metrics: newFakeMetrics()}
	b.rdb = redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { b.rdb.Close() })
	b.store = results.NewStore(b.rdb)
	cfg := Config{Redis: asynq.RedisClientOpt{Addr: mr.Addr()}, MaxRetry: 3}
	for _, m := range mutate {
		m(&cfg)
	}
	w, err := New(cfg, b.api)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	w.retryCount = func(ctx context.Context) (int, bool) {
		ri, ok := ctx.Value(retryKey{}).(retryInfo)
		return ri.retried, ok
	}
	w.limiter, w.metrics = b.limiter, b.metrics
	b.w = w
	return b
}

// enqueue records tasks as the producer would (batch opened, accepted,
// sealed) and returns the asynq tasks to hand to ProcessTask.
func (b *testBundle) enqueue(t *testing.T, payloads ...any) []*asynq.Task {
	t.Helper()
	ctx := t.Context()
	if err := b.store.OpenBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	var out []*asynq.Task
	for _, p := range payloads {
		var typ string
		var id results.Identity
		switch p := p.(type) {
		case *wechatpay.UpdateProductCouponRequest:
			typ, id = tasks.TypeUpdate, results.Identity{Op: string(tasks.OpUpdate), BrandID: p.BrandID, ProductCouponID: p.ProductCouponID, OutRequestNo: p.OutRequestNo}
		case *wechatpay.DeactivateProductCouponRequest:
			typ, id = tasks.TypeDeactivate, results.Identity{Op: string(tasks.OpDeactivate), BrandID: p.BrandID, ProductCouponID: p.ProductCouponID, OutRequestNo: p.OutRequestNo}
		case *tasks.GetPayload:
			typ, id = tasks.TypeGet, results.Identity{Op: string(tasks.OpGet), BrandID: p.BrandID, ProductCouponID: p.ProductCouponID, OutRequestNo: p.OutRequestNo}
		default:
			t.Fatalf("enqueue: %T", p)
		}
		body, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		id.TaskID = tasks.TaskID(tasks.Op(id.Op), id.BrandID, id.OutRequestNo)
		id.Batch = testBatch
		sum := sha256.Sum256(body)
		if out, err := b.store.Accept(ctx, id, hex.EncodeToString(sum[:])); err != nil || out != results.Accepted {
			t.Fatalf("accept %s: %v %v", id.TaskID, out, err)
		}
		out = append(out, asynq.NewTask(typ, body))
	}
	if err := b.store.SealBatch(ctx, testBatch); err != nil {
		t.Fatal(err)
	}
	return out
}

func (b *testBundle) result(t *testing.T, taskID string) map[string]string {
	t.Helper()
	m, err := b.rdb.HGetAll(t.Context(), results.ResultKey(taskID)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (b *testBundle) batch(t *testing.T) map[string]string {
	t.Helper()
	m, err := b.rdb.HGetAll(t.Context(), results.BatchKey(testBatch)).Result()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// pick returns the named fields of m.
func pick(m map[string]string, fields ...string) map[string]string {
	out := map[string]string{}
	for _, f := range fields {
		out[f] = m[f]
	}
	return out
}

func updateReq(coupon, outNo string) *wechatpay.UpdateProductCouponRequest {
	return &wechatpay.UpdateProductCouponRequest{ProductCouponID: coupon, BrandID: testBrand, OutRequestNo: outNo,
		DisplayInfo: &wechatpay.DisplayInfo{Name: "全场满100立打8折", OriginalPrice: 10000}}
}

func deactivateReq(coupon, outNo string) *wechatpay.DeactivateProductCouponRequest {
	return &wechatpay.DeactivateProductCouponRequest{ProductCouponID: coupon, BrandID: testBrand, OutRequestNo: outNo,
		DeactivateReason: "批次信息有误,重新创建"}
}

func taskIDOf(op tasks.Op, outNo string) string { return tasks.TaskID(op, testBrand, outNo) }

var resultFields = []string{results.FieldStatus, results.FieldAttempts, results.FieldHTTPStatus, results.FieldErrorCode, results.FieldCouponState}

func TestHandlerOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		req     any
		script  []error
		retried int // asynq retries so far
		maxR    int // asynq max retry
		// want
		skipRetry   bool // returned error wraps asynq.SkipRetry
		noErr       bool
		notFailure  bool // IsFailure(err) == false (rate-limit deferral)
		result      map[string]string
		batch       map[string]string
		calls       int
		backoffs    int
		retryReason string
		retries     int // of retryReason; 0 means 1
	}{
		// An update first reads the coupon (one GET, counted in attempts
		// and calls) to merge the line into its display_info.
		{
			name: "update succeeds", req: updateReq("1000000013", "update_000001"), maxR: 25, noErr: true,
			result: map[string]string{"status": "succeeded", "attempts": "2", "http_status": "200", "error_code": "", "coupon_state": "EFFECTIVE"},
			batch:  map[string]string{"succeeded": "1", "failed": "0"}, calls: 2,
		},
		{
			name: "deactivate succeeds", req: deactivateReq("1000000013", "deact_000001"), maxR: 25, noErr: true,
			result: map[string]string{"status": "succeeded", "attempts": "1", "http_status": "200", "error_code": "", "coupon_state": "DEACTIVATED"},
			batch:  map[string]string{"succeeded": "1", "failed": "0"}, calls: 1,
		},
		{
			name: "get succeeds", req: &tasks.GetPayload{ProductCouponID: "1000000013", BrandID: testBrand, OutRequestNo: "get_000001"}, maxR: 25, noErr: true,
			result: map[string]string{"status": "succeeded", "attempts": "1", "http_status": "200", "error_code": "", "coupon_state": "EFFECTIVE"},
			batch:  map[string]string{"succeeded": "1", "failed": "0"}, calls: 1,
		},
		{
			name: "permanent 4xx is attempted once", req: updateReq("1000000013", "update_000002"), maxR: 25,
			script: []error{apiErr(400, wechatpay.CodeParamError, "REQ-268000001")}, skipRetry: true,
			result: map[string]string{"status": "failed", "attempts": "2", "http_status": "400", "error_code": "PARAM_ERROR", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "1"}, calls: 2,
		},
		{
			name: "403 NO_AUTH is permanent", req: deactivateReq("1000000013", "deact_000002"), maxR: 25,
			script: []error{apiErr(403, wechatpay.CodeNoAuth, "REQ-268579803")}, skipRetry: true,
			result: map[string]string{"status": "failed", "attempts": "1", "http_status": "403", "error_code": "NO_AUTH", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "1"}, calls: 1,
		},
		{
			name: "500 is retried", req: updateReq("1000000013", "update_000003"), maxR: 25,
			script: []error{apiErr(500, wechatpay.CodeSystemError, "")}, retryReason: "update api_error",
			result: map[string]string{"status": "retrying", "attempts": "2", "http_status": "500", "error_code": "SYSTEM_ERROR", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "0"}, calls: 2,
		},
		{
			name: "bad signature is retried", req: updateReq("1000000013", "update_000004"), maxR: 25,
			script: []error{verifyErr()}, retryReason: "update verify_error",
			result: map[string]string{"status": "retrying", "attempts": "2", "http_status": "200", "error_code": "SIGNATURE_INVALID", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "0"}, calls: 2,
		},
		{
			name: "network error is retried", req: deactivateReq("1000000013", "deact_000003"), maxR: 25,
			script: []error{netErr()}, retryReason: "deactivate network_error",
			result: map[string]string{"status": "retrying", "attempts": "1", "http_status": "", "error_code": "NETWORK_ERROR", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "0"}, calls: 1,
		},
		{
			name: "retries used up (Config.MaxRetry)", req: updateReq("1000000013", "update_000005"), retried: 3, maxR: 25,
			script: []error{apiErr(503, wechatpay.CodeServiceUnavailable, "")}, skipRetry: true,
			result: map[string]string{"status": "failed", "attempts": "2", "http_status": "503", "error_code": "SERVICE_UNAVAILABLE", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "1"}, calls: 2,
		},
		{
			name: "429 defers without a failure", req: updateReq("1000000013", "update_000007"), retried: 2, maxR: 25,
			script: []error{rateLimitedErr(3 * time.Second)}, notFailure: true, backoffs: 1, retryReason: "update rate_limited",
			result: map[string]string{"status": "retrying", "attempts": "2", "http_status": "429", "error_code": "RATELIMIT_EXCEEDED", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "0"}, calls: 2,
		},
		{
			name: "429 never uses up retries", req: updateReq("1000000013", "update_000008"), retried: 5, maxR: 5,
			script: []error{rateLimitedErr(5 * time.Second)}, notFailure: true, backoffs: 1, retryReason: "update rate_limited",
			result: map[string]string{"status": "retrying", "attempts": "2", "http_status": "429", "error_code": "RATELIMIT_EXCEEDED", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "0"}, calls: 2,
		},
		{
			// Retry-After within LimiterMaxWait: the handler waits and calls
			// again on a fresh slot, instead of asynq's delayed set.
			name: "429 with a short Retry-After is called again at once", req: updateReq("1000000013", "update_000010"), retried: 5, maxR: 5,
			script: []error{rateLimitedErr(10 * time.Millisecond)}, noErr: true, backoffs: 1, retryReason: "update rate_limited",
			result: map[string]string{"status": "succeeded", "attempts": "3", "http_status": "200", "error_code": "", "coupon_state": "EFFECTIVE"},
			batch:  map[string]string{"succeeded": "1", "failed": "0"}, calls: 3,
		},
		{
			name: "a fourth 429 in a row goes back to asynq", req: deactivateReq("1000000013", "deact_000010"), maxR: 25,
			script:     []error{rateLimitedErr(time.Millisecond), rateLimitedErr(time.Millisecond), rateLimitedErr(time.Millisecond), rateLimitedErr(time.Millisecond)},
			notFailure: true, backoffs: 4, retryReason: "deactivate rate_limited", retries: 4,
			result: map[string]string{"status": "retrying", "attempts": "4", "http_status": "429", "error_code": "RATELIMIT_EXCEEDED", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "0"}, calls: 4,
		},
		{
			name: "invalid payload fails at once", req: &wechatpay.UpdateProductCouponRequest{ProductCouponID: "1000000013", BrandID: testBrand, OutRequestNo: "update_000009"},
			maxR: 25, skipRetry: true,
			result: map[string]string{"status": "failed", "attempts": "0", "http_status": "", "error_code": "INVALID_PAYLOAD", "coupon_state": ""},
			batch:  map[string]string{"succeeded": "0", "failed": "1"}, calls: 0,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			task := b.enqueue(t, tt.req)[0]
			var tid string
			switch r := tt.req.(type) {
			case *wechatpay.UpdateProductCouponRequest:
				tid = taskIDOf(tasks.OpUpdate, r.OutRequestNo)
				b.api.failNext(tasks.OpUpdate, r.ProductCouponID, tt.script...)
			case *wechatpay.DeactivateProductCouponRequest:
				tid = taskIDOf(tasks.OpDeactivate, r.OutRequestNo)
				b.api.failNext(tasks.OpDeactivate, r.ProductCouponID, tt.script...)
			case *tasks.GetPayload:
				tid = taskIDOf(tasks.OpGet, r.OutRequestNo)
				b.api.failNext(tasks.OpGet, r.ProductCouponID, tt.script...)
			}
			err := b.w.Handler().ProcessTask(withRetry(t.Context(), tt.retried, tt.maxR), task)
			switch {
			case tt.noErr && err != nil:
				t.Fatalf("ProcessTask: %v", err)
			case !tt.noErr && err == nil:
				t.Fatal("ProcessTask returned nil, want an error")
			}
			if got := errors.Is(err, asynq.SkipRetry); got != tt.skipRetry {
				t.Errorf("errors.Is(err, SkipRetry) = %v, want %v (err: %v)", got, tt.skipRetry, err)
			}
			if err != nil {
				if got := IsFailure(err); got == tt.notFailure {
					t.Errorf("IsFailure(%v) = %v, want %v", err, got, !tt.notFailure)
				}
			}
			res := b.result(t, tid)
			if diff := cmp.Diff(tt.result, pick(res, resultFields...)); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.batch, pick(b.batch(t), "succeeded", "failed")); diff != "" {
				t.Errorf("batch (-want +got):\n%s", diff)
			}
			if got := b.api.totalCalls(); got != tt.calls {
				t.Errorf("API calls = %d, want %d", got, tt.calls)
			}
			if got := len(b.limiter.backoffs); got != tt.backoffs {
				t.Errorf("limiter backoffs = %d (%v), want %d", got, b.limiter.backoffs, tt.backoffs)
			}
			if want := max(tt.retries, 1); tt.retryReason != "" && b.metrics.retries[tt.retryReason] != want {
				t.Errorf("retries = %v, want %d × %q", b.metrics.retries, want, tt.retryReason)
			}
			terminal := tasks.Status(res[results.FieldStatus]).Terminal()
			if terminal != (res[results.FieldFinishedAt] != "") {
				t.Errorf("finished_at = %q with status %s", res[results.FieldFinishedAt], res[results.FieldStatus])
			}
			if terminal && b.batch(t)[results.BatchFieldFinishedAt] == "" {
				t.Errorf("batch of one finished task has no finished_at: %v", b.batch(t))
			}
			if st := res[results.FieldStatus]; st == "succeeded" {
				var c wechatpay.ProductCoupon
				if err := json.Unmarshal([]byte(res[results.FieldCoupon]), &c); err != nil || c.ProductCouponID != "1000000013" {
					t.Errorf("coupon = %q (%v)", res[results.FieldCoupon], err)
				}
			}
			if tt.name == "invalid payload fails at once" && res[results.FieldErrorMessage] == "" {
				t.Error("no error_message for an invalid payload")
			}
		})
	}
}

func TestSuccessWritesRawCoupon(t *testing.T) {
	t.Parallel()
	b := setup(t)
	task := b.enqueue(t, deactivateReq("1000000013", "deact_raw_01"))[0]
	if err := b.w.Handler().ProcessTask(t.Context(), task); err != nil {
		t.Fatal(err)
	}
	res := b.result(t, taskIDOf(tasks.OpDeactivate, "deact_raw_01"))
	want := withRaw(b.api.coupons["1000000013"]).Raw
	if res[results.FieldCoupon] != string(want) {
		t.Errorf("coupon = %s, want the raw answer %s", res[results.FieldCoupon], want)
	}
	if b.metrics.terminals["deactivate succeeded"] != 1 {
		t.Errorf("terminal metrics = %v", b.metrics.terminals)
	}
}

func TestRedeliveryOfFinishedTaskSkipsAPI(t *testing.T) {
	t.Parallel()
	for _, script := range [][]error{nil, {apiErr(400, wechatpay.CodeParamError, "")}} {
		b := setup(t)
		task := b.enqueue(t, updateReq("1000000013", "update_redeliv"))[0]
		b.api.failNext(tasks.OpUpdate, "1000000013", script...)
		_ = b.w.Handler().ProcessTask(t.Context(), task)
		before := b.result(t, taskIDOf(tasks.OpUpdate, "update_redeliv"))
		// asynq re-delivers (crash after the result was written).
		if err := b.w.Handler().ProcessTask(withRetry(t.Context(), 1, 25), task); err != nil {
			t.Fatalf("re-delivery: %v", err)
		}
		if got := b.api.totalCalls(); got != 2 { // the GET and the PATCH of the first run
			t.Errorf("API calls = %d after re-delivery, want 2", got)
		}
		after := b.result(t, taskIDOf(tasks.OpUpdate, "update_redeliv"))
		if diff := cmp.Diff(before, after); diff != "" {
			t.Errorf("re-delivery changed the result:\n%s", diff)
		}
		bt := b.batch(t)
		if n, _ := strconv.Atoi(bt["succeeded"]); n+func() int { n, _ := strconv.Atoi(bt["failed"]); return n }() != 1 {
			t.Errorf("batch counted the task twice: %v", bt)
		}
	}
}

func TestRetryThenSuccessCountsAttempts(t *testing.T) {
	t.Parallel()
	b := setup(t)
	task := b.enqueue(t, updateReq("1000000013", "update_retry1"))[0]
	b.api.failNext(tasks.OpUpdate, "1000000013", apiErr(500, wechatpay.CodeSystemError, ""), netErr())
	for i := range 2 {
		if err := b.w.Handler().ProcessTask(withRetry(t.Context(), i, 25), task); err == nil || errors.Is(err, asynq.SkipRetry) {
			t.Fatalf("run %d: err = %v, want a retryable error", i, err)
		}
	}
	if err := b.w.Handler().ProcessTask(withRetry(t.Context(), 2, 25), task); err != nil {
		t.Fatal(err)
	}
	res := b.result(t, taskIDOf(tasks.OpUpdate, "update_retry1"))
	// One GET before the first PATCH; the retries send the stored body.
	want := map[string]string{"status": "succeeded", "attempts": "4", "http_status": "200", "error_code": "", "coupon_state": "EFFECTIVE"}
	if diff := cmp.Diff(want, pick(res, resultFields...)); diff != "" {
		t.Errorf("result (-want +got):\n%s", diff)
	}
	if res[results.FieldErrorMessage] != "" || res[results.FieldRequestID] != "" {
		t.Errorf("success kept the last error: %v", res)
	}
}

func TestLocalRateLimitDefersWithoutCall(t *testing.T) {
	t.Parallel()
	b := setup(t)
	task := b.enqueue(t, updateReq("1000000013", "update_limit1"))[0]
	b.limiter.waitErrs = []error{&RateLimitedError{Endpoint: "update", RetryIn: 4 * time.Second}}
	err := b.w.Handler().ProcessTask(withRetry(t.Context(), 0, 25), task)
	if err == nil || IsFailure(err) {
		t.Fatalf("err = %v, IsFailure = %v; want a deferral", err, IsFailure(err))
	}
	if d := (RetryPolicy{Base: time.Second, Cap: time.Minute}).Delay(7, err); d != 4*time.Second {
		t.Errorf("Delay = %v, want the limiter's 4s", d)
	}
	if b.api.totalCalls() != 0 {
		t.Errorf("API called %d times while rate limited", b.api.totalCalls())
	}
	res := b.result(t, taskIDOf(tasks.OpUpdate, "update_limit1"))
	if res["status"] != "retrying" || res["error_code"] != CodeRateLimited || res["attempts"] != "0" {
		t.Errorf("result = %v", pick(res, resultFields...))
	}
	// The next run goes through.
	if err := b.w.Handler().ProcessTask(withRetry(t.Context(), 0, 25), task); err != nil {
		t.Fatal(err)
	}
	if res := b.result(t, taskIDOf(tasks.OpUpdate, "update_limit1")); res["status"] != "succeeded" {
		t.Errorf("status = %s", res["status"])
	}
}

func TestLimiterFailureIsRetried(t *testing.T) {
	t.Parallel()
	b := setup(t)
	task := b.enqueue(t, updateReq("1000000013", "update_limit2"))[0]
	b.limiter.waitErrs = []error{errors.New("redis: connection refused")}
	err := b.w.Handler().ProcessTask(withRetry(t.Context(), 0, 25), task)
	if err == nil || errors.Is(err, asynq.SkipRetry) || !IsFailure(err) {
		t.Fatalf("err = %v; want a plain retryable error", err)
	}
	if b.api.totalCalls() != 0 {
		t.Error("API called without a rate-limit slot")
	}
}

func TestInterruptedCallIsNotTerminal(t *testing.T) {
	t.Parallel()
	b := setup(t)
	task := b.enqueue(t, deactivateReq("1000000013", "deact_intr01"))[0]
	ctx, cancel := context.WithCancel(withRetry(t.Context(), 0, 25))
	defer cancel()
	b.api.onCall = func(tasks.Op) { cancel() } // shutdown during the call
	err := b.w.Handler().ProcessTask(ctx, task)
	if err == nil || errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want a non-terminal error", err)
	}
	res := b.result(t, taskIDOf(tasks.OpDeactivate, "deact_intr01"))
	if res["status"] != "retrying" || res["error_code"] != CodeInterrupted {
		t.Errorf("result = %v", pick(res, resultFields...))
	}
}

func TestTaskWithoutIDAndBadJSON(t *testing.T) {
	t.Parallel()
	b := setup(t)
	err := b.w.Handler().ProcessTask(t.Context(), asynq.NewTask(tasks.TypeUpdate, []byte("{not json")))
	if !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("err = %v, want SkipRetry", err)
	}
	keys, _ := b.rdb.Keys(t.Context(), "couponq:result:*").Result()
	if len(keys) != 0 {
		t.Errorf("wrote results %v for a task it cannot name", keys)
	}
}

func TestInvalidJSONWithTaskIDIsRecorded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// Through a real asynq server, so the handler sees the task ID.
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: b.mr.Addr()})
	t.Cleanup(func() { client.Close() })
	const id = "update:120344:broken_0001"
	if _, err := client.Enqueue(asynq.NewTask(tasks.TypeUpdate, []byte(`{"product_coupon_id": 7`)), asynq.TaskID(id), asynq.Queue(DefaultQueue)); err != nil {
		t.Fatal(err)
	}
	srv := asynq.NewServer(asynq.RedisClientOpt{Addr: b.mr.Addr()}, b.w.asynqConfig())
	if err := srv.Start(b.w.Handler()); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	res := pollResult(t, b.rdb, id, 10*time.Second)
	if res["status"] != "failed" || res["error_code"] != CodeInvalidPayload || res["error_message"] == "" {
		t.Errorf("result = %v", res)
	}
	if b.api.totalCalls() != 0 {
		t.Error("API called for an invalid payload")
	}
}

// pollResult waits (bounded) until taskID's result is terminal.
func pollResult(t *testing.T, rdb redis.UniversalClient, taskID string, within time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		m, err := rdb.HGetAll(t.Context(), results.ResultKey(taskID)).Result()
		if err == nil && tasks.Status(m[results.FieldStatus]).Terminal() {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("result of %s not terminal within %v: %v (%v)", taskID, within, m, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
