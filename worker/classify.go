package worker

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"
	"unicode/utf8"

	"github.com/couponq/couponq/internal/results"
	"github.com/couponq/couponq/wechatpay"
)

// Error codes couponq writes to error_code when WeChat Pay gave none.
const (
	CodeInvalidPayload   = "INVALID_PAYLOAD"   // the task payload does not decode or validate
	CodeNetworkError     = "NETWORK_ERROR"     // no answer: connection refused, reset, dropped
	CodeTimeout          = "TIMEOUT"           // no answer within the deadline
	CodeSignatureInvalid = "SIGNATURE_INVALID" // a 2xx answer failed verification
	CodeRateLimited      = "RATE_LIMITED"      // deferred by couponq's own rate limiter
	CodeInterrupted      = "INTERRUPTED"       // the worker shut down during the call
	CodeArchived         = "ARCHIVED"          // asynq archived the task without a final answer
	CodeClientError      = "CLIENT_ERROR"      // the client failed before sending (configuration)
	CodeNotSent          = "NOT_SENT"          // the client would not send: its clock is off WeChat Pay's, or no certificates
)

// Call outcomes reported to Metrics.ObserveCall.
const (
	outcomeSuccess      = "success"
	outcomeAPIError     = "api_error"
	outcomeNetworkError = "network_error"
	outcomeVerifyError  = "verify_error"
	outcomeClientError  = "client_error"
)

const maxErrorMessage = 500

// classify describes a failed call: its outcome label and the result-hash
// fields of the attempt (Calls is left to the caller). Messages come from
// error strings that never carry keys or headers; they are truncated.
func classify(err error) (outcome string, a results.Attempt) {
	var (
		ae *wechatpay.APIError
		vf *wechatpay.VerifyError
		va *wechatpay.ValidationError
		ue *url.Error
		ne net.Error
	)
	switch {
	case errors.As(err, &ae):
		code := ae.Code
		if code == "" {
			code = "HTTP_" + strconv.Itoa(ae.HTTPStatus)
		}
		msg := ae.Message
		if msg == "" {
			msg = ae.Error()
		}
		return outcomeAPIError, results.Attempt{HTTPStatus: ae.HTTPStatus, ErrorCode: code,
			ErrorMessage: clip(msg), RequestID: ae.RequestID}
	case errors.As(err, &vf):
		return outcomeVerifyError, results.Attempt{HTTPStatus: vf.HTTPStatus, ErrorCode: CodeSignatureInvalid,
			ErrorMessage: clip(err.Error()), RequestID: vf.RequestID}
	case errors.As(err, &va):
		return outcomeClientError, results.Attempt{ErrorCode: CodeInvalidPayload, ErrorMessage: clip(err.Error())}
	case errors.Is(err, wechatpay.ErrNotSent):
		return outcomeClientError, results.Attempt{ErrorCode: CodeNotSent, ErrorMessage: clip(err.Error())}
	case errors.Is(err, context.DeadlineExceeded):
		return outcomeNetworkError, results.Attempt{ErrorCode: CodeTimeout, ErrorMessage: clip(err.Error())}
	case errors.Is(err, context.Canceled):
		return outcomeNetworkError, results.Attempt{ErrorCode: CodeInterrupted, ErrorMessage: clip(err.Error())}
	case errors.As(err, &ue), errors.As(err, &ne):
		return outcomeNetworkError, results.Attempt{ErrorCode: CodeNetworkError, ErrorMessage: clip(err.Error())}
	default:
		return outcomeClientError, results.Attempt{ErrorCode: CodeClientError, ErrorMessage: clip(err.Error())}
	}
}

// clip truncates s to maxErrorMessage bytes on a rune boundary.
func clip(s string) string {
	if len(s) <= maxErrorMessage {
		return s
	}
	n := maxErrorMessage
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// mayBeAlreadyApplied reports whether a refused write may mean an earlier
// attempt with the same out_request_no already took effect: a state error
// (deactivating a coupon that is no longer EFFECTIVE), ALREADY_EXISTS, or
// the key-reused internal code.
func mayBeAlreadyApplied(err error) bool {
	var ae *wechatpay.APIError
	if !errors.As(err, &ae) {
		return false
	}
	if ae.InternalCode() == wechatpay.InternalOutRequestNoReused {
		return true
	}
	if ae.HTTPStatus != 400 && ae.HTTPStatus != 409 {
		return false
	}
	switch ae.Code {
	case wechatpay.CodeInvalidRequest, wechatpay.CodeAlreadyExists:
		return true
	}
	return false
}
