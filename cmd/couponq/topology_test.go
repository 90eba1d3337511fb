package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// urlBundle is realBundle for any Redis URL (a sentinel group, a cluster).
func urlBundle(t *testing.T, url string, coupons int) *bundle {
	t.Helper()
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithRepeatAnswer(wechatpaytest.RepeatError))
	dir := t.TempDir()
	env, err := fake.WriteEnv(dir)
	if err != nil {
		t.Fatal(err)
	}
	env["COUPONQ_REDIS_URL"] = url
	env["COUPONQ_HTTP_ADDR"] = ""
	return &bundle{fake: fake, env: env, ids: fake.SeedCoupons(fake.BrandID(), coupons), dir: dir}
}

// enqueue and worker say which topology they found; on a sentinel URL the
// whole pipeline runs (enqueue, worker, status --wait).
func TestTopologyLineSentinel(t *testing.T) {
	t.Parallel()
	g := redistest.StartSentinel(t)
	b := urlBundle(t, g.URL(), 3)
	primary, err := g.Primary(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := "sentinel master " + redistest.SentinelMaster + " at " + primary.Addr()
	f := b.writeFile(t, "changes.jsonl", changeLines(b, 3, "sent"))
	enqueueAndFinish(t, b, f, want)
}

func TestTopologyLineSingle(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	b := realBundle(t, srv, 3)
	f := b.writeFile(t, "changes.jsonl", changeLines(b, 3, "single"))
	r := b.run(t, "", "enqueue", "--file", f)
	if want := "redis: single Redis at " + srv.Addr() + "\n"; r.code != 0 || !strings.Contains(r.stderr, want) {
		t.Errorf("enqueue: exit %d, stderr lacks %q:\n%s", r.code, want, r.stderr)
	}
}

// On a Redis Cluster the whole pipeline runs (enqueue, worker, status
// --wait), each naming the topology; a redis:// URL naming a cluster node
// is refused at start with one line naming the URL to use, and writes
// nothing.
func TestClusterAtStart(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	b := urlBundle(t, c.URL(), 3)
	f := b.writeFile(t, "changes.jsonl", changeLines(b, 3, "clu"))
	r := b.run(t, "", "enqueue", "--file", f, "--redis", "redis://"+c.Addrs()[0])
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if strings.Contains(l, "is a Redis Cluster node") {
			lines = append(lines, l)
		}
	}
	if r.code != 1 || r.stdout != "" || len(lines) != 1 ||
		!strings.Contains(lines[0], "use redis-cluster://"+c.Addrs()[0]) || !strings.Contains(lines[0], "nothing was enqueued") {
		t.Errorf("enqueue to one node: exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
	}
	n, err := c.DBSize(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d keys written on the cluster", n)
	}

	enqueueAndFinish(t, b, f, "cluster with 3 masters")
}

// enqueueAndFinish enqueues file f, which must print the topology line
// want, then runs a worker until status --wait sees the batch done, and
// checks that the worker logged the same topology.
func enqueueAndFinish(t *testing.T, b *bundle, f, want string) {
	t.Helper()
	r := b.run(t, "", "enqueue", "--file", f)
	if r.code != 0 || !strings.Contains(r.stderr, "redis: "+want+"\n") {
		t.Fatalf("enqueue: exit %d, stderr lacks %q:\n%s", r.code, "redis: "+want, r.stderr)
	}
	batch := strings.TrimSpace(r.stdout)
	w := b.startProc(t, "worker", "--rate", "0", "--http", "", "--log-format", "text")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	r = runWith(ctx, b.getenv, "", "status", "--batch", batch, "--wait", "--interval", "100ms")
	if r.code != 0 {
		t.Errorf("status --wait: exit %d: %s", r.code, r.stderr)
	}
	if !strings.Contains(w.stderr.String(), "redis topology: "+want) {
		t.Errorf("worker log lacks %q:\n%s", "redis topology: "+want, w.stderr.String())
	}
}
