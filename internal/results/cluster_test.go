package results

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/couponq/couponq/internal/redistest"
)

// Every script of the Store runs on a real Redis Cluster: those
// CrossSlotScripts names are refused by Redis for touching keys of more
// than one slot, the others work. The two lists must agree, so the check
// the worker and enqueue make at start (refuse a cluster while any script
// crosses slots) follows the scripts as they change. Run with -v to see
// Redis's refusals.
func TestStoreScriptsOnCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t)
	rdb := c.Client()
	s := NewStore(rdb)
	ctx := t.Context()
	const task, batch = "update:120344:34657_20250101_123456", "01JCLUSTERPROBE"
	id := Identity{TaskID: task, Op: "update", BrandID: "120344", ProductCouponID: "1000000013", OutRequestNo: "34657_20250101_123456", Batch: batch}
	ops := map[string]func(context.Context) error{
		"OpenBatch": func(ctx context.Context) error { return s.OpenBatch(ctx, batch) },
		"SealBatch": func(ctx context.Context) error { return s.SealBatch(ctx, batch) },
		"AcceptMany": func(ctx context.Context) error {
			_, err := s.AcceptMany(ctx, batch, Handoff{Run: "run", Queue: "default"}, []AcceptItem{{Identity: id, PayloadSHA256: "00"}})
			return err
		},
		"Unaccept": func(ctx context.Context) error { _, err := s.Unaccept(ctx, id, false); return err },
		"Begin":    func(ctx context.Context) error { _, _, err := s.Begin(ctx, id); return err },
		"Retrying": func(ctx context.Context) error { return s.Retrying(ctx, task, Attempt{Calls: 1, HTTPStatus: 500}) },
		"Finish": func(ctx context.Context) error {
			// A running result of a batch that exists: Finish reaches the
			// batch key it builds itself.
			if err := rdb.HSet(ctx, ResultKey(task), FieldStatus, "running", FieldBatch, batch).Err(); err != nil {
				t.Fatal(err)
			}
			if err := rdb.HSet(ctx, BatchKey(batch), BatchFieldTotal, "1", BatchFieldSealed, "1").Err(); err != nil {
				t.Fatal(err)
			}
			_, err := s.Finish(ctx, task, StatusSucceeded, Attempt{Calls: 1, HTTPStatus: 200})
			return err
		},
	}
	if len(ops) != len(scriptKeys) {
		t.Fatalf("the test runs %d operations, scriptKeys lists %d: add the new script to both", len(ops), len(scriptKeys))
	}
	var refused []string
	for _, name := range slices.Sorted(maps.Keys(ops)) {
		if _, ok := scriptKeys[name]; !ok {
			t.Fatalf("scriptKeys lacks %s", name)
		}
		err := ops[name](ctx)
		if err == nil {
			t.Logf("%s: ok on the cluster", name)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "CROSSSLOT") && !strings.Contains(msg, "do not hash to the same slot") && !strings.Contains(msg, "non local key") {
			t.Fatalf("%s failed for another reason than slots: %v", name, err)
		}
		t.Logf("%s: refused: %v", name, err)
		refused = append(refused, name)
	}
	if want := CrossSlotScripts(); !slices.Equal(refused, want) {
		t.Errorf("Redis Cluster refused %v; CrossSlotScripts says %v: update scriptKeys in slots.go", refused, want)
	}
}
