package main

import (
	"math"
	"runtime/debug"
	"strings"
	"testing"
)

// TestEnqueueRefusesBadText: the inputs from outside — a name with
// invalid UTF-8, NUL and ESC in a name and a deactivate_reason, an
// original_price of 2^63−1 — each refused with its line number, exit 2,
// nothing enqueued, in JSONL and CSV.
func TestEnqueueRefusesBadText(t *testing.T) {
	t.Parallel()
	b := setup(t, 3)
	id, brand := b.ids[0], b.fake.BrandID()
	head := `{"op":"update","product_coupon_id":"` + id + `","brand_id":"` + brand + `","out_request_no":"`
	dea := `{"op":"deactivate","product_coupon_id":"` + id + `","brand_id":"` + brand + `","out_request_no":"`
	jsonl := changeLines(b, 1, "ok") +
		head + "bad0002\",\"display_info\":{\"name\":\"满减\xff券\"}}\n" +
		head + `bad0003","display_info":{"name":"满减\u0000券"}}` + "\n" +
		head + `bad0004","display_info":{"name":"\u001b[31m满减券"}}` + "\n" +
		dea + `bad0005","deactivate_reason":"批次信息有误\u0000"}` + "\n" +
		dea + `bad0006","deactivate_reason":"\u001b]0;x\u0007批次"}` + "\n" +
		head + `bad0007","display_info":{"name":"满减券","original_price":9223372036854775807}}` + "\n"
	csv := "op,product_coupon_id,brand_id,out_request_no,display_info,deactivate_reason\n" +
		"deactivate," + id + "," + brand + ",ok00002,,批次信息有误\n" +
		"update," + id + "," + brand + ",bad0003,\"{\"\"name\"\":\"\"满减\xff券\"\"}\",\n" +
		"deactivate," + id + "," + brand + ",bad0004,,批次\x00信息\n" +
		"deactivate," + id + "," + brand + ",bad0005,,\x1b[2J批次信息\n" +
		"update," + id + "," + brand + ",bad0006,\"{\"\"name\"\":\"\"满减券\"\",\"\"original_price\"\":9223372036854775807}\",\n"
	for _, tc := range []struct {
		name, file, content string
		want                []string
	}{
		{"jsonl", "bad.jsonl", jsonl, []string{"line 2: invalid UTF-8", "line 3:", "line 4:", "line 5:", "line 6:", "line 7:", "U+0000", "U+001B", "original_price", "6 invalid line"}},
		{"csv", "bad.csv", csv, []string{"line 3: column display_info: invalid UTF-8", "line 4:", "line 5:", "line 6:", "U+0000", "U+001B", "original_price", "4 invalid line"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := b.run(t, "", "enqueue", "--file", b.writeFile(t, tc.file, tc.content))
			if r.code != 2 {
				t.Fatalf("exit %d, want 2: %s", r.code, r.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "line 1:") || strings.Contains(r.stderr, "line 2: wechatpay") {
				t.Errorf("a good line is reported:\n%s", r.stderr)
			}
			if r.stdout != "" {
				t.Errorf("a batch ID on exit 2: %q", r.stdout)
			}
			if keys := b.mr.Keys(); len(keys) != 0 {
				t.Errorf("Redis holds %v after an invalid file", keys)
			}
		})
	}
}

// couponq enqueue runs its GC at enqueueGCPercent under a memory limit
// that grows with the file, unless the environment sets GOGC or
// GOMEMLIMIT; the settings are put back after.
func TestTuneEnqueueGC(t *testing.T) {
	percent := debug.SetGCPercent(100)
	limit := debug.SetMemoryLimit(math.MaxInt64)
	defer func() { debug.SetGCPercent(percent); debug.SetMemoryLimit(limit) }()
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name         string
		getenv       func(string) string
		wantPercent  int
		wantLimitSet bool
	}{
		{"defaults", env(), enqueueGCPercent, true},
		{"GOGC set", env("GOGC", "100"), 100, true},
		{"GOMEMLIMIT set", env("GOMEMLIMIT", "1GiB"), 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			restore := tuneEnqueueGC(tc.getenv, 300<<20)
			gotPercent := debug.SetGCPercent(-1)
			debug.SetGCPercent(gotPercent)
			gotLimit := debug.SetMemoryLimit(-1)
			restore()
			if gotPercent != tc.wantPercent {
				t.Errorf("GOGC during the run = %d, want %d", gotPercent, tc.wantPercent)
			}
			if want := enqueueMemoryLimit(300 << 20); (gotLimit == want) != tc.wantLimitSet {
				t.Errorf("memory limit during the run = %d (the file's: %d), want it set: %v", gotLimit, want, tc.wantLimitSet)
			}
			if p, l := debug.SetGCPercent(-1), debug.SetMemoryLimit(-1); p != 100 || l != math.MaxInt64 {
				t.Errorf("after: GOGC %d, limit %d; want them back", p, l)
			} else {
				debug.SetGCPercent(p)
			}
		})
	}
}
