//go:build tools

// Package tools pins the modules the project is built from while the
// packages that import them are written in parallel. Remove once every one
// is imported for real.
package tools

import (
	_ "github.com/alicebob/miniredis/v2"
	_ "github.com/cenkalti/backoff/v4"
	_ "github.com/go-redis/redis_rate/v10"
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/hibiken/asynq"
	_ "github.com/hibiken/asynqmon"
	_ "github.com/lmittmann/tint"
	_ "github.com/oklog/ulid/v2"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/schollz/progressbar/v3"
	_ "github.com/spf13/cobra"
	_ "golang.org/x/term"
)
