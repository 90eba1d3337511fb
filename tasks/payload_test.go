package tasks

import (
	"errors"
	"strings"
	"testing"

	"github.com/couponq/couponq/wechatpay"
	"github.com/google/go-cmp/cmp"
)

func updateChange(orn string) Change {
	return Change{Op: OpUpdate, ProductCouponID: "1000000013", BrandID: "120344", OutRequestNo: orn,
		DisplayInfo: &wechatpay.DisplayInfo{Name: "全场满100立打8折", OriginalPrice: 10000}}
}

func deactivateChange(orn string) Change {
	return Change{Op: OpDeactivate, ProductCouponID: "1000000013", BrandID: "120344", OutRequestNo: orn, DeactivateReason: "批次信息有误,重新创建"}
}

func getChange(orn string) Change {
	return Change{Op: OpGet, ProductCouponID: "1000000013", BrandID: "120344", OutRequestNo: orn}
}

// fields returns the Field of every *wechatpay.ValidationError in err.
func fields(err error) []string {
	var out []string
	var walk func(error)
	walk = func(err error) {
		switch e := err.(type) {
		case *wechatpay.ValidationError:
			out = append(out, e.Field)
		case interface{ Unwrap() []error }:
			for _, e := range e.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(e.Unwrap())
		}
	}
	if err != nil {
		walk(err)
	}
	return out
}

func TestChangeValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func() Change
		fields []string // fields named by the errors, nil = valid
		msg    string   // substring of the message
	}{
		{"update", func() Change { return updateChange("34657_20250101_123456") }, nil, ""},
		{"deactivate", func() Change { return deactivateChange("34657_20250101_123457") }, nil, ""},
		{"get without out_request_no", func() Change { return getChange("") }, nil, ""},
		{"get with out_request_no", func() Change { return getChange("abcdef") }, nil, ""},
		{"missing op", func() Change { c := getChange(""); c.Op = ""; return c }, []string{"op"}, "required"},
		{"unknown op", func() Change { c := getChange(""); c.Op = "delete"; return c }, []string{"op"}, `got "delete"`},
		{"get with bad out_request_no", func() Change { return getChange("abc") }, []string{"out_request_no"}, "6–40"},
		{"get with display_info", func() Change {
			c := getChange("")
			c.DisplayInfo = &wechatpay.DisplayInfo{Name: "abcd"}
			return c
		}, []string{"display_info"}, `not allowed with op "get"`},
		{"get with deactivate_reason", func() Change { c := getChange(""); c.DeactivateReason = "x"; return c }, []string{"deactivate_reason"}, "not allowed"},
		{"deactivate with display_info", func() Change {
			c := deactivateChange("abcdefg")
			c.DisplayInfo = &wechatpay.DisplayInfo{Name: "abcd"}
			return c
		}, []string{"display_info"}, `not allowed with op "deactivate"`},
		{"update with deactivate_reason", func() Change { c := updateChange("abcdefg"); c.DeactivateReason = "x"; return c }, []string{"deactivate_reason"}, "not allowed"},
		{"update without out_request_no", func() Change { return updateChange("") }, []string{"out_request_no"}, "required"},
		{"update without display_info", func() Change { c := updateChange("abcdefg"); c.DisplayInfo = nil; return c }, []string{"display_info"}, "required"},
		{"update with short name", func() Change {
			c := updateChange("abcdefg")
			c.DisplayInfo.Name = "ab"
			return c
		}, []string{"display_info.name"}, "3–15"},
		{"deactivate without reason", func() Change { c := deactivateChange("abcdefg"); c.DeactivateReason = ""; return c }, []string{"deactivate_reason"}, "required"},
		{"bad ids", func() Change { c := deactivateChange("abcdefg"); c.BrandID = "a:b"; c.ProductCouponID = ""; return c },
			[]string{"product_coupon_id", "brand_id"}, "[0-9A-Za-z_-]"},
		{"every problem at once", func() Change {
			return Change{Op: OpDeactivate, DisplayInfo: &wechatpay.DisplayInfo{}}
		}, []string{"product_coupon_id", "brand_id", "out_request_no", "deactivate_reason", "display_info"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := tt.change()
			err := c.Validate()
			if diff := cmp.Diff(tt.fields, fields(err)); diff != "" {
				t.Fatalf("fields (-want +got):\n%s\nerr: %v", diff, err)
			}
			if err != nil && !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not contain %q", err, tt.msg)
			}
		})
	}
}

func TestPayloadAndTasks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		change   Change
		typ      string
		taskID   string
		payload  string
		newTask  func(Change) (string, []byte, error)
		roundTrp bool
	}{
		{
			name:    "update",
			change:  updateChange("34657_20250101_123456"),
			typ:     TypeUpdate,
			taskID:  "update:120344:34657_20250101_123456",
			payload: `{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"34657_20250101_123456","display_info":{"name":"全场满100立打8折","original_price":10000}}`,
		},
		{
			name:    "deactivate",
			change:  deactivateChange("34657_20250101_123457"),
			typ:     TypeDeactivate,
			taskID:  "deactivate:120344:34657_20250101_123457",
			payload: `{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"34657_20250101_123457","deactivate_reason":"批次信息有误,重新创建"}`,
		},
		{
			name:    "get",
			change:  getChange("get_abcdef"),
			typ:     TypeGet,
			taskID:  "get:120344:get_abcdef",
			payload: `{"product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"get_abcdef"}`,
		},
		{
			name: "no HTML escaping",
			change: Change{Op: OpDeactivate, ProductCouponID: "1", BrandID: "2", OutRequestNo: "abcdef",
				DeactivateReason: "a<b>&c"},
			typ:     TypeDeactivate,
			taskID:  "deactivate:2:abcdef",
			payload: `{"product_coupon_id":"1","brand_id":"2","out_request_no":"abcdef","deactivate_reason":"a<b>&c"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := tt.change
			if got := c.TaskID(); got != tt.taskID {
				t.Errorf("TaskID = %q, want %q", got, tt.taskID)
			}
			b, err := c.Payload()
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.payload {
				t.Errorf("payload\n got %s\nwant %s", b, tt.payload)
			}
			task, err := c.Task()
			if err != nil {
				t.Fatal(err)
			}
			if task.Type() != tt.typ || string(task.Payload()) != tt.payload {
				t.Errorf("task = %s %s", task.Type(), task.Payload())
			}
			got, err := DecodePayload(task.Type(), task.Payload())
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c, got.Change()); diff != "" {
				t.Errorf("DecodePayload round trip (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNewTaskConstructors(t *testing.T) {
	t.Parallel()
	up, err := NewUpdateTask(&UpdatePayload{ProductCouponID: "1", BrandID: "b", OutRequestNo: "abcdef",
		DisplayInfo: &wechatpay.DisplayInfo{Name: "abcd"}})
	if err != nil || up.Type() != TypeUpdate {
		t.Fatalf("NewUpdateTask: %v %v", up, err)
	}
	if _, err := NewDeactivateTask(&DeactivatePayload{ProductCouponID: "1", BrandID: "b", OutRequestNo: "abc"}); len(fields(err)) != 2 {
		t.Errorf("NewDeactivateTask on an invalid payload: %v, want out_request_no and deactivate_reason", err)
	}
	if _, err := NewGetTask(&GetPayload{ProductCouponID: "1", BrandID: "b"}); !slicesContain(fields(err), "out_request_no") {
		t.Errorf("NewGetTask without out_request_no: %v", err)
	}
	orn := newGetOutRequestNo()
	if err := wechatpay.ValidateOutRequestNo(orn); err != nil || orn == newGetOutRequestNo() {
		t.Errorf("newGetOutRequestNo %q: %v (or not unique)", orn, err)
	}
}

func slicesContain(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestDecodePayloadErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, typ, payload, msg string
	}{
		{"foreign type", "email:send", `{}`, `unknown task type "email:send"`},
		{"not JSON", TypeGet, `{`, "truncated JSON"},
		{"bad JSON", TypeGet, `{x}`, "malformed JSON at byte 2"},
		{"empty", TypeGet, ``, "empty input"},
		{"trailing data", TypeGet, `{"product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef"} x`, "unexpected data"},
		{"unknown field", TypeDeactivate, `{"product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef","deactivate_reason":"x","op":"deactivate"}`, `unknown field "op"`},
		{"display_info on deactivate", TypeDeactivate, `{"product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef","deactivate_reason":"x","display_info":{}}`, `unknown field "display_info"`},
		{"wrong type", TypeGet, `{"product_coupon_id":1}`, "product_coupon_id: must be a JSON string"},
		{"invalid", TypeUpdate, `{"product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef"}`, "invalid display_info: required"},
		{"get without out_request_no", TypeGet, `{"product_coupon_id":"1","brand_id":"b"}`, "invalid out_request_no: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodePayload(tt.typ, []byte(tt.payload))
			var pe *PayloadError
			if !errors.As(err, &pe) || pe.TaskType != tt.typ {
				t.Fatalf("err = %v, want *PayloadError for %s", err, tt.typ)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not contain %q", err, tt.msg)
			}
		})
	}
}

func TestValidateBatchID(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		id string
		ok bool
	}{
		{newBatchID(), true}, {"nightly-2025.01_01", true}, {strings.Repeat("a", 128), true},
		{"", false}, {strings.Repeat("a", 129), false}, {"a:tasks", false}, {"a b", false}, {"批次", false},
	} {
		if err := ValidateBatchID(tt.id); (err == nil) != tt.ok {
			t.Errorf("ValidateBatchID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
	}
}
