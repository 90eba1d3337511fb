// Package luabundle runs many calls of a Redis script as one: a bundle is
// the script's body wrapped as a function and called once per call, in
// order, inside one EVALSHA, answering the list of the calls' answers.
//
// On one Redis server, many calls of a small script cost far less as one
// bundle: Redis pays for each EVALSHA (parsing, the script's setup, the
// reply) about as much as for the script's few commands, and the client
// pays a command object and a reply per call. A bundle is no more atomic
// per call than a pipeline is: each call sees the ones before it, as
// pipelined calls would.
//
// A bundle's keys must be ones a single EVALSHA may touch: any keys on a
// single server (*redis.Client, which a sentinel URL also makes), keys of
// one hash slot on a cluster.
package luabundle

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Size bounds the calls of one bundle, so that one EVALSHA holds Redis for
// a fraction of a millisecond, not longer.
const Size = 64

// loop follows the script's body, wrapped as the function one: ARGV[1] is
// the number of calls c, ARGV[2..2c+1] each call's number of keys and of
// arguments, then every call's arguments; KEYS holds every call's keys. A
// call that answers nil answers false (a nil would end the list).
const loop = `
local c = tonumber(ARGV[1])
local out, ki, ai = {}, 1, 2 * c + 2
for i = 1, c do
  local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local ks, as = {}, {}
  for j = 1, nk do ks[j] = KEYS[ki]; ki = ki + 1 end
  for j = 1, na do as[j] = ARGV[ai]; ai = ai + 1 end
  local r = one(ks, as)
  if r == nil then r = false end
  out[i] = r
end
return out
`

// Of makes the bundle of the script src. The body sees its own KEYS and
// ARGV, as it would alone.
func Of(src string) *redis.Script {
	return redis.NewScript("local function one(KEYS, ARGV)\n" + src + "\nend\n" + loop)
}

// Call is one call of a bundled script.
type Call struct {
	Keys []string
	Args []any
}

// Args lays calls out as a bundle reads them.
func Args(calls []Call) (keys []string, args []any) {
	nk, na := 0, 0
	for _, c := range calls {
		nk += len(c.Keys)
		na += len(c.Args)
	}
	keys = make([]string, 0, nk)
	args = make([]any, 0, 1+2*len(calls)+na)
	args = append(args, len(calls))
	for _, c := range calls {
		args = append(args, len(c.Keys), len(c.Args))
	}
	for _, c := range calls {
		keys = append(keys, c.Keys...)
		args = append(args, c.Args...)
	}
	return keys, args
}

// Unpack turns a bundle's answer for n calls into one command per call,
// each holding what that call alone would have answered: its value,
// redis.Nil for nil, or the error it answered. err is the bundle's own
// error (the EVALSHA failed: no call's answer is known).
func Unpack(ctx context.Context, bundle *redis.Cmd, n int) ([]*redis.Cmd, error) {
	vals, err := bundle.Slice()
	if err != nil {
		return nil, err
	}
	if len(vals) != n {
		return nil, fmt.Errorf("couponq: a bundle of %d script calls answered %d", n, len(vals))
	}
	out := make([]*redis.Cmd, n)
	for i, v := range vals {
		cmd := redis.NewCmd(ctx)
		switch v := v.(type) {
		case nil:
			cmd.SetErr(redis.Nil)
		case error:
			cmd.SetErr(v)
		default:
			cmd.SetVal(v)
		}
		out[i] = cmd
	}
	return out, nil
}
