// Package worker is couponq's asynq server: handlers for coupon:update,
// coupon:deactivate and coupon:get that call WeChat Pay through an API
// (a *wechatpay.Client) and record every attempt and outcome in the result
// hashes of package tasks.
//
// # Errors and retries
//
// Every handler run first marks the task running; a task whose result is
// already terminal (asynq re-delivered it after a crash) returns at once
// without calling the API. Then:
//
//   - success: the result becomes succeeded with the coupon JSON and state;
//   - a retryable error (wechatpay.IsRetryable: network errors, 5xx, 2xx
//     answers that fail verification): the result says retrying and asynq
//     retries after RetryPolicy's delay (exponential backoff, full jitter);
//     once the task has been retried min(Config.MaxRetry, its asynq max
//     retry) times it fails with the last error;
//   - a 429 (or the shared rate limiter having no slot within
//     Config.LimiterMaxWait): the task is handed back without counting a
//     failure (IsFailure), after the Retry-After the answer asked for; a
//     429 also makes the Limiter leave a slot or a few empty for every
//     worker of the identity (a short slowdown, no pause);
//   - a permanent error (other 4xx, SIGN_ERROR, …): failed at once, never
//     retried (asynq.SkipRetry);
//   - a payload that does not decode or validate: failed at once with
//     error_code INVALID_PAYLOAD.
//
// A retried write refused in a way that may mean the earlier attempt took
// effect (INVALID_REQUEST, ALREADY_EXISTS, internal 268578927) is
// reconciled with a GET: a deactivation took effect iff the coupon's
// deactivate_request_no is our out_request_no, an update iff its
// display_info holds what we sent.
//
// Results reach a terminal status exactly once (the results store's Finish), and
// batch counters move with it. Tasks asynq archives without calling the
// handler (lease expiry at the last retry) are recorded as failed with
// error_code ARCHIVED by SweepArchived.
//
// # Rate limiting
//
// The Limiter keeps each endpoint of an identity within N calls in any
// one-second window for all processes together, with a margin for arrival
// jitter: see Limiter and the README's "why the rate limit holds".
package worker
