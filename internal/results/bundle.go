package results

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/luabundle"
)

// bundles maps each script of the Store to its bundle (package luabundle).
// The Store's pipelined calls go as bundles on a single server only: their
// keys lie in many hash slots, which a cluster or a ring refuses; there
// each call stays its own EVALSHA.
var bundles = map[*redis.Script]*redis.Script{}

// bundled answers script's bundle when its calls on rdb may go as bundles.
func bundled(rdb redis.UniversalClient, script *redis.Script) (*redis.Script, bool) {
	if !singleServer(rdb) {
		return nil, false
	}
	b, ok := bundles[script]
	return b, ok
}

// singleServer reports whether rdb talks to one Redis server, where one
// script may touch keys of any slot: a *redis.Client (which a sentinel URL
// also makes), or a client wrapping one (Unwrap: package autopipe's).
func singleServer(rdb redis.UniversalClient) bool {
	for {
		switch c := rdb.(type) {
		case *redis.Client:
			return true
		case interface{ Unwrap() redis.UniversalClient }:
			rdb = c.Unwrap()
		default:
			return false
		}
	}
}

// runBundled is runPipelined on a single server: the calls go as bundles
// of up to luabundle.Size, pipelineChunk calls a round trip, and come back
// as one command per call, as runPipelined's would.
func runBundled(ctx context.Context, rdb redis.UniversalClient, bundle *redis.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	out := make([]*redis.Cmd, 0, len(calls))
	for len(calls) > 0 {
		chunk := calls[:min(len(calls), pipelineChunk)]
		calls = calls[len(chunk):]
		var (
			cmds  []*redis.Cmd
			sizes []int
		)
		err := pipelined(ctx, rdb, func(p redis.Pipeliner) {
			for rest := chunk; len(rest) > 0; {
				part := rest[:min(len(rest), luabundle.Size)]
				rest = rest[len(part):]
				bc := make([]luabundle.Call, len(part))
				for i, c := range part {
					bc[i] = luabundle.Call{Keys: c.keys, Args: c.args}
				}
				keys, args := luabundle.Args(bc)
				cmds = append(cmds, bundle.EvalSha(ctx, p, keys, args...))
				sizes = append(sizes, len(part))
			}
		}, bundle)
		if err != nil {
			return nil, err
		}
		for k, c := range cmds {
			each, err := luabundle.Unpack(ctx, c, sizes[k])
			if err != nil {
				return nil, err
			}
			out = append(out, each...)
		}
	}
	return out, nil
}
