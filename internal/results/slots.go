package results

import (
	"slices"

	"github.com/couponq/couponq/internal/redisurl"
)

// scriptKeys lists, for each Lua script of the Store (by the name newScript
// records it under), the keys one call of it touches for task t of batch b
// on coupon c of brand r: those passed in KEYS. No script builds a key
// itself. Redis Cluster, and the proxies of managed cluster editions,
// refuse a script whose keys lie in more than one hash slot (CROSSSLOT):
// each script touches one SPEC key and, at most, couponq's own keys in
// its slot (see batchCountedKey) or one coupon's order keys, which share
// a hash tag.
//
// It must follow the scripts: TestStoreScriptsOnCluster runs every one of
// them on a real cluster and fails when a script is missing here.
var scriptKeys = map[string]func(t, b, r, c string) []string{
	"OpenBatch":   func(_, b, _, _ string) []string { return batchScriptKeys(b) },
	"SealBatch":   func(_, b, _, _ string) []string { return batchScriptKeys(b) },
	"ApplyBatch":  func(_, b, _, _ string) []string { return batchScriptKeys(b) },
	"CancelBatch": func(_, b, _, _ string) []string { return batchScriptKeys(b) },
	"AddTasks":    func(_, b, _, _ string) []string { return []string{BatchTasksKey(b)} },
	"Accept":      func(t, _, _, _ string) []string { return []string{ResultKey(t)} },
	"Unaccept":    func(t, _, _, _ string) []string { return []string{ResultKey(t)} },
	"Begin":       func(t, _, _, _ string) []string { return []string{ResultKey(t)} },
	"Retrying":    func(t, _, _, _ string) []string { return []string{ResultKey(t)} },
	"Finish":      func(t, _, _, _ string) []string { return []string{ResultKey(t)} },
	"Requeue":     func(t, _, _, _ string) []string { return []string{ResultKey(t)} },
	"FixRequest":  func(t, _, _, _ string) []string { return []string{ResultKey(t)} },
	"MarkUnchanged": func(t, _, _, _ string) []string {
		return []string{ResultKey(t)}
	},
	"RegisterOrder": func(_, _, r, c string) []string { return OrderKeys(r, c) },
	"CheckOrder":    func(_, _, r, c string) []string { return OrderKeys(r, c) },
	"DropFromOrder": func(_, _, r, c string) []string { return OrderKeys(r, c) },
	"ReleaseOrder":  func(_, _, r, c string) []string { return OrderKeys(r, c) },
}

// CrossSlotScripts names, sorted, the Store scripts whose keys lie in more
// than one hash slot, which Redis Cluster refuses. It is empty: every
// script touches one slot, and a test keeps it so, without a cluster. The
// slots are computed for sample names: the keys of one script share their
// hash tag, or are one key, so any other names would do as well.
func CrossSlotScripts() []string {
	var out []string
	for name, keys := range scriptKeys {
		ks := keys("update:120344:34657_20250101_123456", "01JCLUSTERPROBE", "120344", "1000000013")
		for _, k := range ks[1:] {
			if redisurl.Slot(k) != redisurl.Slot(ks[0]) {
				out = append(out, name)
				break
			}
		}
	}
	slices.Sort(out)
	return out
}
