package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

// DefaultReadyTimeout bounds the checks behind /readyz.
const DefaultReadyTimeout = 2 * time.Second

// MonitoringPath is where asynqmon is served.
const MonitoringPath = "/monitoring"

// HTTPConfig configures the worker's HTTP endpoints (NewHTTPHandler).
type HTTPConfig struct {
	// Redis is the asynq Redis connection (a *redisurl.Conn). Required.
	Redis asynq.RedisConnOpt
	// Registry is served on /metrics. NewHTTPHandler adds asynq's queue
	// metrics to it (NewQueueCollector) unless some are registered already.
	// nil means a fresh registry with the queue metrics only.
	Registry *prometheus.Registry
	// MonitoringAuth, "user:pass", puts /monitoring/ behind HTTP basic
	// authentication, failures throttled per client address; "" leaves it
	// open, but without task payloads and results, the Redis INFO, the
	// server list and the scheduler entries (see ListenerWarnings).
	MonitoringAuth string
	// ReadWrite lets asynqmon change queues and tasks (pause, delete, run…);
	// by default it is read-only and refuses such requests with 405.
	ReadWrite bool
	// Ready, when set, is consulted by /readyz after Redis answered PING:
	// for instance Worker.Ready (taking tasks, credentials accepted, Redis
	// not evicting, not draining).
	Ready func(ctx context.Context) error
	// ReadyTimeout bounds the /readyz checks (default DefaultReadyTimeout):
	// past it /readyz answers 503 whatever the checks still wait for.
	ReadyTimeout time.Duration

	// now is the clock of the login throttle (tests); nil is time.Now.
	now func() time.Time
}

// NewHTTPHandler returns the handler of the worker's HTTP listener:
//
//   - /metrics: Prometheus exposition of cfg.Registry;
//   - /healthz: 200 "ok" while the process runs;
//   - /readyz: 200 "ok" when Redis answers PING and cfg.Ready returns nil
//     within cfg.ReadyTimeout, 503 with the reason otherwise;
//   - /monitoring/: asynqmon, read-only unless cfg.ReadWrite, behind basic
//     authentication when cfg.MonitoringAuth is set, showing payloads and
//     results as indented JSON.
//
// The io.Closer releases asynqmon and the Redis connections.
func NewHTTPHandler(cfg HTTPConfig) (http.Handler, io.Closer, error) {
	if cfg.Redis == nil {
		return nil, nil, errors.New("worker: HTTPConfig.Redis is required")
	}
	user, pass, err := parseMonitoringAuth(cfg.MonitoringAuth)
	if err != nil {
		return nil, nil, err
	}
	rc, ok := cfg.Redis.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, nil, fmt.Errorf("worker: HTTPConfig.Redis: unsupported connection type %T", cfg.Redis)
	}
	timeout := cfg.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}

	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	closers := []func() error{rc.Close}
	queues := NewQueueCollector(asynq.NewInspectorFromRedisClient(rc))
	if err := reg.Register(queues); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			_ = rc.Close()
			return nil, nil, fmt.Errorf("worker: registering queue metrics: %w", err)
		}
	} else {
		// Unregister first, so no scrape reaches a closed client.
		closers = append([]func() error{func() error { reg.Unregister(queues); return nil }}, closers...)
	}

	// Without authentication anyone who reaches the listener sees the
	// view: the change data, results and Redis details stay out of it.
	format := formatJSON
	if user == "" {
		format = hiddenPayload
	}
	mon := asynqmon.New(asynqmon.Options{
		RootPath:         MonitoringPath,
		RedisConnOpt:     cfg.Redis,
		ReadOnly:         !cfg.ReadWrite,
		PayloadFormatter: asynqmon.PayloadFormatterFunc(format),
		ResultFormatter:  asynqmon.ResultFormatterFunc(format),
	})
	closers = append(closers, mon.Close)

	var monitoring http.Handler = mon
	if user != "" {
		monitoring = basicAuth(user, pass, newAuthThrottle(cfg.now), mon)
	} else {
		monitoring = withoutRedisDetails(mon)
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	// ready runs the checks, naming in stage the one it is in.
	ready := func(ctx context.Context, stage *atomic.Value) error {
		stage.Store("redis")
		if err := rc.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		if cfg.Ready != nil {
			stage.Store("worker")
			return cfg.Ready(ctx)
		}
		return nil
	}
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		// The checks run aside: go-redis bounds a read by its own
		// ReadTimeout, not by ctx, so a paused Redis would hold the answer
		// past the deadline.
		done := make(chan error, 1)
		var stage atomic.Value
		stage.Store("redis")
		go func() { done <- ready(ctx, &stage) }()
		select {
		case err := <-done:
			if err != nil {
				writeText(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
				return
			}
			writeText(w, http.StatusOK, "ok")
		case <-ctx.Done():
			writeText(w, http.StatusServiceUnavailable, fmt.Sprintf("not ready: %s: no answer within %v", stage.Load(), timeout))
		}
	})
	mux.Handle(MonitoringPath+"/", monitoring)

	return mux, closerFunc(func() error {
		var errs []error
		for _, c := range closers {
			errs = append(errs, c())
		}
		return errors.Join(errs...)
	}), nil
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func writeText(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// parseMonitoringAuth splits "user:pass"; "" means no authentication. The
// error never repeats the value, which holds a password.
func parseMonitoringAuth(s string) (user, pass string, err error) {
	if s == "" {
		return "", "", nil
	}
	user, pass, ok := strings.Cut(s, ":")
	if !ok || user == "" || pass == "" {
		return "", "", &ConfigError{Struct: "HTTPConfig", Field: "MonitoringAuth", Problem: `must be "user:pass" with a non-empty user and password`}
	}
	return user, pass, nil
}

// unauthenticatedHidden are the asynqmon API paths left out of the view
// without authentication: the Redis INFO (configuration, clients, memory),
// the servers (hosts, PIDs, the payloads in hand) and the scheduler entries
// (payloads).
var unauthenticatedHidden = []string{"/api/redis_info", "/api/servers", "/api/scheduler_entries"}

// withoutRedisDetails refuses the unauthenticatedHidden paths with 403.
func withoutRedisDetails(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, MonitoringPath)
		for _, h := range unauthenticatedHidden {
			if p == h || strings.HasPrefix(p, h+"/") {
				writeText(w, http.StatusForbidden, "forbidden: the Redis INFO, servers and scheduler entries are shown with monitoring authentication only (--monitoring-auth)")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// hiddenPayload stands for a payload or result in the unauthenticated view.
func hiddenPayload(_ string, b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return fmt.Sprintf("(%d bytes, shown with monitoring authentication only)", len(b))
}

// ListenerWarnings says what the worker's HTTP listener on addr exposes
// beyond this host, one warning a line, for the log at start: /monitoring/
// without authentication (queues, task IDs and counts to anyone who reaches
// it), or basic authentication over plain HTTP. None on a loopback address.
func ListenerWarnings(addr net.Addr, monitoringAuth bool) []string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || tcp.IP.IsLoopback() {
		return nil
	}
	if !monitoringAuth {
		return []string{fmt.Sprintf("the HTTP listener %s is reachable from other hosts and /monitoring/ has no authentication: "+
			"anyone who reaches it sees the queues and task IDs (payloads, results and Redis details stay hidden); "+
			"set --monitoring-auth (COUPONQ_MONITORING_AUTH or --monitoring-auth-file), or listen on 127.0.0.1", addr)}
	}
	return []string{fmt.Sprintf("the HTTP listener %s is reachable from other hosts and serves basic authentication over plain HTTP: "+
		"put a TLS proxy in front so the password does not cross the network in clear", addr)}
}

// formatJSON shows a task payload or result in asynqmon: JSON indented, with
// the characters Go's encoder escapes for HTML (<, >, &) shown as they are;
// other printable text unchanged; anything else summarised.
func formatJSON(_ string, b []byte) string {
	if len(b) == 0 {
		return ""
	}
	var buf bytes.Buffer
	if json.Valid(b) && json.Indent(&buf, b, "", "  ") == nil {
		return string(unescapeHTML(buf.Bytes()))
	}
	if printable(b) {
		return string(b)
	}
	return fmt.Sprintf("non-printable bytes (%d)", len(b))
}

// unescapeHTML turns the \u003c, \u003e and \u0026 escapes of valid JSON back
// into <, > and &, leaving every other escape (\\ included) as it is.
func unescapeHTML(b []byte) []byte {
	if !bytes.Contains(b, []byte(`\u00`)) {
		return b
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 == len(b) {
			out = append(out, b[i])
			continue
		}
		if b[i+1] == 'u' && i+6 <= len(b) {
			switch strings.ToLower(string(b[i+2 : i+6])) {
			case "003c":
				out = append(out, '<')
				i += 5
				continue
			case "003e":
				out = append(out, '>')
				i += 5
				continue
			case "0026":
				out = append(out, '&')
				i += 5
				continue
			}
		}
		out = append(out, b[i], b[i+1]) // any other escape, kept whole
		i++
	}
	return out
}

func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			return false
		}
	}
	return true
}
