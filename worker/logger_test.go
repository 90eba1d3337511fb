package worker

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
)

func TestSlogAdapter(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a := slogAdapter{l}
	a.Debug("hidden")
	a.Info("processing ", 3, " tasks")
	a.Warn("slow")
	a.Error("broken")
	out := buf.String()
	for _, want := range []string{`level=INFO msg="processing 3 tasks"`, "level=WARN msg=slow", "level=ERROR msg=broken"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hidden") {
		t.Errorf("debug line logged at info level:\n%s", out)
	}
}

func TestAsynqLogLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		level slog.Level
		want  asynq.LogLevel
	}{
		{slog.LevelDebug, asynq.DebugLevel},
		{slog.LevelInfo, asynq.InfoLevel},
		{slog.LevelWarn, asynq.WarnLevel},
		{slog.LevelError, asynq.ErrorLevel},
	}
	for _, tt := range tests {
		l := slog.New(slog.NewTextHandler(&bytes.Buffer{}, &slog.HandlerOptions{Level: tt.level}))
		if got := asynqLogLevel(l); got != tt.want {
			t.Errorf("asynqLogLevel(%v) = %v, want %v", tt.level, got, tt.want)
		}
	}
}

func TestHealthCheckFeedsReady(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := b.w.Ready(t.Context()); !errors.Is(err, errNotRunning) {
		t.Errorf("Ready before Run = %v", err)
	}
	// As Run leaves it once serving.
	b.w.state.update(func(s *runState) { s.started, s.serving = true, true })
	b.w.gate.arm()
	b.w.gate.set(true, nil)
	b.w.healthCheck(errors.New("dial tcp: connection refused"))
	if err := b.w.Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Ready after a failed check = %v", err)
	}
	b.w.healthCheck(nil)
	if err := b.w.Ready(t.Context()); err != nil {
		t.Errorf("Ready after a passing check = %v", err)
	}
}
