package results

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/redistest"
)

// ranScripts is a go-redis hook that records the SHA-1 of every script
// Redis ran without error (EVAL, EVALSHA, in pipelines too).
type ranScripts struct {
	mu  sync.Mutex
	ran map[string]bool
}

func (h *ranScripts) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *ranScripts) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		h.record(cmd)
		return err
	}
}

func (h *ranScripts) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			h.record(c)
		}
		return err
	}
}

func (h *ranScripts) record(cmd redis.Cmder) {
	if cmd.Err() != nil && cmd.Err() != redis.Nil {
		return
	}
	args := cmd.Args()
	if len(args) < 2 {
		return
	}
	s, _ := args[1].(string)
	switch strings.ToLower(cmd.Name()) {
	case "evalsha":
	case "eval":
		sum := sha1.Sum([]byte(s))
		s = hex.EncodeToString(sum[:])
	default:
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ran[s] = true
}

// Every script of the Store runs on a real Redis Cluster without CROSSSLOT:
// the operations below, the whole life of a batch (open, order, accept,
// begin, retry, finish, seal, couponq retry and cancel, unaccept, repair),
// make Redis run each script scriptKeys lists, which the hook checks; and
// the batch's counters equal a recount of its results at the end.
func TestStoreScriptsOnCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	rdb := c.Client()
	hook := &ranScripts{ran: map[string]bool{}}
	rdb.AddHook(hook)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := NewStore(rdb, WithClock(func() time.Time { return now }))
	ctx := t.Context()
	const batch = "01JCLUSTERPROBE"
	id := func(n string) Identity {
		return Identity{TaskID: "update:120344:" + n, Op: "update", BrandID: "120344", ProductCouponID: "1000000013", OutRequestNo: n, Batch: batch}
	}
	t1, t2, t3 := id("34657_20250101_000001"), id("34657_20250101_000002"), id("34657_20250101_000003")
	entry := func(i Identity) OrderEntry {
		return OrderEntry{TaskID: i.TaskID, Op: i.Op, BrandID: i.BrandID, ProductCouponID: i.ProductCouponID}
	}
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s on the cluster: %v", what, err)
		}
	}
	must("OpenBatch", s.OpenBatch(ctx, batch))
	must("RegisterOrder", s.RegisterOrder(ctx, []OrderEntry{entry(t1), entry(t2), entry(t3)}, false))
	item := func(i Identity) AcceptItem {
		return AcceptItem{Identity: i, PayloadSHA256: "sha-" + i.TaskID, Payload: []byte("{}")}
	}
	h := Handoff{Run: "run", Queue: "default", Timeout: time.Minute}
	outs, err := s.AcceptMany(ctx, batch, h, []AcceptItem{item(t1), item(t2), item(t3), item(t1)})
	must("AcceptMany", err)
	if want := []AcceptOutcome{Accepted, Accepted, Accepted, Duplicate}; !slices.Equal(outs, want) {
		t.Fatalf("AcceptMany = %v, want %v", outs, want)
	}
	chk, err := s.CheckOrder(ctx, entry(t1))
	must("CheckOrder", err)
	if !chk.Go {
		t.Fatalf("CheckOrder = %+v", chk)
	}
	st, _, err := s.Begin(ctx, t1)
	must("Begin", err)
	if st != StatusRunning {
		t.Fatalf("Begin = %v", st)
	}
	_, err = s.FixRequest(ctx, t1.TaskID, []byte(`{"x":1}`))
	must("FixRequest", err)
	must("MarkUnchanged", s.MarkUnchanged(ctx, t1.TaskID))
	must("Retrying", s.Retrying(ctx, t1.TaskID, Attempt{Calls: 1, HTTPStatus: 500}))
	_, err = s.Finish(ctx, t1.TaskID, StatusFailed, Attempt{Calls: 1, HTTPStatus: 400, ErrorCode: "PARAM_ERROR"})
	must("Finish", err)
	_, err = s.ReleaseOrder(ctx, []OrderEntry{entry(t1)})
	must("ReleaseOrder", err)
	_, err = s.DropFromOrder(ctx, entry(t3), t2.TaskID, "2")
	must("DropFromOrder", err)
	undone, err := s.Unaccept(ctx, t2, true)
	must("Unaccept", err)
	if !undone {
		t.Fatal("Unaccept left a queued result")
	}
	must("SealBatch", s.SealBatch(ctx, batch))
	rq, err := s.Requeue(ctx, []string{t1.TaskID}, "")
	must("Requeue", err)
	if !rq[0].Requeued {
		t.Fatalf("Requeue = %+v", rq)
	}
	cb, err := s.CancelBatch(ctx, batch)
	must("CancelBatch", err)
	if cb != BatchCanceled {
		t.Fatalf("CancelBatch = %v", cb)
	}
	cu, err := s.CancelUnstarted(ctx, []string{t1.TaskID, t3.TaskID})
	must("CancelUnstarted", err)
	if !slices.Equal(cu, []int{CancelDone, CancelDone}) {
		t.Fatalf("CancelUnstarted = %v", cu)
	}
	_, err = s.RepairBatch(ctx, batch)
	must("RepairBatch", err)
	must("Settle", s.Settle(ctx, []string{t1.TaskID, t3.TaskID}))

	byHash := map[string]string{}
	for name, sc := range scriptNames {
		byHash[sc.Hash()] = name
	}
	for _, name := range slices.Sorted(maps.Keys(scriptNames)) {
		if _, ok := scriptKeys[name]; !ok {
			t.Errorf("scriptKeys lacks %s", name)
		}
		if !hook.ran[scriptNames[name].Hash()] {
			t.Errorf("script %s never ran on the cluster: add an operation that runs it", name)
		}
	}
	for name := range scriptKeys {
		if _, ok := scriptNames[name]; !ok {
			t.Errorf("scriptKeys lists %s, which is no script", name)
		}
	}
	if cs := CrossSlotScripts(); len(cs) != 0 {
		t.Errorf("CrossSlotScripts = %v", cs)
	}
	got, want := recount(t, rdb, batch, t1.TaskID, t2.TaskID, t3.TaskID)
	if got != want {
		t.Errorf("batch counters %+v, recount of the results %+v", got, want)
	}
	if want.Total != 2 || want.Canceled != 2 || got.Duplicates != 2 || !got.Finished {
		t.Errorf("batch = %+v", got)
	}
}
