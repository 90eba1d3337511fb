package main

import (
	"github.com/couponq/couponq/internal/wpenv"
	"github.com/couponq/couponq/wechatpay"
)

// wechatpayEnvHelp is appended to the help of commands that call the API.
const wechatpayEnvHelp = wpenv.Help

// wechatpayClient builds the API client from the environment; a bad setting
// is a usage error (exit 2) naming its variable.
func wechatpayClient(getenv func(string) string, extra ...wechatpay.Option) (*wechatpay.Client, error) {
	c, err := wpenv.Client(getenv, extra...)
	if err != nil {
		return nil, usageErrorf("%v", err)
	}
	return c, nil
}
