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

// Change is one line of a change file (SPEC "Input: change files"): an op
// and the fields of that op's request. Fields that do not belong to the op
// must be empty.
type Change struct {
	Op               Op                     `json:"op"`
	ProductCouponID  string                 `json:"product_coupon_id"`
	BrandID          string                 `json:"brand_id"`
	OutRequestNo     string                 `json:"out_request_no,omitempty"`
	DisplayInfo      *wechatpay.DisplayInfo `json:"display_info,omitempty"`
	DeactivateReason string                 `json:"deactivate_reason,omitempty"`
}

// UpdatePayload is the payload of a coupon:update task: the request of
// wechatpay.Client.UpdateProductCoupon.
type UpdatePayload = wechatpay.UpdateProductCouponRequest

// DeactivatePayload is the payload of a coupon:deactivate task: the request
// of wechatpay.Client.DeactivateProductCoupon.
type DeactivatePayload = wechatpay.DeactivateProductCouponRequest

// GetPayload is the payload of a coupon:get task. OutRequestNo is not sent
// to WeChat Pay; it only names the task (the producer makes one up when the
// change file has none).
type GetPayload struct {
	ProductCouponID string `json:"product_coupon_id"`
	BrandID         string `json:"brand_id"`
	OutRequestNo    string `json:"out_request_no"`
}

// Validate checks the payload: the identifiers, and the task key.
func (p *GetPayload) Validate() error {
	errs := []error{(&wechatpay.GetProductCouponRequest{ProductCouponID: p.ProductCouponID, BrandID: p.BrandID}).Validate()}
	errs = append(errs, wechatpay.ValidateOutRequestNo(p.OutRequestNo))
	return errors.Join(errs...)
}

// Request returns the wechatpay request this payload makes.
func (p *GetPayload) Request() *wechatpay.GetProductCouponRequest {
	return &wechatpay.GetProductCouponRequest{ProductCouponID: p.ProductCouponID, BrandID: p.BrandID}
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
		errs = append(errs, c.updatePayload().Validate())
		if c.DeactivateReason != "" {
			errs = append(errs, notAllowed("deactivate_reason", c.Op))
		}
	case OpDeactivate:
		errs = append(errs, c.deactivatePayload().Validate())
		if c.DisplayInfo != nil {
			errs = append(errs, notAllowed("display_info", c.Op))
		}
	case OpGet:
		errs = append(errs, (&wechatpay.GetProductCouponRequest{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID}).Validate())
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

func (c *Change) updatePayload() *UpdatePayload {
	return &UpdatePayload{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID, OutRequestNo: c.OutRequestNo, DisplayInfo: c.DisplayInfo}
}

func (c *Change) deactivatePayload() *DeactivatePayload {
	return &DeactivatePayload{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID, OutRequestNo: c.OutRequestNo, DeactivateReason: c.DeactivateReason}
}

func (c *Change) getPayload() *GetPayload {
	return &GetPayload{ProductCouponID: c.ProductCouponID, BrandID: c.BrandID, OutRequestNo: c.OutRequestNo}
}

// Payload returns the task payload of the change: the JSON of the change
// line without op, in a fixed field order and without HTML escaping, so the
// same change always encodes to the same bytes (duplicate and conflict
// detection compares their SHA-256). It does not validate.
func (c *Change) Payload() ([]byte, error) {
	switch c.Op {
	case OpUpdate:
		return encodePayload(c.updatePayload())
	case OpDeactivate:
		return encodePayload(c.deactivatePayload())
	case OpGet:
		return encodePayload(c.getPayload())
	}
	return nil, fmt.Errorf("couponq: payload of unknown op %q", c.Op)
}

// Task returns the asynq task of a valid change, with its TaskID set. A get
// must have its out_request_no by now.
func (c *Change) Task(opts ...asynq.Option) (*asynq.Task, error) {
	switch c.Op {
	case OpUpdate:
		return NewUpdateTask(c.updatePayload(), opts...)
	case OpDeactivate:
		return NewDeactivateTask(c.deactivatePayload(), opts...)
	case OpGet:
		return NewGetTask(c.getPayload(), opts...)
	}
	return nil, c.Validate()
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
	// option can replace the SPEC's.
	return asynq.NewTask(op.TaskType(), b, append(opts[:len(opts):len(opts)], asynq.TaskID(taskID))...), nil
}

// NewUpdateTask returns a coupon:update task for p with the SPEC task ID
// ("update:<brand_id>:<out_request_no>"). p is validated first.
func NewUpdateTask(p *UpdatePayload, opts ...asynq.Option) (*asynq.Task, error) {
	return newTask(OpUpdate, TaskID(OpUpdate, p.BrandID, p.OutRequestNo), p, opts)
}

// NewDeactivateTask returns a coupon:deactivate task for p with the SPEC
// task ID ("deactivate:<brand_id>:<out_request_no>"). p is validated first.
func NewDeactivateTask(p *DeactivatePayload, opts ...asynq.Option) (*asynq.Task, error) {
	return newTask(OpDeactivate, TaskID(OpDeactivate, p.BrandID, p.OutRequestNo), p, opts)
}

// NewGetTask returns a coupon:get task for p with the SPEC task ID
// ("get:<brand_id>:<out_request_no>"). p is validated first; its
// OutRequestNo is required here (see NewGetOutRequestNo).
func NewGetTask(p *GetPayload, opts ...asynq.Option) (*asynq.Task, error) {
	return newTask(OpGet, TaskID(OpGet, p.BrandID, p.OutRequestNo), p, opts)
}

// NewGetOutRequestNo returns a fresh, unique out_request_no for a get that
// has none: "get" followed by a ULID (29 characters).
func NewGetOutRequestNo() string { return "get" + newULID() }

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

// DecodePayload turns a task's type and payload back into the change it was
// made from, validated. Unknown task types, malformed JSON, unknown fields
// and invalid values are a *PayloadError.
func DecodePayload(taskType string, payload []byte) (Change, error) {
	op := OpOfType(taskType)
	if op == "" {
		return Change{}, &PayloadError{TaskType: taskType, Err: fmt.Errorf("unknown task type %q (want %s, %s or %s)", taskType, TypeUpdate, TypeDeactivate, TypeGet)}
	}
	var (
		dst interface{ Validate() error }
		to  func() Change
	)
	switch op {
	case OpUpdate:
		p := &UpdatePayload{}
		dst, to = p, func() Change {
			return Change{Op: op, ProductCouponID: p.ProductCouponID, BrandID: p.BrandID, OutRequestNo: p.OutRequestNo, DisplayInfo: p.DisplayInfo}
		}
	case OpDeactivate:
		p := &DeactivatePayload{}
		dst, to = p, func() Change {
			return Change{Op: op, ProductCouponID: p.ProductCouponID, BrandID: p.BrandID, OutRequestNo: p.OutRequestNo, DeactivateReason: p.DeactivateReason}
		}
	default:
		p := &GetPayload{}
		dst, to = p, func() Change {
			return Change{Op: op, ProductCouponID: p.ProductCouponID, BrandID: p.BrandID, OutRequestNo: p.OutRequestNo}
		}
	}
	if err := decodeStrict(payload, dst); err != nil {
		return Change{}, &PayloadError{TaskType: taskType, Err: err}
	}
	if err := dst.Validate(); err != nil {
		// The identity fields still name the task, so its failure can be recorded.
		return to(), &PayloadError{TaskType: taskType, Err: err}
	}
	return to(), nil
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
