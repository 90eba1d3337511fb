package results

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/luabundle"
)

// A batch's counters are kept apart from its results: on Redis Cluster the
// result hashes, the batch hash and the batch's task set lie in different
// hash slots, and no script may touch two slots. So every change of a
// task's status is two steps, each one script on one slot and each
// idempotent:
//
//  1. the result step (a script on the result hash) changes the status and
//     answers the task's batch, its runs and its status now;
//  2. the batch step (applyBatchScript, on the batch hash and couponq's own
//     keys in its slot) makes the counters include that state.
//
// The batch step is a state apply, not an increment: the batch keeps, in
// batchCountedKey, the "<runs>:<status>" of every task its counters
// include, and applying a state moves the counters from the old one to the
// new one. Applying the same state twice does nothing, and an older state
// (fewer runs, or not terminal where a terminal one of the same run is
// counted) is ignored, so steps may be re-sent, repeated by a healer or
// arrive late. A crash between the steps leaves a batch behind its results
// until something applies the state again: the worker that is re-delivered
// the task (Begin), the next Finish, a rerun of the producer (its resumed
// and underway changes are applied too), the adoption sweep (Settle on the
// changes it adopts, RepairBatch before it seals an abandoned batch) or
// RepairBatch, which recounts a batch from its results.
//
// The event counters (duplicates, earlier_failed, conflicts) count calls,
// not states: a call that has a token counts its events once, its token
// kept in batchCallsKey.

// luaFinishBatchIfDone: a batch is done when it is sealed (its producer
// finished enqueuing) and succeeded+failed+canceled reaches total.
const luaFinishBatchIfDone = `
local function finish_batch_if_done(bk, now)
  local b = redis.call('HMGET', bk, 'total', 'succeeded', 'failed', 'finished_at', 'sealed', 'canceled')
  if b[5] == '1' and not b[4] and tonumber(b[2] or '0') + tonumber(b[3] or '0') + tonumber(b[6] or '0') >= tonumber(b[1] or '0') then
    redis.call('HSET', bk, 'finished_at', now)
  end
end
`

// luaTerminal tells a terminal status.
const luaTerminal = `
local function terminal(s) return s == 'succeeded' or s == 'failed' or s == 'canceled' end
`

// applyBatchScript makes a batch's counters include the given states of
// its tasks, and counts a call's events once. A status that is not
// terminal is kept as "queued": the counters count queued, running and
// retrying alike (in total only). The status "gone" takes a task out of
// the batch (its result was undone); "gone:<counter>" also adds one to
// that counter (duplicates or conflicts) if the task was in the batch.
// When a task moves from terminal back to queued (couponq retry), the
// batch is no longer finished nor canceled. A batch hash that does not
// exist (expired, or never opened) is left alone. Returns {tasks added to
// the batch, tasks whose state changed}, or {-1, 0} for no batch.
//
// A batch written by a couponq before the batch step (total above zero
// and no counted hash) answers {-2, 0} and changes nothing: its counters
// must first be rebuilt from its results (Store.rebuildBatch, flag 'z').
// Applying states to it would count its tasks a second time.
//
// KEYS[1] -> couponq:batch:<batch_id>
// KEYS[2] -> {couponq:batch:<batch_id>}:counted
// KEYS[3] -> {couponq:batch:<batch_id>}:calls
// ARGV[1] -> now, ARGV[2] -> TTL in milliseconds
// ARGV[3] -> the call's token ("" = none: its events always count)
// ARGV[4] -> flags: 'r' to reopen the batch (unseal it) when a task is
// added; 'z' to zero total, succeeded, failed and canceled and forget the
// counted states first (a rebuild); 'q' not to finish the batch (a part of
// a rebuild that more parts follow)
// ARGV[5..7] -> events: duplicates, earlier_failed, conflicts
// ARGV[8..] -> per task: task_id, runs, status
var applyBatchScript = newScript("ApplyBatch", luaFinishBatchIfDone+luaTerminal+`
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local flags = ARGV[4]
local rebuild = string.find(flags, 'z', 1, true)
if rebuild then
  redis.call('HSET', KEYS[1], 'total', '0', 'succeeded', '0', 'failed', '0', 'canceled', '0')
  redis.call('DEL', KEYS[2])
end
-- The counted states are read in one HMGET and written back in one HSET
-- and one HDEL, the counters moved in one HINCRBY each: a call of many
-- tasks costs Redis a handful of commands, not three a task. final keeps
-- each touched task's state (false: gone), so a task given twice sees its
-- first entry.
local ids = {}
for i = 8, #ARGV, 3 do ids[#ids + 1] = ARGV[i] end
local got, counted = {}, false
for i = 1, #ids, 1000 do
  local part = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + 999, #ids)))
  for j = 1, #part do
    got[i + j - 1] = part[j]
    if part[j] then counted = true end
  end
end
-- A state found says the counted hash exists; only when none is found
-- does it take a look of its own.
if not rebuild and not counted and redis.call('EXISTS', KEYS[2]) == 0
  and tonumber(redis.call('HGET', KEYS[1], 'total') or '0') > 0 then
  return {-2, 0}
end
local final, touched, delta = {}, {}, {}
local function move(f, v) delta[f] = (delta[f] or 0) + v end
local added, changed, requeued = 0, 0, false
for k = 1, #ids do
  local i = 8 + (k - 1) * 3
  local t, runs, st = ARGV[i], tonumber(ARGV[i + 1]) or 1, ARGV[i + 2]
  local ev = ''
  if string.sub(st, 1, 4) == 'gone' then
    ev = string.sub(st, 6)
    st = 'gone'
  elseif not terminal(st) then
    st = 'queued'
  end
  local cur = final[t]
  if cur == nil then cur = got[k] end
  if cur == false then cur = nil end
  local cruns, cst = 0, ''
  if cur then
    local r, s = string.match(cur, '^(%d+):(%a+)$')
    cruns, cst = tonumber(r) or 0, s or ''
  end
  local want = runs .. ':' .. st
  local to = nil
  if st == 'gone' then
    if cur then
      to = false
      move('total', -1)
      if terminal(cst) then move(cst, -1) end
      if ev ~= '' then move(ev, 1) end
    end
  elseif cur ~= want and runs >= cruns and not (runs == cruns and terminal(cst) and not terminal(st)) then
    if not cur then
      move('total', 1)
      added = added + 1
    elseif terminal(cst) then
      move(cst, -1)
      if not terminal(st) then requeued = true end
    end
    if terminal(st) then move(st, 1) end
    to = want
  end
  if to ~= nil then
    if final[t] == nil then touched[#touched + 1] = t end
    final[t] = to
    changed = changed + 1
  end
end
local sets, dels = {}, {}
for _, t in ipairs(touched) do
  if final[t] then
    sets[#sets + 1] = t
    sets[#sets + 1] = final[t]
  else
    dels[#dels + 1] = t
  end
end
for i = 1, #sets, 1000 do redis.call('HSET', KEYS[2], unpack(sets, i, math.min(i + 999, #sets))) end
for i = 1, #dels, 1000 do redis.call('HDEL', KEYS[2], unpack(dels, i, math.min(i + 999, #dels))) end
local fields = {}
for f in pairs(delta) do fields[#fields + 1] = f end
table.sort(fields)
for _, f in ipairs(fields) do
  if delta[f] ~= 0 then redis.call('HINCRBY', KEYS[1], f, delta[f]) end
end
local n = tonumber(ARGV[5]) + tonumber(ARGV[6]) + tonumber(ARGV[7])
if n > 0 and (ARGV[3] == '' or redis.call('SADD', KEYS[3], ARGV[3]) == 1) then
  local fields = {'duplicates', 'earlier_failed', 'conflicts'}
  for k = 1, 3 do
    local v = tonumber(ARGV[4 + k])
    if v > 0 then redis.call('HINCRBY', KEYS[1], fields[k], v) end
  end
end
if requeued then redis.call('HDEL', KEYS[1], 'finished_at', 'canceled_at') end
if added > 0 and string.find(flags, 'r', 1, true) then
  -- a batch sealed early (its producer was not seen for a while) reopens
  redis.call('HSET', KEYS[1], 'sealed', '0')
  redis.call('HDEL', KEYS[1], 'finished_at')
end
if not string.find(flags, 'q', 1, true) then finish_batch_if_done(KEYS[1], ARGV[1]) end
-- PEXPIRE leaves a key that does not exist alone
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[2]) end
return {added, changed}
`)

// addTasksScript adds task IDs to a batch's task set and, when it added
// any, refreshes the set's TTL. One key: it is a script only so the TTL is
// not rewritten (and propagated) when nothing was added.
//
// KEYS[1] -> couponq:batch:<batch_id>:tasks
// ARGV[1] -> TTL in milliseconds, ARGV[2..] -> task IDs
var addTasksScript = newScript("AddTasks", `
local n = 0
for i = 2, #ARGV, 1000 do n = n + redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV))) end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
`)

// taskState is a task's state as its result says, for its batch.
type taskState struct {
	taskID string
	runs   string // "1" when the result has no runs field
	status string // a Status, or "gone" / "gone:<counter>" (see applyBatchScript)
}

// batchEvents are the event counts of one call, counted once per token.
type batchEvents struct {
	token                                string
	duplicates, earlierFailed, conflicts int
}

// batchApply is the batch step of one batch: the states to apply, the
// call's events, and the changes of its task set that go with them.
type batchApply struct {
	batch    string
	reopen   bool
	rebuild  bool // zero the counters first (see rebuildBatch)
	events   batchEvents
	states   []taskState
	addTasks []string // SADD to the task set
	remTasks []string // SREM from the task set
}

// maxApply bounds the task states of one applyBatchScript call.
const maxApply = 512

// applied is what applyBatches did to one batch.
type applied struct {
	added, changed int
	missing        bool // no batch hash
	legacy         bool // written before the batch step: rebuild it first
}

// applyBatches runs the batch steps of several batches (and their task
// set changes) in one pipeline: on a cluster, go-redis sends each to the
// master of its slot. Every command is idempotent: go-redis may send the
// pipeline again after a read timeout.
func (s *Store) applyBatches(ctx context.Context, applies []batchApply) ([]applied, error) {
	return s.applyBatchesWith(ctx, applies, nil)
}

// applyBatchesWith is applyBatches with more commands in its pipeline:
// extra adds them (its scripts listed in extraScripts, for NOSCRIPT).
func (s *Store) applyBatchesWith(ctx context.Context, applies []batchApply, extra func(redis.Pipeliner), extraScripts ...*redis.Script) ([]applied, error) {
	out := make([]applied, len(applies))
	type sent struct {
		i   int
		cmd *redis.Cmd
	}
	var cmds []sent
	err := s.pipelined(ctx, func(p redis.Pipeliner) {
		for i, a := range applies {
			if a.batch == "" {
				continue
			}
			states, ev := a.states, a.events
			for first := true; first || len(states) > 0; first = false {
				chunk := states[:min(len(states), maxApply)]
				states = states[len(chunk):]
				if len(chunk) == 0 && ev.duplicates+ev.earlierFailed+ev.conflicts == 0 && !a.rebuild {
					break
				}
				flags := ""
				if a.reopen {
					flags += "r"
				}
				if a.rebuild && first {
					flags += "z"
				}
				if a.rebuild && len(states) > 0 {
					flags += "q"
				}
				args := make([]any, 0, 7+3*len(chunk))
				args = append(args, s.stamp(), s.ttlMillis(), ev.token, flags, ev.duplicates, ev.earlierFailed, ev.conflicts)
				for _, st := range chunk {
					args = append(args, st.taskID, st.runs, st.status)
				}
				cmds = append(cmds, sent{i, applyBatchScript.EvalSha(ctx, p, batchScriptKeys(a.batch), args...)})
				ev = batchEvents{} // the events go with the first chunk only
			}
			for ids := a.addTasks; len(ids) > 0; {
				chunk := ids[:min(len(ids), maxApply)]
				ids = ids[len(chunk):]
				args := make([]any, 0, 1+len(chunk))
				args = append(args, s.ttlMillis())
				for _, id := range chunk {
					args = append(args, id)
				}
				addTasksScript.EvalSha(ctx, p, []string{BatchTasksKey(a.batch)}, args...)
			}
			if len(a.remTasks) > 0 {
				members := make([]any, len(a.remTasks))
				for j, id := range a.remTasks {
					members[j] = id
				}
				p.SRem(ctx, BatchTasksKey(a.batch), members...)
			}
		}
		if extra != nil {
			extra(p)
		}
	}, append([]*redis.Script{applyBatchScript, addTasksScript}, extraScripts...)...)
	if err != nil {
		return nil, err
	}
	var legacy []batchApply
	for _, c := range cmds {
		res, err := c.cmd.Int64Slice()
		if err != nil || len(res) != 2 {
			return nil, fmt.Errorf("batch %s: unexpected answer %v: %w", applies[c.i].batch, c.cmd.Val(), err)
		}
		if res[0] == -2 {
			if !out[c.i].legacy {
				legacy = append(legacy, applies[c.i])
			}
			out[c.i].legacy = true
			continue
		}
		if res[0] < 0 {
			out[c.i].missing = true
			continue
		}
		out[c.i].added += int(res[0])
		out[c.i].changed += int(res[1])
	}
	// A batch an older couponq wrote (its counters are increments, no
	// counted states): rebuilt from its results, then this step again
	// (the task set's changes went through already).
	for _, a := range legacy {
		if _, err := s.rebuildBatch(ctx, a.batch); err != nil {
			return nil, err
		}
		a.addTasks, a.remTasks = nil, nil
		again, err := s.applyBatches(ctx, []batchApply{a})
		if err != nil {
			return nil, err
		}
		for i := range applies {
			if applies[i].batch == a.batch && out[i].legacy {
				out[i] = again[0]
			}
		}
	}
	return out, nil
}

// pipelined is the package's pipelined over the store's client.
func (s *Store) pipelined(ctx context.Context, fill func(redis.Pipeliner), scripts ...*redis.Script) error {
	return pipelined(ctx, s.rdb, fill, scripts...)
}

// stateApplies groups task states by batch, in the order batches first
// appear, each batch with the tasks to add to its set (every task whose
// result names the batch: a task set that lost one gets it back).
func stateApplies(batches []string, states []taskState) []batchApply {
	var out []batchApply
	at := map[string]int{}
	for i, b := range batches {
		if b == "" || !hashTagSafe(b) {
			continue
		}
		j, ok := at[b]
		if !ok {
			j = len(out)
			at[b] = j
			out = append(out, batchApply{batch: b})
		}
		out[j].states = append(out[j].states, states[i])
		if !strings.HasPrefix(states[i].status, "gone") {
			out[j].addTasks = append(out[j].addTasks, states[i].taskID)
		}
	}
	return out
}

// readStates reads the batch, runs and status of each task's result in
// one pipeline (per chunk); a missing result has status "".
func (s *Store) readStates(ctx context.Context, taskIDs []string) (batches []string, states []taskState, err error) {
	batches, states = make([]string, len(taskIDs)), make([]taskState, len(taskIDs))
	for off := 0; off < len(taskIDs); off += pipelineChunk {
		ids := taskIDs[off:min(len(taskIDs), off+pipelineChunk)]
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(ids))
		for i, id := range ids {
			cmds[i] = pipe.HMGet(ctx, ResultKey(id), FieldBatch, FieldRuns, FieldStatus)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, nil, err
		}
		for i, c := range cmds {
			v := c.Val()
			str := func(j int) string { s, _ := v[j].(string); return s }
			batches[off+i] = str(0)
			states[off+i] = taskState{taskID: ids[i], runs: runsOf(str(1)), status: str(2)}
		}
	}
	return batches, states, nil
}

func runsOf(s string) string {
	if s == "" {
		return "1"
	}
	return s
}

// Settle makes the counters of each task's batch include what its result
// says now, and puts the task in its batch's task set: the batch step of
// whatever changed the result, applied again. It heals a batch whose
// step was lost (its writer crashed in between) and changes nothing
// otherwise. Tasks without a result or a batch are skipped.
func (s *Store) Settle(ctx context.Context, taskIDs []string) error {
	if len(taskIDs) == 0 {
		return nil
	}
	batches, states, err := s.readStates(ctx, taskIDs)
	if err != nil {
		return fmt.Errorf("couponq: settle %d tasks: %w", len(taskIDs), err)
	}
	for i := range states {
		if states[i].status == "" {
			batches[i] = ""
		}
	}
	if _, err := s.applyBatches(ctx, stateApplies(batches, states)); err != nil {
		return fmt.Errorf("couponq: settle %d tasks: %w", len(taskIDs), err)
	}
	return nil
}

// settleOne is the batch step of one task whose result step answered its
// batch, runs and status.
func (s *Store) settleOne(ctx context.Context, taskID, batch, runs, status string) error {
	if batch == "" || status == "" {
		return nil
	}
	if !hashTagSafe(batch) {
		return fmt.Errorf("batch %q of %s holds a brace: its counters cannot be kept", batch, taskID)
	}
	_, err := s.applyBatches(ctx, stateApplies([]string{batch}, []taskState{{taskID: taskID, runs: runsOf(runs), status: status}}))
	return err
}

// RepairBatch recounts batch batchID from its results: every task of its
// task set, and every task its counters include, has the state its result
// says applied again. A task whose result belongs to another batch leaves
// the set and the counters; one whose result is gone leaves them unless
// the counters hold it terminal (its result expired before the batch did:
// it keeps its count). It returns how many tasks' states it changed in the
// counters (0: they were right). It is idempotent and safe beside the
// writers: an apply never moves a task back to an older state.
func (s *Store) RepairBatch(ctx context.Context, batchID string) (int, error) {
	return s.repairBatch(ctx, batchID, false)
}

// rebuildBatch is RepairBatch from zero: the counters of total and of
// the terminal statuses are reset and recounted from the results of the
// task set, in the same script as the first part, and the batch is not
// finished before the last part. It converts a batch an older couponq
// wrote (counters by increments, no counted states).
func (s *Store) rebuildBatch(ctx context.Context, batchID string) (int, error) {
	return s.repairBatch(ctx, batchID, true)
}

func (s *Store) repairBatch(ctx context.Context, batchID string, rebuild bool) (int, error) {
	if !hashTagSafe(batchID) {
		return 0, fmt.Errorf("couponq: repair batch %q: a batch ID holds no brace", batchID)
	}
	inSet := map[string]bool{}
	counted := map[string]string{}
	var ids []string
	var cursor uint64
	for {
		page, next, err := s.rdb.SScan(ctx, BatchTasksKey(batchID), cursor, "", 1000).Result()
		if err != nil {
			return 0, fmt.Errorf("couponq: repair batch %s: %w", batchID, err)
		}
		for _, id := range page {
			if !inSet[id] {
				inSet[id] = true
				ids = append(ids, id)
			}
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	for {
		page, next, err := s.rdb.HScan(ctx, batchCountedKey(batchID), cursor, "", 1000).Result()
		if err != nil {
			return 0, fmt.Errorf("couponq: repair batch %s: %w", batchID, err)
		}
		for i := 0; i+1 < len(page); i += 2 {
			if _, seen := counted[page[i]]; !seen && !inSet[page[i]] {
				ids = append(ids, page[i])
			}
			counted[page[i]] = page[i+1]
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	batches, states, err := s.readStates(ctx, ids)
	if err != nil {
		return 0, fmt.Errorf("couponq: repair batch %s: %w", batchID, err)
	}
	a := batchApply{batch: batchID, rebuild: rebuild}
	for i, st := range states {
		switch {
		case st.status != "" && batches[i] == batchID:
			a.states = append(a.states, st)
			if !inSet[st.taskID] {
				a.addTasks = append(a.addTasks, st.taskID)
			}
		case st.status == "" && terminalEntry(counted[st.taskID]):
			// expired before its batch: keeps its count
		default:
			if _, ok := counted[st.taskID]; ok {
				a.states = append(a.states, taskState{taskID: st.taskID, runs: "0", status: "gone"})
			}
			if inSet[st.taskID] {
				a.remTasks = append(a.remTasks, st.taskID)
			}
		}
	}
	res, err := s.applyBatches(ctx, []batchApply{a})
	if err != nil {
		return 0, fmt.Errorf("couponq: repair batch %s: %w", batchID, err)
	}
	if res[0].legacy && !rebuild {
		return s.repairBatch(ctx, batchID, true)
	}
	return res[0].changed, nil
}

// terminalEntry reports whether a counted entry ("<runs>:<status>") is
// terminal.
func terminalEntry(e string) bool {
	_, st, ok := strings.Cut(e, ":")
	return ok && Status(st).Terminal()
}

// scriptNames records every script of the Store by the name scriptKeys
// lists it under.
var scriptNames = map[string]*redis.Script{}

// newScript is redis.NewScript for a script of the Store, recorded under
// name so TestStoreScriptsOnCluster can tell it ran every one.
func newScript(name, src string) *redis.Script {
	if _, dup := scriptNames[name]; dup {
		panic("results: two scripts named " + name)
	}
	sc := redis.NewScript(src)
	scriptNames[name] = sc
	scriptSources[sc] = src
	bundles[sc] = luabundle.Of(src)
	return sc
}

// scriptSources keeps each script's source, for the scripts made of
// several (finishOneScript).
var scriptSources = map[*redis.Script]string{}

// luaStep wraps script's source as the Lua function name(KEYS, ARGV), for
// a script that runs several in turn on one server.
func luaStep(name string, script *redis.Script) string {
	return "local function " + name + "(KEYS, ARGV)\n" + scriptSources[script] + "\nend\n"
}
