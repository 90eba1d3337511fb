package luabundle_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/luabundle"
	"github.com/couponq/couponq/internal/redistest"
)

// script answers each kind of reply a script may give, by ARGV[1], and
// writes: a bundle must give every call the answer it would get alone and
// run the calls in order (the second INCR of one key sees the first).
const script = `
local kind = ARGV[1]
if kind == 'nil' then return nil end
if kind == 'false' then return false end
if kind == 'err' then return redis.error_reply('MINE ' .. ARGV[2]) end
if kind == 'status' then return redis.status_reply('FINE') end
if kind == 'table' then return {ARGV[2], 7, {KEYS[1]}} end
return redis.call('INCRBY', KEYS[1], tonumber(ARGV[2]))
`

func calls() []luabundle.Call {
	return []luabundle.Call{
		{Keys: []string{"k:a"}, Args: []any{"incr", 2}},
		{Keys: []string{"k:b"}, Args: []any{"nil"}},
		{Keys: []string{"k:a"}, Args: []any{"incr", 3}},
		{Keys: []string{"k:c"}, Args: []any{"err", "boom"}},
		{Keys: []string{"k:d"}, Args: []any{"table", "x"}},
		{Keys: []string{"k:e"}, Args: []any{"false"}},
		{Keys: []string{"k:f"}, Args: []any{"status"}},
		{Keys: nil, Args: []any{"table", ""}},
	}
}

type answer struct {
	val any
	err string
}

func answers(cmds []*redis.Cmd) []answer {
	out := make([]answer, len(cmds))
	for i, c := range cmds {
		out[i].val = c.Val()
		if err := c.Err(); err != nil {
			out[i].err = err.Error()
			if errors.Is(err, redis.Nil) {
				out[i].err = "nil"
			}
		}
	}
	return out
}

// check runs the calls one by one, then as one bundle on a clean server,
// and compares every answer and the data written.
func check(t *testing.T, rdb *redis.Client, flush func()) {
	ctx := context.Background()
	single := redis.NewScript(script)
	var alone []*redis.Cmd
	for _, c := range calls() {
		alone = append(alone, single.Run(ctx, rdb, c.Keys, c.Args...))
	}
	wantA, _ := rdb.Get(ctx, "k:a").Result()
	flush()

	keys, args := luabundle.Args(calls())
	cmds, err := luabundle.Unpack(ctx, luabundle.Of(script).Run(ctx, rdb, keys, args...), len(calls()))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := answers(cmds), answers(alone); !reflect.DeepEqual(got, want) {
		t.Errorf("bundle answered\n%v\nalone\n%v", got, want)
	}
	if got, _ := rdb.Get(ctx, "k:a").Result(); got != wantA || got != "5" {
		t.Errorf("k:a = %q after the bundle, %q alone; want 5", got, wantA)
	}
}

func TestBundleAnswersAsCallsAloneMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	check(t, rdb, mr.FlushAll)
}

func TestBundleAnswersAsCallsAloneRedis(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client()
	t.Cleanup(func() { rdb.Close() })
	check(t, rdb, func() { rdb.FlushAll(context.Background()) })
}

// A bundle whose answer is not a list of the calls' size is the bundle's
// error, not any call's answer.
func TestUnpackRefusesAWrongCount(t *testing.T) {
	ctx := context.Background()
	cmd := redis.NewCmd(ctx)
	cmd.SetVal([]any{int64(1)})
	if _, err := luabundle.Unpack(ctx, cmd, 2); err == nil {
		t.Fatal("Unpack of 1 answer for 2 calls: no error")
	}
	cmd.SetErr(fmt.Errorf("ERR boom"))
	if _, err := luabundle.Unpack(ctx, cmd, 1); err == nil || err.Error() != "ERR boom" {
		t.Fatalf("Unpack of a failed bundle: %v", err)
	}
}
