// Command couponq applies bulk changes to WeChat Pay product coupons
// reliably: producers enqueue changes into Redis, workers call the signed
// WeChat Pay API v3 with retries and backoff, and every outcome lands in a
// Redis hash that producers poll.
//
//	couponq worker    run the asynq worker (until SIGINT/SIGTERM)
//	couponq enqueue   validate a change file and enqueue it as a batch
//	couponq status    show a batch's or a task's results (--wait to follow)
//	couponq retry     run a batch's (or a task's) failed and canceled tasks again
//	couponq cancel    cancel a batch: its tasks not started never start
//	couponq get       query one coupon synchronously
//	couponq mock      run the fake WeChat Pay on a loopback port
//	couponq demo      the whole pipeline on embedded defaults
//
// Exit status: 0 success; 1 a runtime failure, or status --wait on a batch
// with failures; 2 bad usage or invalid input.
package main

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// quietRedisLogOnce silences go-redis' own log: it prints a line per
// failed dial, while every command reports a Redis error itself, once
// (status --wait as one warning). It is process-wide, so set once.
var quietRedisLogOnce sync.Once

// quietRedisLog drops go-redis' internal log lines.
type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}
