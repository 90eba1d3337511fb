package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/couponq/couponq/internal/redisurl"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
	"github.com/couponq/couponq/worker"
)

type demoConfig struct {
	Count       int
	Concurrency int
	Faults      string
	Keep        bool
	HTTPAddr    string
	Seed        uint64
	Timeout     time.Duration
}

// demoFaults is the demo's default fault mix.
const demoFaults = "500=0.05,503=0.02,429=0.05,drop=0.03,badsig=0.02,signtest=0.01"

func newDemoCmd(e *env) *cobra.Command {
	var c demoConfig
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run the whole pipeline in one process on embedded defaults",
		Long: `Runs everything in one process, with nothing to install: an embedded Redis
(miniredis), the fake WeChat Pay (wechatpaytest) with seeded coupons and injected
faults (500s, 503s, 429s, connections dropped after the change was applied, bad
signatures), a worker, and a sample batch of mixed changes (updates, deactivations,
queries, and a few changes to unknown coupons that must fail). It shows progress
and ends with a summary: succeeded, failed by code, retries, time, and the fake's
proof that every change was applied exactly once.

With --keep it stays up afterwards, serving /metrics and /monitoring/ (asynqmon)
on --http, until interrupted.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.Count < 1 || c.Concurrency < 1 {
				return usageErrorf("--count and --concurrency must be at least 1")
			}
			return runDemo(cmd.Context(), e, &c)
		},
	}
	f := cmd.Flags()
	f.IntVar(&c.Count, "count", 300, "changes in the sample batch")
	f.IntVar(&c.Concurrency, "concurrency", 16, "worker concurrency")
	f.StringVar(&c.Faults, "faults", demoFaults, "injected faults, as couponq mock --faults; default "+
		strings.ReplaceAll(demoFaults, ",", ", "))
	// The default is in the usage, broken at its commas to fit 80 columns.
	f.Lookup("faults").DefValue = ""
	f.BoolVar(&c.Keep, "keep", false, "stay up afterwards with asynqmon and metrics served on --http")
	f.StringVar(&c.HTTPAddr, "http", "127.0.0.1:9090", "address of /metrics, /healthz, /readyz, /monitoring/ with --keep")
	f.Uint64Var(&c.Seed, "seed", 1, "seed of the sample batch and the fault draws")
	f.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "give up if the batch is not done by then")
	return cmd
}

// demoChanges is a mixed sample: 55% updates, 25% deactivations, 15% gets
// and 5% changes to coupons that do not exist (permanent 404s).
func demoChanges(ids []string, brand string, seed uint64) []tasks.Change {
	rng := rand.New(rand.NewPCG(seed, 42))
	names := []string{"全场满100减20", "新客立减10元", "周末8折券", "会员专享9折", "早餐套餐券"}
	out := make([]tasks.Change, 0, len(ids))
	for i, id := range ids {
		key := fmt.Sprintf("demo%06d", i)
		p := rng.IntN(100)
		switch {
		case p < 5:
			out = append(out, tasks.Change{Op: tasks.OpUpdate, ProductCouponID: fmt.Sprintf("99%08d", i), BrandID: brand,
				OutRequestNo: key, DisplayInfo: &wechatpay.DisplayInfo{Name: names[i%len(names)]}})
		case p < 60:
			out = append(out, tasks.Change{Op: tasks.OpUpdate, ProductCouponID: id, BrandID: brand, OutRequestNo: key,
				DisplayInfo: &wechatpay.DisplayInfo{Name: names[i%len(names)], OriginalPrice: int64(1000 + 100*rng.IntN(90))}})
		case p < 85:
			out = append(out, tasks.Change{Op: tasks.OpDeactivate, ProductCouponID: id, BrandID: brand, OutRequestNo: key,
				DeactivateReason: "促销结束,批量下架"})
		default:
			out = append(out, tasks.Change{Op: tasks.OpGet, ProductCouponID: id, BrandID: brand, OutRequestNo: key})
		}
	}
	return out
}

func runDemo(ctx context.Context, e *env, c *demoConfig) error {
	faults, err := parseFaults(c.Faults)
	if err != nil {
		return err
	}
	start := time.Now()
	mr, err := miniredis.Run()
	if err != nil {
		return fmt.Errorf("start miniredis: %w", err)
	}
	defer mr.Close()
	rc, err := redisurl.Parse("redis://" + mr.Addr() + "/0")
	if err != nil {
		return err
	}
	fake := wechatpaytest.NewServer(nil, wechatpaytest.WithSeed(c.Seed), wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	defer fake.Close()
	fake.SetFaults(faults)
	brand := fake.BrandID()
	ids := fake.SeedCoupons(brand, c.Count)
	api := fake.Client()
	defer api.Close()

	log := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	reg := prometheus.NewRegistry()
	w, err := worker.New(worker.Config{
		Redis: rc, Concurrency: c.Concurrency, MaxRetry: 8,
		RetryBase: 200 * time.Millisecond, RetryCap: 2 * time.Second,
		Identity: api.Identity(), Logger: log, Metrics: worker.NewMetrics(reg),
	}, api)
	if err != nil {
		return err
	}
	wctx, stopWorker := context.WithCancel(ctx)
	werr := make(chan error, 1)
	go func() { werr <- w.Run(wctx) }()
	defer func() { stopWorker(); <-werr; w.Close() }()

	fmt.Fprintf(e.stderr, "couponq demo: embedded Redis %s, fake WeChat Pay %s, %d coupons, faults %s\n",
		mr.Addr(), fake.URL, len(ids), c.Faults)
	rdb := rc.NewClient()
	defer rdb.Close()
	p, err := tasks.NewProducer(rdb)
	if err != nil {
		return err
	}
	defer p.Close()
	changes := demoChanges(ids, brand, c.Seed)
	prog := newProgress(e.stderr, "enqueue", int64(len(changes)))
	rep, err := p.EnqueueBatch(ctx, tasks.Changes(changes), tasks.BatchOptions{
		OnProgress: func(bp tasks.BatchProgress) { prog.set(int64(bp.Settled), "") },
	})
	prog.finish()
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "batch %s: %d tasks enqueued\n", rep.BatchID, rep.Total)

	wait, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	wprog := newProgress(e.stderr, "apply", int64(rep.Total))
	st, err := tasks.NewReader(rdb).Wait(wait, rep.BatchID, 100*time.Millisecond, func(s *tasks.BatchStatus) {
		wprog.set(int64(s.Succeeded+s.Failed), fmt.Sprintf("(%d failed)", s.Failed))
	})
	wprog.finish()
	if err != nil {
		return fmt.Errorf("waiting for batch %s: %w", rep.BatchID, err)
	}
	if err := demoSummary(ctx, e, rdb, fake, rep.BatchID, st, time.Since(start)); err != nil {
		return err
	}
	if !c.Keep {
		return nil
	}
	h, closer, err := worker.NewHTTPHandler(worker.HTTPConfig{Redis: rc, Registry: reg, Ready: api.Ready})
	if err != nil {
		return err
	}
	defer closer.Close()
	ln, err := net.Listen("tcp", c.HTTPAddr)
	if err != nil {
		return usageErrorf("--http %s: %v", c.HTTPAddr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	if len(worker.ListenerWarnings(ln.Addr(), false)) > 0 {
		fmt.Fprintf(e.stderr, "warning: the demo's HTTP listener %s is reachable from other hosts and has no authentication\n", ln.Addr())
	}
	fmt.Fprintf(e.stderr, "\nserving http://%s/monitoring/ (no auth: payloads hidden) and http://%s/metrics — Ctrl-C to stop\n", ln.Addr(), ln.Addr())
	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer scancel()
	return srv.Shutdown(sctx)
}

// demoSummary prints the outcome table and checks exactly-once effects.
func demoSummary(ctx context.Context, e *env, rdb redis.UniversalClient, fake *wechatpaytest.Server, batch string, st *tasks.BatchStatus, elapsed time.Duration) error {
	r := tasks.NewReader(rdb)
	ids, err := r.BatchTaskIDs(ctx, batch)
	if err != nil {
		return err
	}
	byCode := map[string]int{}
	attempts, writes, twice, missing := 0, 0, 0, 0
	for _, id := range ids {
		res, err := r.Result(ctx, id)
		if err != nil {
			return err
		}
		attempts += res.Attempts
		if res.Status == tasks.StatusFailed {
			byCode[fmt.Sprintf("%d %s", res.HTTPStatus, res.ErrorCode)]++
		}
		if res.Op == tasks.OpGet {
			continue
		}
		n := fake.AppliedCount(res.OutRequestNo)
		if n > 1 {
			twice++
		}
		if res.Status == tasks.StatusSucceeded && !res.Unchanged { // an unchanged update is not sent
			writes++
			if n != 1 {
				missing++
			}
		}
	}
	faults := map[string]int{}
	for _, q := range fake.Requests() {
		if q.Fault != "" {
			faults[q.Fault]++
		}
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nbatch\t%s\n", batch)
	fmt.Fprintf(tw, "tasks\t%d\n", st.Total)
	fmt.Fprintf(tw, "succeeded\t%d\n", st.Succeeded)
	fmt.Fprintf(tw, "failed\t%d\n", st.Failed)
	for _, k := range sortedKeys(byCode) {
		fmt.Fprintf(tw, "  failed %s\t%d\n", k, byCode[k])
	}
	fmt.Fprintf(tw, "API calls\t%d (%d beyond one a task: each update reads its coupon first; retries; reconciliations)\n", attempts, attempts-len(ids))
	for _, k := range sortedKeys(faults) {
		fmt.Fprintf(tw, "  injected %s\t%d\n", k, faults[k])
	}
	fmt.Fprintf(tw, "time\t%s\n", elapsed.Round(time.Millisecond))
	verdict := "yes"
	if twice > 0 || missing > 0 {
		verdict = fmt.Sprintf("NO: %d applied twice, %d succeeded writes not applied", twice, missing)
	}
	fmt.Fprintf(tw, "every succeeded write applied exactly once\t%s (%d writes)\n", verdict, writes)
	if err := tw.Flush(); err != nil {
		return err
	}
	if twice > 0 || missing > 0 {
		return errors.New("exactly-once check failed")
	}
	return nil
}

func sortedKeys(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
