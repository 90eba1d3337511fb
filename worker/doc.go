// Package worker is couponq's asynq server: handlers for coupon:update,
// coupon:deactivate and coupon:get that call WeChat Pay through an API
// (a *wechatpay.Client) and record every attempt and outcome in the result
// hashes of package tasks.
//
// # Errors and retries
//
// Before a task starts, its batch and its coupon's order are checked
// (order.go): a task of a canceled batch ends canceled without a call, and
// a task an earlier write to its coupon has not finished for comes back
// later without counting a retry (its result stays queued); the worker
// takes other work meanwhile, and the earlier write wakes it when it is
// terminal. A call that fails after its batch was canceled ends the task
// canceled instead of retrying it.
//
// Every handler run then marks the task running; a task whose result is
// already terminal (asynq re-delivered it after a crash) returns at once
// without calling the API. Then one function, judge, decides what a failed
// attempt means:
//
//   - success: the result becomes succeeded with the coupon JSON and state;
//   - retry later (wechatpay.IsRetryable: network errors, timeouts, 5xx,
//     2xx answers that fail verification): the result says retrying and
//     asynq retries after RetryPolicy's delay (exponential backoff, full
//     jitter); after Config.MaxRetry retries (NoRetry: none) the task
//     fails with the last error. couponq enqueues with an asynq MaxRetry of
//     1000, Config.MaxRetry's ceiling, so the worker and not asynq decides;
//   - come back later (a 429, or no slot of the shared rate limiter within
//     Config.LimiterMaxWait): the task is handed back without counting a
//     failure (IsFailure), after the Retry-After or the next slot; a 429
//     also makes the Limiter leave a slot or a few empty for every worker
//     of the identity (a short slowdown, no pause);
//   - hand back: the worker shut down during the call; the next run may
//     reconcile;
//   - come back for the worker's own sake (401 SIGN_ERROR; a call the
//     client did not send, wechatpay.ErrNotSent, for its clock or missing
//     certificates; an unverifiable answer once the worker has stopped for
//     its credentials): no retry counted, a call not sent not counted in
//     attempts;
//   - fail now (other 4xx, …): failed at once, never retried
//     (asynq.SkipRetry), as is a payload that does not decode or validate
//     (error_code INVALID_PAYLOAD).
//
// A retried write refused in a way that may mean the earlier attempt took
// effect (INVALID_REQUEST, ALREADY_EXISTS, internal 268578927) is
// reconciled with a GET: a deactivation took effect iff the coupon's
// deactivate_request_no is our out_request_no, an update iff its
// display_info holds what we sent.
//
// Results reach a terminal status exactly once (the results store's Finish), and
// batch counters move with it: Finish is a script on the result, then one
// on the batch that applies the task's state idempotently. A worker that
// dies between the two leaves the task to be re-delivered; Begin, finding
// it terminal, applies the batch step before the re-delivery is
// acknowledged. On a single server, where one script may touch every key,
// the two are one script (Store.FinishAndRelease), as the start's reads
// and Begin are (Store.Start): a round trip each. Tasks asynq archives without calling the
// handler (lease expiry at the last retry) are recorded as failed with
// error_code ARCHIVED by SweepArchived. Changes a producer accepted but
// never handed to asynq (it was killed in between) are enqueued by Adopt
// once older than Config.AdoptAfter, and the batch it left open is
// repaired (recounted from its results) and sealed; a sealed batch whose
// progress stands still between two looks five minutes apart is repaired
// too (tasks.Adopter; one worker at a time).
//
// # Taking tasks only while they can be done
//
// Run waits for Redis, refuses an evicting maxmemory-policy (an
// *EvictionError) unless Config.AllowEviction, and starts the asynq server
// only once WeChat Pay accepts the credentials (the client's
// CheckCredentials). Credentials errors from three tasks in a row, or a call
// refused for the clock, shut the server down: in-flight tasks finish or
// come back, none is taken, and a probe every Config.ProbeInterval starts
// it again once WeChat Pay accepts the credentials. Ready reports all of it
// without I/O, and draining for shutdown too.
//
// # Rate limiting
//
// The Limiter keeps each endpoint of an identity within N calls in any
// one-second window for all processes together, with a margin for arrival
// jitter: see Limiter and the README's "why the rate limit holds".
package worker
