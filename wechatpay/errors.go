package wechatpay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Error codes WeChat Pay returns in the body of a non-2xx answer. Branch on
// these, never on the message.
const (
	CodeParamError         = "PARAM_ERROR"
	CodeInvalidRequest     = "INVALID_REQUEST"
	CodeAlreadyExists      = "ALREADY_EXISTS"
	CodeSignError          = "SIGN_ERROR"
	CodeNoAuth             = "NO_AUTH"
	CodeNotFound           = "RESOURCE_NOT_EXISTS"
	CodeRateLimitExceeded  = "RATELIMIT_EXCEEDED"
	CodeFrequencyLimited   = "FREQUENCY_LIMITED"
	CodeSystemError        = "SYSTEM_ERROR"
	CodeServiceUnavailable = "SERVICE_UNAVAILABLE"
)

// Internal error numbers WeChat Pay appends to the Request-ID ("…-<number>").
const (
	// InternalOutRequestNoReused: the same out_request_no with different
	// request data. Never retry.
	InternalOutRequestNoReused = 268578927
	// InternalNoAuth: the brand has not authorised the service provider.
	InternalNoAuth = 268579803
	// InternalNotFound: the object does not exist.
	InternalNotFound = 268578608
)

// APIError is every non-2xx answer from WeChat Pay. Its Error string carries
// the method, path, status, code and Request-ID; never keys, the
// Authorization header or the whole body.
type APIError struct {
	Method     string          // HTTP method of the call
	Path       string          // request path, without host or query
	HTTPStatus int             // HTTP status code
	Code       string          // "code" of the error body, e.g. PARAM_ERROR
	Message    string          // "message" of the error body
	Detail     json.RawMessage // "detail" of the error body as received, if any
	RequestID  string          // the Request-ID response header
	RetryAfter time.Duration   // from a Retry-After header, if any
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "wechatpay: %s %s: %d", e.Method, e.Path, e.HTTPStatus)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + truncate(e.Message, 200))
	}
	if e.RequestID != "" {
		b.WriteString(" (request_id=" + e.RequestID + ")")
	}
	return b.String()
}

// InternalCode is WeChat Pay's internal error number: the digits after the
// last '-' of the Request-ID (0 on success, 0 when absent).
func (e *APIError) InternalCode() int {
	return internalCode(e.RequestID)
}

func internalCode(requestID string) int {
	i := strings.LastIndexByte(requestID, '-')
	if i < 0 {
		return 0
	}
	n, err := strconv.Atoi(requestID[i+1:])
	if err != nil {
		return 0
	}
	return n
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	// cut on a rune boundary
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}

// Sentinel errors of response verification. They arrive wrapped in a
// *VerifyError; test with errors.Is.
var (
	ErrSignature      = errors.New("response signature does not verify")
	ErrClockSkew      = errors.New("response timestamp outside the 300 s window")
	ErrMissingHeaders = errors.New("response lacks signature headers")
	ErrUnknownSerial  = errors.New("response signed with an unknown key serial")
)

// VerifyError is a 2xx answer whose signature could not be verified. The
// call may have taken effect: retry a GET; retry a write with the same
// out_request_no, or reconcile with a GET. IsRetryable reports true.
type VerifyError struct {
	Method     string
	Path       string
	HTTPStatus int
	RequestID  string
	Serial     string // the Wechatpay-Serial received
	Err        error  // one of the Err* sentinels, possibly wrapped
}

func (e *VerifyError) Error() string {
	s := fmt.Sprintf("wechatpay: %s %s: %d answer not trusted: %v", e.Method, e.Path, e.HTTPStatus, e.Err)
	if e.RequestID != "" {
		s += " (request_id=" + e.RequestID + ")"
	}
	return s
}

// Unwrap returns the sentinel.
func (e *VerifyError) Unwrap() error { return e.Err }

// IsRetryable reports whether the call that returned err may succeed if made
// again with the same request (the same out_request_no and body): network
// errors and timeouts, 429, 500, 502, 503, 504 and 2xx answers that failed
// verification. Validation errors, other 4xx answers, configuration errors
// and a cancelled context are not retryable.
func IsRetryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var ve *ValidationError
	if errors.As(err, &ve) {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		switch ae.HTTPStatus {
		case 429, 500, 502, 503, 504:
			return ae.InternalCode() != InternalOutRequestNoReused
		}
		switch ae.Code {
		case CodeRateLimitExceeded, CodeFrequencyLimited, CodeSystemError, CodeServiceUnavailable:
			return ae.HTTPStatus >= 500 || ae.HTTPStatus == 429
		}
		return false
	}
	var vf *VerifyError
	if errors.As(err, &vf) {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// IsRateLimited reports whether err is a 429 (or a frequency-limit code) and
// the wait WeChat Pay asked for, zero when it named none.
func IsRateLimited(err error) (time.Duration, bool) {
	var ae *APIError
	if !errors.As(err, &ae) {
		return 0, false
	}
	if ae.HTTPStatus == 429 || ae.Code == CodeRateLimitExceeded || ae.Code == CodeFrequencyLimited {
		return ae.RetryAfter, true
	}
	return 0, false
}
