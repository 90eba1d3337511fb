package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/couponq/couponq/internal/redistest"
	"github.com/couponq/couponq/tasks"
	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

// Updates against the strict fake, which requires name and both images in
// display_info and replaces it whole: a worker that sent only the line's
// fields would be refused, or would wipe what the line does not name.

// lines parses change lines as `couponq enqueue` does.
func lines(t *testing.T, format string, args [][]any) []tasks.Change {
	t.Helper()
	out := make([]tasks.Change, 0, len(args))
	for _, a := range args {
		var c tasks.Change
		if err := json.Unmarshal([]byte(fmt.Sprintf(format, a...)), &c); err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// patches returns the bodies of the PATCHes the fake received, by out_request_no.
func patches(fake *wechatpaytest.Server) map[string][]wechatpaytest.Request {
	m := map[string][]wechatpaytest.Request{}
	for _, q := range fake.Requests() {
		if q.Method == http.MethodPatch {
			m[q.OutRequestNo] = append(m[q.OutRequestNo], q)
		}
	}
	return m
}

func TestNameOnlyUpdatesKeepTheRest(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t)
	ids := fake.SeedCoupons(fake.BrandID(), 100)
	before := map[string]wechatpay.ProductCoupon{}
	var args [][]any
	for i, id := range ids {
		before[id], _ = fake.Coupon(id)
		args = append(args, []any{id, fake.BrandID(), fmt.Sprintf("name_only_%03d", i), fmt.Sprintf("新名称%03d号券", i)})
	}
	cs := lines(t, `{"op":"update","product_coupon_id":"%s","brand_id":"%s","out_request_no":"%s","display_info":{"name":"%s"}}`, args)
	startWorker(t, srv.URL(), fake.Client(), 8)
	enqueue(t, rdb, cs, "nameonly")
	st := wait(t, rdb, "nameonly", 2*time.Minute)
	if st.Succeeded != 100 {
		t.Fatalf("batch %+v, want 100 succeeded", st)
	}
	sent := patches(fake)
	r := tasks.NewReader(rdb)
	for i, id := range ids {
		after, _ := fake.Coupon(id)
		want := *before[id].DisplayInfo
		want.Name = fmt.Sprintf("新名称%03d号券", i)
		if diff := cmp.Diff(&want, after.DisplayInfo); diff != "" {
			t.Errorf("coupon %s after a name-only update (-want +got):\n%s", id, diff)
		}
		key := fmt.Sprintf("name_only_%03d", i)
		res, err := r.Result(context.Background(), tasks.TaskID(tasks.OpUpdate, fake.BrandID(), key))
		if err != nil {
			t.Fatal(err)
		}
		if len(sent[key]) != 1 || string(sent[key][0].Body) != string(res.Request) {
			t.Errorf("%s: %d PATCHes; result request %s is not the body sent", key, len(sent[key]), res.Request)
		}
	}
}

func TestNoChangeUpdatesAreNotSent(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t)
	ids := fake.SeedCoupons(fake.BrandID(), 20)
	var args [][]any
	for i, id := range ids {
		c, _ := fake.Coupon(id)
		args = append(args, []any{id, fake.BrandID(), fmt.Sprintf("no_change_%03d", i), c.DisplayInfo.Name, c.DisplayInfo.ImageURL, c.DisplayInfo.OriginalPrice})
	}
	cs := lines(t, `{"op":"update","product_coupon_id":"%s","brand_id":"%s","out_request_no":"%s","display_info":{"name":"%s","image_url":"%s","original_price":%d}}`, args)
	startWorker(t, srv.URL(), fake.Client(), 4)
	enqueue(t, rdb, cs, "nochange")
	st := wait(t, rdb, "nochange", time.Minute)
	if st.Succeeded != 20 {
		t.Fatalf("batch %+v, want 20 succeeded", st)
	}
	if n := len(patches(fake)); n != 0 {
		t.Errorf("%d PATCHes sent, want none", n)
	}
	r := tasks.NewReader(rdb)
	for i := range ids {
		res, err := r.Result(context.Background(), tasks.TaskID(tasks.OpUpdate, fake.BrandID(), fmt.Sprintf("no_change_%03d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if !res.Unchanged || res.Status != tasks.StatusSucceeded || res.Request != nil || res.CouponState != "EFFECTIVE" {
			t.Errorf("%s: unchanged %v, status %s, request %s", res.TaskID, res.Unchanged, res.Status, res.Request)
		}
	}
}

func TestRetriedUpdateSendsSameBytes(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t, wechatpaytest.WithSeed(11))
	ids := fake.SeedCoupons(fake.BrandID(), 20)
	// Dropped after the change was applied: the worker cannot know it took
	// effect and sends it again. One worker, one at a time: the fake's
	// seeded draws then come in one order.
	fake.SetFaults(wechatpaytest.Faults{DropAfterApply: 0.4})
	var args [][]any
	for i, id := range ids {
		args = append(args, []any{id, fake.BrandID(), fmt.Sprintf("same_bytes_%03d", i), 1000 + i})
	}
	cs := lines(t, `{"op":"update","product_coupon_id":"%s","brand_id":"%s","out_request_no":"%s","display_info":{"name":"周末8折券","original_price":%d}}`, args)
	startWorker(t, srv.URL(), fake.Client(), 1)
	enqueue(t, rdb, cs, "samebytes")
	st := wait(t, rdb, "samebytes", 2*time.Minute)
	if st.Succeeded != 20 {
		t.Fatalf("batch %+v, want 20 succeeded", st)
	}
	r := tasks.NewReader(rdb)
	retried := 0
	for key, ps := range patches(fake) {
		res, err := r.Result(context.Background(), tasks.TaskID(tasks.OpUpdate, fake.BrandID(), key))
		if err != nil {
			t.Fatal(err)
		}
		for i, p := range ps {
			if string(p.Body) != string(res.Request) {
				t.Errorf("%s: PATCH %d of %d sent\n%s\nwant the stored\n%s", key, i+1, len(ps), p.Body, res.Request)
			}
		}
		if len(ps) > 1 && ps[0].Fault == wechatpaytest.FaultDropAfterApply {
			retried++
		}
		if n := fake.AppliedCount(key); n != 1 {
			t.Errorf("%s applied %d times", key, n)
		}
	}
	if retried == 0 {
		t.Fatal("no update was retried after a dropped connection: the test proved nothing")
	}
	t.Logf("%d updates sent again after a dropped connection, each with the same bytes", retried)
}

func TestZeroPricesArrive(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	fake := wechatpaytest.NewServer(t)
	id := fake.SeedCoupons(fake.BrandID(), 1)[0]
	cs := lines(t, `{"op":"update","product_coupon_id":"%s","brand_id":"%s","out_request_no":"zero_price_1","display_info":{"original_price":0,`+
		`"combo_package_list":[{"name":"主食","pick_count":1,"choice_list":[{"name":"米饭","price":0,"count":1}]}]}}`, [][]any{{id, fake.BrandID()}})
	startWorker(t, srv.URL(), fake.Client(), 1)
	enqueue(t, rdb, cs, "zeroprice")
	if st := wait(t, rdb, "zeroprice", time.Minute); st.Succeeded != 1 {
		t.Fatalf("batch %+v", st)
	}
	ps := patches(fake)["zero_price_1"]
	if len(ps) != 1 || !strings.Contains(string(ps[0].Body), `"original_price":0`) || !strings.Contains(string(ps[0].Body), `"price":0`) {
		t.Fatalf("PATCHes %+v: want one carrying both zero prices", ps)
	}
	c, _ := fake.Coupon(id)
	if d := c.DisplayInfo; d.OriginalPrice != 0 || !d.OriginalPriceZero || !d.ComboPackageList[0].ChoiceList[0].PriceZero || d.BackgroundURL == "" {
		t.Errorf("coupon display_info = %+v", d)
	}
}
