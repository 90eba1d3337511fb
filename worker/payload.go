package worker

import (
	"encoding/json"
	"fmt"

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

// getPayload is the JSON of a coupon:get task.
type getPayload struct {
	ProductCouponID string `json:"product_coupon_id"`
	BrandID         string `json:"brand_id"`
	OutRequestNo    string `json:"out_request_no,omitempty"`
}

// decodePayload decodes and validates a task payload (SPEC: the change line
// without op). On error the returned change still holds whatever identity
// fields could be read, so the failure can be recorded.
//
// TODO(merge): switch to tasks.DecodePayload once the payload types land.
func decodePayload(taskType string, b []byte) (*change, error) {
	c := &change{op: tasks.OpOfType(taskType)}
	var err error
	switch c.op {
	case tasks.OpUpdate:
		r := new(wechatpay.UpdateProductCouponRequest)
		err = json.Unmarshal(b, r)
		c.productCouponID, c.brandID, c.outRequestNo, c.update = r.ProductCouponID, r.BrandID, r.OutRequestNo, r
		if err == nil {
			err = r.Validate()
		}
	case tasks.OpDeactivate:
		r := new(wechatpay.DeactivateProductCouponRequest)
		err = json.Unmarshal(b, r)
		c.productCouponID, c.brandID, c.outRequestNo, c.deactivate = r.ProductCouponID, r.BrandID, r.OutRequestNo, r
		if err == nil {
			err = r.Validate()
		}
	case tasks.OpGet:
		var p getPayload
		err = json.Unmarshal(b, &p)
		c.productCouponID, c.brandID, c.outRequestNo = p.ProductCouponID, p.BrandID, p.OutRequestNo
		c.get = &wechatpay.GetProductCouponRequest{ProductCouponID: p.ProductCouponID, BrandID: p.BrandID}
		if err == nil {
			err = c.get.Validate()
		}
		if err == nil && p.OutRequestNo != "" {
			err = wechatpay.ValidateOutRequestNo(p.OutRequestNo)
		}
	default:
		return c, fmt.Errorf("unknown task type %q", taskType)
	}
	if err != nil {
		return c, fmt.Errorf("%s payload: %w", taskType, err)
	}
	return c, nil
}
