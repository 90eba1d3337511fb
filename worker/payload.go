package worker

import (
	"time"

	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// change is one decoded task: its identity and the request to send.
type change struct {
	op              tasks.Op
	productCouponID string
	brandID         string
	outRequestNo    string
	notBefore       time.Time // zero: not held back
	update          *wechatpay.UpdateProductCouponRequest
	deactivate      *wechatpay.DeactivateProductCouponRequest
	get             *wechatpay.GetProductCouponRequest
}

// decodePayload decodes and validates a task payload through
// tasks.DecodePayload (the one owner of the payload format) and maps it to
// its WeChat Pay request. On a validation error the change still holds the
// identity fields, so the failure can be recorded.
func decodePayload(taskType string, b []byte) (*change, error) {
	p, err := tasks.DecodePayload(taskType, b)
	c := &change{op: tasks.OpOfType(taskType)}
	if p == nil {
		return c, err
	}
	tc := p.Change()
	c.productCouponID, c.brandID, c.outRequestNo = tc.ProductCouponID, tc.BrandID, tc.OutRequestNo
	c.notBefore = tc.NotBeforeTime()
	switch p := p.(type) {
	case *tasks.UpdatePayload:
		c.update = p.Request()
	case *tasks.DeactivatePayload:
		c.deactivate = p.Request()
	case *tasks.GetPayload:
		c.get = p.Request()
	}
	return c, err
}
