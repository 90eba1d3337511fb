package main

import (
	"bytes"
	"context"
	"encoding/json"
	"time"

	"github.com/spf13/cobra"

	"github.com/couponq/couponq/wechatpay"
)

func newGetCmd(e *env) *cobra.Command {
	var brand, coupon string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "get --brand B --coupon C",
		Short: "Query one coupon synchronously and print it as JSON",
		Long: `Queries one product coupon with a signed GET (no queue) and prints the
ProductCoupon JSON exactly as WeChat Pay returned it, once its signature verified.
` + wechatpayEnvHelp,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &wechatpay.GetProductCouponRequest{ProductCouponID: coupon, BrandID: brand}
			if err := req.Validate(); err != nil {
				return usageErrorf("%v", err)
			}
			if timeout <= 0 {
				return usageErrorf("--timeout must be positive, got %s", timeout)
			}
			api, err := wechatpayClient(e.getenv)
			if err != nil {
				return err
			}
			defer api.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c, err := api.GetProductCoupon(ctx, req)
			if err != nil {
				return err
			}
			var out bytes.Buffer
			if err := json.Indent(&out, c.Raw, "", "  "); err != nil {
				out.Reset()
				out.Write(c.Raw)
			}
			out.WriteByte('\n')
			_, err = e.stdout.Write(out.Bytes())
			return err
		},
	}
	cmd.Flags().StringVar(&brand, "brand", "", "brand_id of the coupon (required)")
	cmd.Flags().StringVar(&coupon, "coupon", "", "product_coupon_id (required)")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "give up after this long")
	_ = cmd.MarkFlagRequired("brand")
	_ = cmd.MarkFlagRequired("coupon")
	return cmd
}
