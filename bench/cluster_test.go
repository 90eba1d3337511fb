package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/internal/redisurl"
)

// BenchmarkClusterQueues measures what a Redis Cluster of three masters
// buys asynq's queue mechanics on this machine: n tasks (no-op handler,
// so Redis and asynq are all there is to it) enqueued by 32 goroutines,
// then processed by one asynq server of concurrency 64, with 1 queue and
// with 3 queues, on one redis-server and on the cluster. The 3 queues are
// named so that their hash tags ({queue}) lie on 3 different masters.
//
// Metrics: enqueue_tasks/s, process_tasks/s; busiest_master_cmds_%, the
// share of the Redis commands of the run (INFO commandstats) that the
// busiest master served, and busiest_master_mem_%, its share of the memory
// the enqueued tasks took (used_memory): 100 on one server, and on the
// cluster what one queue per slot means; busiest_master_cpu_µs/task, the
// CPU time (user + system) that master spent per task over the run,
// enqueue and processing: one queue cannot go faster than one core of its
// master divided by it.
//
//	go test ./bench/ -run '^$' -bench ClusterQueues -benchtime=1x -count=3
//
// COUPONQ_BENCH_QUEUE_TASKS sets n (default 20 000). Figures: bench/cluster.txt.
func BenchmarkClusterQueues(b *testing.B) {
	redistest.RequireCluster(b)
	n := 20_000
	if v, err := strconv.Atoi(os.Getenv("COUPONQ_BENCH_QUEUE_TASKS")); err == nil && v > 0 {
		n = v
	}
	for _, topology := range []string{"single", "cluster"} {
		for _, nq := range []int{1, 3} {
			b.Run(fmt.Sprintf("%s/queues=%d", topology, nq), func(b *testing.B) {
				for range b.N {
					b.StopTimer()
					var (
						url     string
						masters []string
						c       *redistest.Cluster
					)
					if topology == "single" {
						s := redistest.Start(b)
						url, masters = s.URL(), []string{s.Addr()}
					} else {
						c = redistest.StartCluster(b)
						url = c.URL()
						ms, err := c.Masters(context.Background())
						if err != nil {
							b.Fatal(err)
						}
						for _, m := range ms {
							masters = append(masters, m.Addr())
						}
					}
					conn, err := redisurl.Parse(url)
					if err != nil {
						b.Fatal(err)
					}
					queues := spreadQueues(b, nq, c)
					b.StartTimer()
					r := runQueues(b, conn, queues, masters, n)
					b.StopTimer()
					b.ReportMetric(r.enqueueRate, "enqueue_tasks/s")
					b.ReportMetric(r.processRate, "process_tasks/s")
					b.ReportMetric(r.busiestCmds, "busiest_master_cmds_%")
					b.ReportMetric(r.busiestMem, "busiest_master_mem_%")
					b.ReportMetric(r.busiestCPU, "busiest_master_cpu_µs/task")
				}
			})
		}
	}
}

// spreadQueues returns n queue names whose asynq hash tags ({queue}) lie
// on different masters of c; any n names when c is nil (one server).
func spreadQueues(b *testing.B, n int, c *redistest.Cluster) []string {
	b.Helper()
	var out []string
	seen := map[*redistest.Server]bool{}
	for i := 0; len(out) < n && i < 1000; i++ {
		q := fmt.Sprintf("bench%d", i)
		if c != nil {
			m, err := c.MasterOf(context.Background(), "asynq:{"+q+"}:pending")
			if err != nil {
				b.Fatal(err)
			}
			if seen[m] {
				continue
			}
			seen[m] = true
		}
		out = append(out, q)
	}
	if len(out) < n {
		b.Fatalf("found %d queues on different masters, want %d", len(out), n)
	}
	return out
}

type queueRun struct {
	enqueueRate, processRate float64
	busiestCmds, busiestMem  float64 // percent
	busiestCPU               float64 // µs per task
}

// runQueues enqueues n tasks round-robin over queues, then processes them
// all, and counts the commands each master served meanwhile.
func runQueues(b *testing.B, conn *redisurl.Conn, queues, masters []string, n int) queueRun {
	b.Helper()
	ctx := context.Background()
	before := commandCounts(b, masters)
	memBefore := memoryUsed(b, masters)
	cpuBefore := cpuUsed(b, masters)
	client := asynq.NewClient(conn)
	defer client.Close()
	start := time.Now()
	var (
		wg   sync.WaitGroup
		next atomic.Int64
		errs atomic.Int64
	)
	for range 32 {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				t := asynq.NewTask("bench:noop", []byte(`{}`))
				if _, err := client.EnqueueContext(ctx, t, asynq.Queue(queues[i%int64(len(queues))])); err != nil {
					errs.Add(1)
				}
			}
		})
	}
	wg.Wait()
	enqueued := time.Since(start)
	if e := errs.Load(); e > 0 {
		b.Fatalf("%d enqueues failed", e)
	}
	memShare := busiestShare(memBefore, memoryUsed(b, masters))

	var done atomic.Int64
	all := make(chan struct{})
	weights := map[string]int{}
	for _, q := range queues {
		weights[q] = 1
	}
	srv := asynq.NewServer(conn, asynq.Config{
		Concurrency: 64, Queues: weights, TaskCheckInterval: 10 * time.Millisecond,
		Logger: slogAsynq{slog.New(slog.DiscardHandler)}, LogLevel: asynq.ErrorLevel,
	})
	start = time.Now()
	if err := srv.Start(asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		if done.Add(1) == int64(n) {
			close(all)
		}
		return nil
	})); err != nil {
		b.Fatal(err)
	}
	select {
	case <-all:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d tasks processed in 5 min", done.Load(), n)
	}
	processed := time.Since(start)
	srv.Shutdown()
	_, cpu := busiestGrowth(cpuBefore, cpuUsed(b, masters))
	return queueRun{
		enqueueRate: float64(n) / enqueued.Seconds(),
		processRate: float64(n) / processed.Seconds(),
		busiestCmds: busiestShare(before, commandCounts(b, masters)),
		busiestMem:  memShare,
		busiestCPU:  cpu * 1e6 / float64(n),
	}
}

// commandCounts is the number of commands each master has processed: the
// sum of the calls in INFO commandstats, commands run by Lua scripts
// included.
func commandCounts(b *testing.B, masters []string) []float64 {
	b.Helper()
	return perMaster(b, masters, "commandstats", func(info string) float64 {
		var n float64
		for line := range strings.SplitSeq(info, "\n") {
			_, rest, ok := strings.Cut(line, "calls=")
			if !ok {
				continue
			}
			v, _, _ := strings.Cut(rest, ",")
			c, _ := strconv.ParseFloat(v, 64)
			n += c
		}
		return n
	})
}

// memoryUsed is used_memory (bytes) of each master.
func memoryUsed(b *testing.B, masters []string) []float64 {
	b.Helper()
	return perMaster(b, masters, "memory", func(info string) float64 {
		return infoFloat(info, "used_memory")
	})
}

// cpuUsed is the CPU time (s, user + system) each master has used.
func cpuUsed(b *testing.B, masters []string) []float64 {
	b.Helper()
	return perMaster(b, masters, "cpu", func(info string) float64 {
		return infoFloat(info, "used_cpu_user") + infoFloat(info, "used_cpu_sys")
	})
}

// infoFloat is the number field holds in an INFO answer (0 if none).
func infoFloat(info, field string) float64 {
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// perMaster reads one INFO section of each master and parses it.
func perMaster(b *testing.B, masters []string, section string, parse func(string) float64) []float64 {
	b.Helper()
	out := make([]float64, len(masters))
	for i, addr := range masters {
		rc := redis.NewClient(&redis.Options{Addr: addr})
		info, err := rc.Info(context.Background(), section).Result()
		rc.Close()
		if err != nil {
			b.Fatal(err)
		}
		out[i] = parse(info)
	}
	return out
}

// busiestShare is the largest part, in percent, of the growth from before
// to after that one master had.
func busiestShare(before, after []float64) float64 {
	total, busiest := busiestGrowth(before, after)
	if total == 0 {
		return 0
	}
	return 100 * busiest / total
}

// busiestGrowth is the growth from before to after of all masters
// together and of the one that grew most.
func busiestGrowth(before, after []float64) (total, busiest float64) {
	for i := range before {
		d := max(after[i]-before[i], 0)
		total += d
		busiest = max(busiest, d)
	}
	return total, busiest
}

// slogAsynq is asynq's logger over slog.
type slogAsynq struct{ l *slog.Logger }

func (a slogAsynq) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a slogAsynq) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a slogAsynq) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a slogAsynq) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a slogAsynq) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)) }
