package worker

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/hibiken/asynq"
)

// slogAdapter is asynq.Logger over slog.
type slogAdapter struct{ l *slog.Logger }

var _ asynq.Logger = slogAdapter{}

func (a slogAdapter) log(level slog.Level, args []any) {
	ctx := context.Background()
	if a.l.Enabled(ctx, level) {
		a.l.Log(ctx, level, fmt.Sprint(args...))
	}
}

func (a slogAdapter) Debug(args ...any) { a.log(slog.LevelDebug, args) }
func (a slogAdapter) Info(args ...any)  { a.log(slog.LevelInfo, args) }
func (a slogAdapter) Warn(args ...any)  { a.log(slog.LevelWarn, args) }
func (a slogAdapter) Error(args ...any) { a.log(slog.LevelError, args) }

// Fatal logs at error level and exits, as asynq.Logger documents (asynq
// v0.26 never calls it).
func (a slogAdapter) Fatal(args ...any) {
	a.log(slog.LevelError, args)
	os.Exit(1)
}

// asynqLogLevel is the lowest asynq level l logs.
func asynqLogLevel(l *slog.Logger) asynq.LogLevel {
	ctx := context.Background()
	switch {
	case l.Enabled(ctx, slog.LevelDebug):
		return asynq.DebugLevel
	case l.Enabled(ctx, slog.LevelInfo):
		return asynq.InfoLevel
	case l.Enabled(ctx, slog.LevelWarn):
		return asynq.WarnLevel
	default:
		return asynq.ErrorLevel
	}
}
