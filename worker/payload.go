package worker

import (
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
)

// change is one decoded task: its identity and the request to send.
type change struct {
	op              tasks.Op
	productCouponID string
	brandID         string
	outRequestNo    string
	update          *wechatpay.UpdateProductCouponRequest
	deactivate      *wechatpay.DeactivateProductCouponRequest
	get             *wechatpay.GetProductCouponRequest
}

// decodePayload decodes and validates a task payload through
// tasks.DecodePayload (the one owner of the payload format). On a
// validation error the change still holds the identity fields, so the
// failure can be recorded.
func decodePayload(taskType string, b []byte) (*change, error) {
	tc, err := tasks.DecodePayload(taskType, b)
	c := &change{op: tasks.OpOfType(taskType), productCouponID: tc.ProductCouponID, brandID: tc.BrandID, outRequestNo: tc.OutRequestNo}
	switch c.op {
	case tasks.OpUpdate:
		c.update = &wechatpay.UpdateProductCouponRequest{ProductCouponID: tc.ProductCouponID, BrandID: tc.BrandID,
			OutRequestNo: tc.OutRequestNo, DisplayInfo: tc.DisplayInfo}
	case tasks.OpDeactivate:
		c.deactivate = &wechatpay.DeactivateProductCouponRequest{ProductCouponID: tc.ProductCouponID, BrandID: tc.BrandID,
			OutRequestNo: tc.OutRequestNo, DeactivateReason: tc.DeactivateReason}
	case tasks.OpGet:
		c.get = &wechatpay.GetProductCouponRequest{ProductCouponID: tc.ProductCouponID, BrandID: tc.BrandID}
	}
	return c, err
}
