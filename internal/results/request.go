package results

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// fixRequestScript stores a write's body unless one is stored, and returns
// the one stored: the first run to fix a body wins, and every later run
// (a retry, a re-delivery after a crash) reads it back.
//
// KEYS[1] -> couponq:result:<task_id>
// ARGV[1] -> the body
var fixRequestScript = newScript("FixRequest", `
local cur = redis.call('HGET', KEYS[1], 'request')
if cur and cur ~= '' then return cur end
redis.call('HSET', KEYS[1], 'request', ARGV[1])
return ARGV[1]
`)

// FixRequest stores body as the task's request unless one is stored
// already, and returns the stored one, which the caller must send.
func (s *Store) FixRequest(ctx context.Context, taskID string, body []byte) ([]byte, error) {
	if len(body) == 0 {
		return nil, fmt.Errorf("couponq: fix request of %s: empty body", taskID)
	}
	got, err := fixRequestScript.Run(ctx, s.rdb, []string{ResultKey(taskID)}, body).Text()
	if err != nil {
		return nil, fmt.Errorf("couponq: fix request of %s: %w", taskID, err)
	}
	return []byte(got), nil
}

// Request returns the body an earlier run fixed for the task, or nil when
// none was.
func (s *Store) Request(ctx context.Context, taskID string) ([]byte, error) {
	got, err := s.rdb.HGet(ctx, ResultKey(taskID), FieldRequest).Bytes()
	if errors.Is(err, redis.Nil) || (err == nil && len(got) == 0) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("couponq: read request of %s: %w", taskID, err)
	}
	return got, nil
}

// markUnchangedScript sets unchanged=1 on a result that is not terminal.
var markUnchangedScript = newScript("MarkUnchanged", `
local st = redis.call('HGET', KEYS[1], 'status')
if not st or st == 'succeeded' or st == 'failed' or st == 'canceled' then return 0 end
redis.call('HSET', KEYS[1], 'unchanged', '1')
return 1
`)

// MarkUnchanged records that an update was not sent because the coupon
// already matched it; Finish then records its success. It does nothing to
// a terminal or missing result.
func (s *Store) MarkUnchanged(ctx context.Context, taskID string) error {
	if err := markUnchangedScript.Run(ctx, s.rdb, []string{ResultKey(taskID)}).Err(); err != nil {
		return fmt.Errorf("couponq: mark %s unchanged: %w", taskID, err)
	}
	return nil
}
