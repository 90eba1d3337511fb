package tasks

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/couponq/couponq/wechatpay"
	"github.com/hibiken/asynq"
)

// Change is one line of a change file (see the README): an op
// and the fields of that op's request. Fields that do not belong to the op
// must be empty.
type Change struct {
	Op               Op                     `json:"op"`
	ProductCouponID  string                 `json:"product_coupon_id"`
	BrandID          string                 `json:"brand_id"`
	OutRequestNo     string                 `json:"out_request_no,omitempty"`
	DisplayInfo      *wechatpay.DisplayInfo `json:"display_info,omitempty"`
	DeactivateReason string                 `json:"deactivate_reason,omitempty"`
	// NotBefore (RFC 3339), optional on any op: the change is not applied
	// before that time. It is part of the payload.
	NotBefore string `json:"not_before,omitempty"`
}

// Task payloads. Each is the JSON of its change line without op, so
// asynqmon shows it readably. These structs are the queue's wire format and
// belong to couponq, not to the WeChat Pay client: the payload's bytes name
// a change (their SHA-256, kept in its result hash, tells a duplicate
// re-enqueue from a conflicting one), so a field may be added only with
// omitempty, and tags and field order never change.

// Payload is a decoded task payload: an *UpdatePayload, a
// *DeactivatePayload or a *GetPayload.
type Payload interface {
	// Change returns the change line the payload was made from.
	Change() Change
	// Validate checks the payload as the producer did before enqueuing it.
	Validate() error
}

// UpdatePayload is the payload of a coupon:update task.
type UpdatePayload struct {
	ProductCouponID string                 `json:"product_coupon_id"`
	BrandID         string                 `json:"brand_id"`
	OutRequestNo    string                 `json:"out_request_no"`
	DisplayInfo     *wechatpay.DisplayInfo `json:"display_info"`
	NotBefore       string                 `json:"not_before,omitempty"` // see Change.NotBefore
}

// Request returns the wechatpay request this payload makes.
func (p *UpdatePayload) Request() *wechatpay.UpdateProductCouponRequest {
	return &wechatpay.UpdateProductCouponRequest{ProductCouponID: p.ProductCouponID, BrandID: p.BrandID,
		OutRequestNo: p.OutRequestNo, DisplayInfo: p.DisplayInfo}
}

// Validate checks the payload against the limits of its request.
func (p *UpdatePayload) Validate() error {
	return errors.Join(p.Request().Validate(), validateNotBefore(p.NotBefore))
}

// Change returns the update line of the payload.
func (p *UpdatePayload) Change() Change {
	return Change{Op: OpUpdate, ProductCouponID: p.ProductCouponID, BrandID: p.BrandID, OutRequestNo: p.OutRequestNo, DisplayInfo: p.DisplayInfo, NotBefore: p.NotBefore}
}

// DeactivatePayload is the payload of a coupon:deactivate task.
type DeactivatePayload struct {
	ProductCouponID  string `json:"product_coupon_id"`
	BrandID          string `json:"brand_id"`
	OutRequestNo     string `json:"out_request_no"`
	DeactivateReason string `json:"deactivate_reason"`
	NotBefore        string `json:"not_before,omitempty"` // see Change.NotBefore
}

// Request returns the wechatpay request this payload makes.
func (p *DeactivatePayload) Request() *wechatpay.DeactivateProductCouponRequest {
	return &wechatpay.DeactivateProductCouponRequest{ProductCouponID: p.ProductCouponID, BrandID: p.BrandID,
		OutRequestNo: p.OutRequestNo, DeactivateReason: p.DeactivateReason}
}

// Validate checks the payload against the limits of its request.
func (p *DeactivatePayload) Validate() error {
	return errors.Join(p.Request().Validate(), validateNotBefore(p.NotBefore))
}

// Change returns the deactivate line of the payload.
func (p *DeactivatePayload) Change() Change {
	return Change{Op: OpDeactivate, ProductCouponID: p.ProductCouponID, BrandID: p.BrandID, OutRequestNo: p.OutRequestNo, DeactivateReason: p.DeactivateReason, NotBefore: p.NotBefore}
}

// GetPayload is the payload of a coupon:get task. OutRequestNo is not sent
// to WeChat Pay; it only names the task (the producer makes one up when the
// change file has none).
type GetPayload struct {
	ProductCouponID string `json:"product_coupon_id"`
	BrandID         string `json:"brand_id"`
	OutRequestNo    string `json:"out_request_no"`
	NotBefore       string `json:"not_before,omitempty"` // see Change.NotBefore
}

// Validate checks the payload: the identifiers, and the task key.
func (p *GetPayload) Validate() error {
	return errors.Join(p.Request().Validate(), wechatpay.ValidateOutRequestNo(p.OutRequestNo), validateNotBefore(p.NotBefore))
}

// Request returns the wechatpay request this payload makes.
func (p *GetPayload) Request() *wechatpay.GetProductCouponRequest {
	return &wechatpay.GetProductCouponRequest{ProductCouponID: p.ProductCouponID, BrandID: p.BrandID}
}

// Change returns the get line of the payload.
func (p *GetPayload) Change() Change {
	return Change{Op: OpGet, ProductCouponID: p.ProductCouponID, BrandID: p.BrandID, OutRequestNo: p.OutRequestNo, NotBefore: p.NotBefore}
}

func notAllowed(field string, op Op) error {
	return &wechatpay.ValidationError{Field: field, Reason: fmt.Sprintf("not allowed with op %q", op)}
}

// Validate checks the change against the limits of its op's request and
// returns every problem found, each a *wechatpay.ValidationError naming the
// field (joined with errors.Join). A get's out_request_no is optional, but
// must be valid when given.
func (c *Change) Validate() error {
	var errs []error
	switch c.Op {
	case OpUpdate:
		errs = append(errs, c.payload().Validate())
		if c.DeactivateReason != "" {
			errs = append(errs, notAllowed("deactivate_reason", c.Op))
		}
	case OpDeactivate:
		errs = append(errs, c.payload().Validate())
		if c.DisplayInfo != nil {
			errs = append(errs, notAllowed("display_info", c.Op))
		}
	case OpGet:
		errs = append(errs, (&GetPayload{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID}).Request().Validate(), validateNotBefore(c.NotBefore))
		if c.OutRequestNo != "" {
			errs = append(errs, wechatpay.ValidateOutRequestNo(c.OutRequestNo))
		}
		if c.DisplayInfo != nil {
			errs = append(errs, notAllowed("display_info", c.Op))
		}
		if c.DeactivateReason != "" {
			errs = append(errs, notAllowed("deactivate_reason", c.Op))
		}
	case "":
		return &wechatpay.ValidationError{Field: "op", Reason: "required (update, deactivate or get)"}
	default:
		return &wechatpay.ValidationError{Field: "op", Reason: fmt.Sprintf("must be update, deactivate or get, got %q", c.Op)}
	}
	return errors.Join(errs...)
}

// TaskID returns the change's asynq task ID, "<op>:<brand_id>:<out_request_no>",
// or "" for a get without out_request_no (the producer names it).
func (c *Change) TaskID() string {
	if c.OutRequestNo == "" {
		return ""
	}
	return TaskID(c.Op, c.BrandID, c.OutRequestNo)
}

// payload returns the task payload of the change, nil for an unknown op.
func (c *Change) payload() Payload {
	switch c.Op {
	case OpUpdate:
		return &UpdatePayload{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID, OutRequestNo: c.OutRequestNo, DisplayInfo: c.DisplayInfo, NotBefore: c.NotBefore}
	case OpDeactivate:
		return &DeactivatePayload{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID, OutRequestNo: c.OutRequestNo, DeactivateReason: c.DeactivateReason, NotBefore: c.NotBefore}
	case OpGet:
		return &GetPayload{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID, OutRequestNo: c.OutRequestNo, NotBefore: c.NotBefore}
	}
	return nil
}

// Payload returns the task payload of the change: the JSON of the change
// line without op, in a fixed field order and without HTML escaping, so the
// same change always encodes to the same bytes (duplicate and conflict
// detection compares their SHA-256). It does not validate.
func (c *Change) Payload() ([]byte, error) {
	p := c.payload()
	if p == nil {
		return nil, fmt.Errorf("couponq: payload of unknown op %q", c.Op)
	}
	return encodePayload(p)
}

// Task returns the asynq task of a valid change, with its TaskID set. A get
// must have its out_request_no by now.
func (c *Change) Task(opts ...asynq.Option) (*asynq.Task, error) {
	p := c.payload()
	if p == nil {
		return nil, c.Validate()
	}
	return newTask(c.Op, c.TaskID(), p, opts)
}

func encodePayload(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("couponq: encode payload: %w", err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// PayloadSHA256 is the hex SHA-256 of a task payload, as kept in the result
// hash (results.FieldPayloadSHA256).
func PayloadSHA256(payload []byte) string {
	sum := sha256.Sum256(payload)
	return hex.EncodeToString(sum[:])
}

func newTask(op Op, taskID string, v interface{ Validate() error }, opts []asynq.Option) (*asynq.Task, error) {
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("couponq: %s task: %w", op, err)
	}
	b, err := encodePayload(v)
	if err != nil {
		return nil, err
	}
	// asynq lets later options win: the task ID goes last so no caller
	// option can replace "<op>:<brand_id>:<out_request_no>".
	return asynq.NewTask(op.TaskType(), b, append(opts[:len(opts):len(opts)], asynq.TaskID(taskID))...), nil
}

// NewUpdateTask returns a coupon:update task for p with the task ID
// ("update:<brand_id>:<out_request_no>"). p is validated first.
func NewUpdateTask(p *UpdatePayload, opts ...asynq.Option) (*asynq.Task, error) {
	return newTask(OpUpdate, TaskID(OpUpdate, p.BrandID, p.OutRequestNo), p, opts)
}

// NewDeactivateTask returns a coupon:deactivate task for p with the
// task ID ("deactivate:<brand_id>:<out_request_no>"). p is validated first.
func NewDeactivateTask(p *DeactivatePayload, opts ...asynq.Option) (*asynq.Task, error) {
	return newTask(OpDeactivate, TaskID(OpDeactivate, p.BrandID, p.OutRequestNo), p, opts)
}

// NewGetTask returns a coupon:get task for p with the task ID
// ("get:<brand_id>:<out_request_no>"). p is validated first; its
// OutRequestNo is required here (the Producer makes one up for a get
// change without it).
func NewGetTask(p *GetPayload, opts ...asynq.Option) (*asynq.Task, error) {
	return newTask(OpGet, TaskID(OpGet, p.BrandID, p.OutRequestNo), p, opts)
}

// newGetOutRequestNo returns a fresh, unique out_request_no for a get that
// has none: "get" followed by a ULID (29 characters).
func newGetOutRequestNo() string { return "get" + newULID() }

// PayloadError is returned by DecodePayload for a task payload that does
// not decode or validate. The worker fails such a task at once.
type PayloadError struct {
	TaskType string
	Err      error
}

func (e *PayloadError) Error() string {
	return fmt.Sprintf("couponq: bad %s payload: %v", e.TaskType, e.Err)
}

func (e *PayloadError) Unwrap() error { return e.Err }

// DecodePayload decodes and validates a task's payload. Unknown task
// types, malformed JSON, unknown fields and invalid values are a
// *PayloadError; for invalid values the payload is returned too, since its
// identity fields still name the task whose failure is to be recorded.
func DecodePayload(taskType string, payload []byte) (Payload, error) {
	var p Payload
	switch OpOfType(taskType) {
	case OpUpdate:
		p = &UpdatePayload{}
	case OpDeactivate:
		p = &DeactivatePayload{}
	case OpGet:
		p = &GetPayload{}
	default:
		return nil, &PayloadError{TaskType: taskType, Err: fmt.Errorf("unknown task type %q (want %s, %s or %s)", taskType, TypeUpdate, TypeDeactivate, TypeGet)}
	}
	if err := decodeStrict(payload, p); err != nil {
		return nil, &PayloadError{TaskType: taskType, Err: err}
	}
	if err := p.Validate(); err != nil {
		return p, &PayloadError{TaskType: taskType, Err: err}
	}
	return p, nil
}

// decodeStrict decodes exactly one JSON object into v, rejecting unknown
// fields and trailing data.
func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("unexpected data after the JSON object")
	}
	return nil
}

// jsonError makes encoding/json's messages read well in a line report.
func jsonError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return errors.New("empty input, want a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("truncated JSON")
	case errors.As(err, &se):
		return fmt.Errorf("malformed JSON at byte %d: %w", se.Offset, err)
	case errors.As(err, &te):
		if te.Field != "" {
			return fmt.Errorf("%s: must be a JSON %s, got %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
		}
		return fmt.Errorf("must be a JSON object, got %s", te.Value)
	}
	return err
}

func jsonKind(k string) string {
	switch k {
	case "struct", "ptr", "map":
		return "object"
	case "slice", "array":
		return "array"
	case "int64", "int", "int32":
		return "integer"
	}
	return k
}
