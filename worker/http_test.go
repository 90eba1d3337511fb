package worker

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/couponq/couponq/tasks"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
)

type httpBundle struct {
	mr  *miniredis.Miniredis
	srv *httptest.Server
}

// setupHTTP serves NewHTTPHandler(cfg) over a miniredis holding three pending
// tasks in queue "couponq", after a few observed calls.
func setupHTTP(t *testing.T, cfg HTTPConfig) *httpBundle {
	t.Helper()
	mr := miniredis.RunT(t)
	opt := asynq.RedisClientOpt{Addr: mr.Addr()}
	client := asynq.NewClient(opt)
	t.Cleanup(func() { _ = client.Close() })
	for _, id := range []string{"a", "b", "c"} {
		task := asynq.NewTask("coupon:update", []byte(`{"product_coupon_id":"1000000013","brand_id":"120344"}`))
		if _, err := client.Enqueue(task, asynq.Queue("couponq"), asynq.TaskID("update:120344:"+id)); err != nil {
			t.Fatal(err)
		}
	}

	if cfg.Registry == nil {
		cfg.Registry = prometheus.NewRegistry()
	}
	m := NewMetrics(cfg.Registry)
	m.ObserveCall("update", OutcomeSuccess, "", 100*time.Millisecond)
	m.ObserveCall("update", OutcomeSuccess, "", 200*time.Millisecond)
	m.ObserveCall("update", OutcomeAPIError, "RATELIMIT_EXCEEDED", 5*time.Millisecond)
	m.ObserveRetry("update", "rate_limited")
	m.ObserveLimiterWait("update", 40*time.Millisecond)
	m.ObserveTerminal("update", tasks.StatusSucceeded)
	m.observeSlot("update", 0.95)
	m.observeBackoff("update", 1)
	m.observeRebook("get")

	cfg.Redis = opt
	h, closer, err := NewHTTPHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		if err := closer.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &httpBundle{mr: mr, srv: srv}
}

type response struct {
	status int
	header http.Header
	body   string
}

func (b *httpBundle) do(t *testing.T, method, path string, auth ...string) response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, b.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(auth) == 2 {
		req.SetBasicAuth(auth[0], auth[1])
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp.StatusCode, resp.Header, string(body)}
}

func TestHTTPEndpoints(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, HTTPConfig{})

	tests := []struct {
		name        string
		path        string
		status      int
		contentType string
		contains    []string
	}{
		{"healthz", "/healthz", 200, "text/plain", []string{"ok"}},
		{"readyz", "/readyz", 200, "text/plain", []string{"ok"}},
		{"metrics", "/metrics", 200, "text/plain", []string{
			`couponq_api_calls_total{code="",op="update",outcome="success"} 2`,
			`couponq_api_calls_total{code="RATELIMIT_EXCEEDED",op="update",outcome="api_error"} 1`,
			`couponq_api_call_duration_seconds_count{op="update",outcome="success"} 2`,
			`couponq_task_retries_total{op="update",reason="rate_limited"} 1`,
			`couponq_rate_limiter_wait_seconds_count{op="update"} 1`,
			`couponq_rate_limiter_quota_share{op="update"} 0.95`,
			`couponq_rate_limiter_slots_total{op="update"} 1`,
			`couponq_rate_limiter_backoffs_total{op="update"} 1`,
			`couponq_rate_limiter_empty_slots_total{op="update"} 1`,
			`couponq_rate_limiter_empty_slots_total{op="get"} 1`,
			`couponq_tasks_terminal_total{op="update",status="succeeded"} 1`,
			`asynq_queue_size{queue="couponq",state="pending"} 3`,
			`asynq_queue_paused{queue="couponq"} 0`,
			`asynq_tasks_processed_total{queue="couponq"} 0`,
			`asynq_queue_latency_seconds{queue="couponq"}`,
			`asynq_up 1`,
		}},
		{"asynqmon API", "/monitoring/api/queues", 200, "", // asynqmon sets no JSON Content-Type
			[]string{`"queue":"couponq"`}},
		{"asynqmon pending tasks", "/monitoring/api/queues/couponq/pending_tasks", 200, "", []string{
			// without authentication the payload is not shown (TestHTTPUnauthenticatedView)
			`"update:120344:a"`, `shown with monitoring authentication only`,
		}},
		{"asynqmon UI", "/monitoring/", 200, "text/html", []string{"<html"}},
		{"asynqmon without slash", "/monitoring", 200, "text/html", []string{"<html"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.do(t, http.MethodGet, tt.path)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %s", r.status, tt.status, r.body)
			}
			if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, tt.contentType) {
				t.Errorf("Content-Type %q, want %s", ct, tt.contentType)
			}
			for _, s := range tt.contains {
				if !strings.Contains(r.body, s) {
					t.Errorf("body lacks %s", s)
				}
			}
			if strings.Contains(tt.path, "/api/") && !json.Valid([]byte(r.body)) {
				t.Errorf("invalid JSON: %.200s", r.body)
			}
		})
	}
}

func TestHTTPMonitoringReadOnly(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		readWrite bool
		status    int
		paused    string
	}{
		{"read-only by default", false, http.StatusMethodNotAllowed, `asynq_queue_paused{queue="couponq"} 0`},
		{"read-write", true, http.StatusNoContent, `asynq_queue_paused{queue="couponq"} 1`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupHTTP(t, HTTPConfig{ReadWrite: tt.readWrite})
			if r := b.do(t, http.MethodPost, "/monitoring/api/queues/couponq:pause"); r.status != tt.status {
				t.Errorf("POST pause: %d, want %d: %s", r.status, tt.status, r.body)
			}
			if r := b.do(t, http.MethodGet, "/metrics"); !strings.Contains(r.body, tt.paused) {
				t.Errorf("metrics lack %s", tt.paused)
			}
		})
	}
}

func TestHTTPMonitoringAuth(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, HTTPConfig{MonitoringAuth: "ops:s3cret:with-colon"})
	tests := []struct {
		name   string
		path   string
		auth   []string
		status int
	}{
		{"no credentials", "/monitoring/", nil, 401},
		{"wrong password", "/monitoring/api/queues", []string{"ops", "wrong"}, 401},
		{"wrong user", "/monitoring/api/queues", []string{"admin", "s3cret:with-colon"}, 401},
		{"right", "/monitoring/api/queues", []string{"ops", "s3cret:with-colon"}, 200},
		{"right, UI", "/monitoring/", []string{"ops", "s3cret:with-colon"}, 200},
		{"metrics stay open", "/metrics", nil, 200},
		{"healthz stays open", "/healthz", nil, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.do(t, http.MethodGet, tt.path, tt.auth...)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d", r.status, tt.status)
			}
			if tt.status == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("WWW-Authenticate = %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}
}

func TestHTTPReadyz(t *testing.T) {
	t.Parallel()
	errKeys := errors.New("wechatpay: platform certificates expired")
	t.Run("Ready fails", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, HTTPConfig{Ready: func(ctx context.Context) error {
			if _, ok := ctx.Deadline(); !ok {
				return errors.New("no deadline")
			}
			return errKeys
		}})
		r := b.do(t, http.MethodGet, "/readyz")
		if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, errKeys.Error()) {
			t.Errorf("got %d %q, want 503 with the reason", r.status, r.body)
		}
		if r := b.do(t, http.MethodGet, "/healthz"); r.status != 200 {
			t.Errorf("healthz %d while not ready, want 200", r.status)
		}
	})
	t.Run("Redis down", func(t *testing.T) {
		t.Parallel()
		b := setupHTTP(t, HTTPConfig{Ready: func(context.Context) error { return nil }, ReadyTimeout: 500 * time.Millisecond})
		b.mr.Close()
		r := b.do(t, http.MethodGet, "/readyz")
		if r.status != http.StatusServiceUnavailable || !strings.Contains(r.body, "redis") {
			t.Errorf("got %d %q, want 503 naming redis", r.status, r.body)
		}
		r = b.do(t, http.MethodGet, "/metrics")
		if r.status != 200 || !strings.Contains(r.body, "asynq_up 0") || !strings.Contains(r.body, "couponq_api_calls_total") {
			t.Errorf("metrics with Redis down: %d, want 200 with asynq_up 0 and the worker metrics", r.status)
		}
	})
}

func TestNewHTTPHandlerErrors(t *testing.T) {
	t.Parallel()
	opt := asynq.RedisClientOpt{Addr: "127.0.0.1:1"}
	tests := []struct {
		name string
		cfg  HTTPConfig
		want string
	}{
		{"no redis", HTTPConfig{}, "HTTPConfig.Redis"},
		{"no colon", HTTPConfig{Redis: opt, MonitoringAuth: "opssecret"}, "MonitoringAuth"},
		{"empty user", HTTPConfig{Redis: opt, MonitoringAuth: ":secret"}, "MonitoringAuth"},
		{"empty password", HTTPConfig{Redis: opt, MonitoringAuth: "ops:"}, "MonitoringAuth"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := NewHTTPHandler(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one naming %s", err, tt.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error repeats the secret: %v", err)
			}
		})
	}
}

func TestHTTPSharedRegistry(t *testing.T) {
	t.Parallel()
	// A second handler on the same registry keeps the first's queue metrics.
	reg := prometheus.NewRegistry()
	mr := miniredis.RunT(t)
	for range 2 {
		_, closer, err := NewHTTPHandler(HTTPConfig{Redis: asynq.RedisClientOpt{Addr: mr.Addr()}, Registry: reg})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = closer.Close() })
	}
}

func TestFormatJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", ""},
		{"json", `{"brand_id":"120344","display_info":{"name":"全场满100立打8折"}}`,
			"{\n  \"brand_id\": \"120344\",\n  \"display_info\": {\n    \"name\": \"全场满100立打8折\"\n  }\n}"},
		{"html escapes undone", `{"image_url":"https://x/a?b=1\u0026c=\u003c2\u003e"}`,
			"{\n  \"image_url\": \"https://x/a?b=1&c=<2>\"\n}"},
		{"other escapes kept", `["a\\u0026b","\u00e9","\"q\""]`,
			"[\n  \"a\\\\u0026b\",\n  \"\\u00e9\",\n  \"\\\"q\\\"\"\n]"},
		{"text", "not json", "not json"},
		{"binary", "\x00\x01\xff", "non-printable bytes (3)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := formatJSON("coupon:update", []byte(tt.in)); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}
