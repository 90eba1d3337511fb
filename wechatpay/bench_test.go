package wechatpay_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// BenchmarkUpdateProductCoupon is a full call against the fake: validate,
// encode, sign, HTTP over loopback, the fake's checks and state, its signed
// answer, verification and decoding. Each call changes the name, so every
// answer is signed afresh.
func BenchmarkUpdateProductCoupon(b *testing.B) {
	s := wechatpaytest.NewServer(b, wechatpaytest.WithRequestLogLimit(1024))
	c := s.Client()
	defer c.Close()
	brand := s.BrandID()
	id := s.SeedCoupons(brand, 1)[0]
	ctx := b.Context()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		req := &wechatpay.UpdateProductCouponRequest{ProductCouponID: id, BrandID: brand,
			OutRequestNo: fmt.Sprintf("bench_%010d", i), DisplayInfo: &wechatpay.DisplayInfo{Name: fmt.Sprintf("券%08d", i), ImageURL: "https://img.example/i.png", BackgroundURL: "https://img.example/b.png"}}
		if _, err := c.UpdateProductCoupon(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateProductCouponParallel is the same call from many
// goroutines on one client (GOMAXPROCS × 20).
func BenchmarkUpdateProductCouponParallel(b *testing.B) {
	s := wechatpaytest.NewServer(b, wechatpaytest.WithRequestLogLimit(1024))
	c := s.Client()
	defer c.Close()
	brand := s.BrandID()
	ids := s.SeedCoupons(brand, 64)
	ctx := b.Context()
	var n atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(20)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			req := &wechatpay.UpdateProductCouponRequest{ProductCouponID: ids[i%int64(len(ids))], BrandID: brand,
				OutRequestNo: fmt.Sprintf("bench_%010d", i), DisplayInfo: &wechatpay.DisplayInfo{Name: fmt.Sprintf("券%08d", i), ImageURL: "https://img.example/i.png", BackgroundURL: "https://img.example/b.png"}}
			if _, err := c.UpdateProductCoupon(ctx, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
