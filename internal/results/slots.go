package results

import (
	"slices"

	"github.com/couponq/couponq/internal/redisurl"
)

// scriptKeys lists, for each Lua script of the Store, the keys one call of
// it touches for task t of batch b: those passed in KEYS and those the
// script builds itself (Finish reads the batch from the result and builds
// its key). Redis Cluster, and the proxies of managed cluster editions,
// refuse a script whose keys lie in more than one hash slot (CROSSSLOT).
//
// It must follow the scripts of store.go: TestStoreScriptsOnCluster runs
// every one of them on a real cluster and fails when this list says
// otherwise than Redis.
var scriptKeys = map[string]func(t, b string) []string{
	"OpenBatch": func(_, b string) []string { return []string{BatchKey(b)} },
	"SealBatch": func(_, b string) []string { return []string{BatchKey(b), BatchTasksKey(b)} },
	"AcceptMany": func(t, b string) []string {
		return []string{BatchKey(b), BatchTasksKey(b), acceptCallKey("run", "0.0"), ResultKey(t)}
	},
	"Unaccept": func(t, b string) []string { return []string{ResultKey(t), BatchKey(b), BatchTasksKey(b)} },
	"Begin":    func(t, _ string) []string { return []string{ResultKey(t)} },
	"Retrying": func(t, _ string) []string { return []string{ResultKey(t)} },
	"Finish":   func(t, b string) []string { return []string{ResultKey(t), BatchKey(b)} },
}

// CrossSlotScripts names, sorted, the Store operations whose script
// touches keys of more than one hash slot, which Redis Cluster refuses.
// Empty means the Store runs on a cluster. The slots are computed for a
// sample task and batch: the key names have no hash tags, so any other
// names would do as well.
func CrossSlotScripts() []string {
	var out []string
	for name, keys := range scriptKeys {
		ks := keys("update:120344:34657_20250101_123456", "01JCLUSTERPROBE")
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
