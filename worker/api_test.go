package worker

import "github.com/couponq/couponq/wechatpay"

// The client satisfies the one interface the worker declares of it.
var _ API = (*wechatpay.Client)(nil)
