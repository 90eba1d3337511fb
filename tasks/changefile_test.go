package tasks

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/couponq/couponq/wechatpay"
	"github.com/google/go-cmp/cmp"
)

// readAll reads every change and bad line; it fails the test on a final error.
func readAll(t *testing.T, input string, f Format) (changes []Change, bad map[int]string) {
	t.Helper()
	r := NewChangeReader(strings.NewReader(input), f)
	bad = map[int]string{}
	for range 10000 {
		c, err := r.Next()
		var le *LineError
		switch {
		case errors.Is(err, io.EOF):
			return changes, bad
		case errors.As(err, &le):
			bad[le.Line] = le.Err.Error()
		case err != nil:
			t.Fatalf("final error: %v", err)
		default:
			changes = append(changes, c)
		}
	}
	t.Fatal("reader does not end")
	return nil, nil
}

const specJSONL = `{"op":"update","product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"34657_20250101_123456","display_info":{"name":"全场满100立打8折","original_price":10000}}
{"op":"deactivate","product_coupon_id":"1000000013","brand_id":"120344","out_request_no":"34657_20250101_123457","deactivate_reason":"批次信息有误,重新创建"}
{"op":"get","product_coupon_id":"1000000013","brand_id":"120344"}
`

var specChanges = []Change{updateChange("34657_20250101_123456"), deactivateChange("34657_20250101_123457"), getChange("")}

const specCSV = `op,product_coupon_id,brand_id,out_request_no,display_info,deactivate_reason
update,1000000013,120344,34657_20250101_123456,"{""name"":""全场满100立打8折"",""original_price"":10000}",
deactivate,1000000013,120344,34657_20250101_123457,,"批次信息有误,重新创建"
get,1000000013,120344,,,
`

func TestChangeReader(t *testing.T) {
	t.Parallel()
	long := `{"op":"get","product_coupon_id":"1","brand_id":"b","x":"` + strings.Repeat("a", maxLineBytes) + `"}`
	tests := []struct {
		name   string
		format Format
		input  string
		want   []Change
		bad    map[int]string // line → substring of the reason
	}{
		{name: "jsonl spec example", format: FormatJSONL, input: specJSONL, want: specChanges},
		{name: "jsonl blank lines, CRLF, BOM, no final newline", format: FormatJSONL,
			input: "\xef\xbb\xbf\r\n  \n" + strings.ReplaceAll(strings.TrimSuffix(specJSONL, "\n"), "\n", "\r\n\r\n"),
			want:  specChanges},
		{name: "jsonl empty", format: FormatJSONL, input: ""},
		{name: "jsonl every bad input", format: FormatJSONL, input: strings.Join([]string{
			`{"op":"get","product_coupon_id":"1","brand_id":"b","colour":"red"}`,               // 1
			`{"op":"get","product_coupon_id":"1","brand_id":"b","display_info":{"nam":"abc"}}`, // 2
			`{"op":"get",`,              // 3
			`{"op":"get"} {"op":"get"}`, // 4
			`[1,2]`,                     // 5
			`{"op":5}`,                  // 6
			`{"op":"delete"}`,           // 7
			`{"op":"deactivate","product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef","deactivate_reason":"r","display_info":{"name":"abc"}}`, // 8
			`{"op":"update","product_coupon_id":"1","brand_id":"b","out_request_no":"abc","display_info":{"name":"abc"}}`,                                // 9
			long, // 10
			`{"op":"get","product_coupon_id":"1","brand_id":"b"}`, // 11: fine
			`nul`,           // 12
			`"op"`,          // 13
			`{"op":"get"x}`, // 14
		}, "\n"),
			want: []Change{{Op: OpGet, ProductCouponID: "1", BrandID: "b"}},
			bad: map[int]string{
				1: `unknown field "colour"`, 2: `unknown field "nam"`, 3: "truncated JSON", 4: "unexpected data after",
				5: "must be a JSON object, got array", 6: "op: must be a JSON string, got number", 7: `must be update, deactivate or get, got "delete"`,
				8: "invalid display_info: not allowed", 9: "invalid out_request_no: must be 6–40", 10: "line longer than",
				12: "truncated JSON", 13: "must be a JSON object, got string", 14: "malformed JSON at byte 12",
			}},
		{name: "csv spec example", format: FormatCSV, input: specCSV, want: specChanges},
		{name: "csv columns in any order, optional ones left out, BOM, CRLF, blank lines", format: FormatCSV,
			input: "\xef\xbb\xbf brand_id , op,product_coupon_id\r\n\r\n120344,get,1000000013\r\n,,\r\n",
			want:  []Change{getChange("")}},
		{name: "csv empty", format: FormatCSV, input: ""},
		{name: "csv header only", format: FormatCSV, input: "op,product_coupon_id,brand_id\n"},
		{name: "csv unknown column", format: FormatCSV, input: "op,product_coupon_id,brand_id,colour\nget,1,b,red\n",
			bad: map[int]string{1: `header: unknown column "colour"`}},
		{name: "csv duplicate column", format: FormatCSV, input: "op,op,product_coupon_id,brand_id\n",
			bad: map[int]string{1: `column "op" appears twice`}},
		{name: "csv missing column", format: FormatCSV, input: "op,product_coupon_id\nget,1\n",
			bad: map[int]string{1: `header: missing column "brand_id"`}},
		{name: "csv malformed header", format: FormatCSV, input: "op,\"product\"_coupon_id,brand_id\nget,1,b\n",
			bad: map[int]string{1: `header: malformed CSV`}},
		{name: "csv every bad record", format: FormatCSV, input: strings.Join([]string{
			"op,product_coupon_id,brand_id,out_request_no,display_info,deactivate_reason",
			"get,1,b",                                // 2
			`update,1,b,abcdef,{"name":"abc"},`,      // 3: unquoted JSON splits into columns
			`update,1,b,abcdef,"{""nam"":""abc""}",`, // 4
			`update,1,b,abcdef,"{""name"":""abc""",`, // 5
			`update,1,b,abcdef,"[]",`,                // 6
			`get,1,b,x"y,,`,                          // 7
			`deactivate,1,b,abcdef,,`,                // 8
			`get,1,b,,,"multi`,                       // 9
			`line reason"`,                           // 10
			`get,1,b,,,`,                             // 11: fine
		}, "\n") + "\n",
			want: []Change{{Op: OpGet, ProductCouponID: "1", BrandID: "b"}},
			bad: map[int]string{
				2: "has 3 fields, the header has 6", 3: `bare " in non-quoted-field`, 4: `display_info: json: unknown field "nam"`,
				5: "display_info: truncated JSON", 6: "display_info: must be a JSON object, got array", 7: "malformed CSV at column",
				8: "invalid deactivate_reason: required", 9: "invalid deactivate_reason: not allowed",
			}},
		{name: "csv unterminated quote runs to the end", format: FormatCSV,
			input: "op,product_coupon_id,brand_id\nget,1,b\nget,\"1,b\nget,1,b\n",
			want:  []Change{{Op: OpGet, ProductCouponID: "1", BrandID: "b"}},
			bad:   map[int]string{3: `extraneous or missing " in quoted-field`}},
		{name: "csv line too long ends the file", format: FormatCSV,
			input: "op,product_coupon_id,brand_id\nget,1,b\nget,1," + strings.Repeat("b", maxLineBytes) + "\nget,1,b\n",
			want:  []Change{{Op: OpGet, ProductCouponID: "1", BrandID: "b"}},
			bad:   map[int]string{3: "line longer than"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, bad := readAll(t, tt.input, tt.format)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
			if len(bad) != len(tt.bad) {
				t.Errorf("bad lines = %v, want lines %v", bad, tt.bad)
			}
			for line, want := range tt.bad {
				if !strings.Contains(bad[line], want) {
					t.Errorf("line %d: reason %q, want it to contain %q", line, bad[line], want)
				}
			}
		})
	}
}

func TestChangeReaderValidationErrorsUnwrap(t *testing.T) {
	t.Parallel()
	r := NewChangeReader(strings.NewReader(`{"op":"get","product_coupon_id":"","brand_id":"b"}`), FormatJSONL)
	_, err := r.Next()
	var ve *wechatpay.ValidationError
	if !errors.As(err, &ve) || ve.Field != "product_coupon_id" {
		t.Fatalf("err = %v, want a *wechatpay.ValidationError for product_coupon_id", err)
	}
	if err.Error() != "line 1: wechatpay: invalid product_coupon_id: required" {
		t.Errorf("message = %q", err)
	}
}

func TestChangeReaderReadError(t *testing.T) {
	t.Parallel()
	boom := errors.New("disk on fire")
	for _, f := range []Format{FormatJSONL, FormatCSV} {
		r2 := NewChangeReader(iotest.ErrReader(boom), f)
		for range 2 { // the error is final
			_, err := r2.Next()
			var le *LineError
			if !errors.Is(err, boom) || errors.As(err, &le) {
				t.Fatalf("%s: err = %v, want the read error, not a line error", f, err)
			}
		}
	}
	if _, err := NewChangeReader(strings.NewReader(""), "xml").Next(); err == nil || !strings.Contains(err.Error(), `unknown change file format "xml"`) {
		t.Errorf("unknown format: %v", err)
	}
}

func TestChangeReaderAll(t *testing.T) {
	t.Parallel()
	r := NewChangeReader(strings.NewReader(specJSONL+"{}\n"), FormatJSONL)
	n, bad := 0, 0
	for _, err := range r.All() {
		if err != nil {
			bad++
		} else {
			n++
		}
	}
	if n != 3 || bad != 1 {
		t.Errorf("All yielded %d changes and %d errors, want 3 and 1", n, bad)
	}
}

func TestFormatOf(t *testing.T) {
	t.Parallel()
	for path, want := range map[string]Format{"a.jsonl": FormatJSONL, "dir/A.NDJSON": FormatJSONL, "x.csv": FormatCSV, "x.json": "", "x": ""} {
		got, err := FormatOf(path)
		if got != want || (err != nil) != (want == "") {
			t.Errorf("FormatOf(%q) = %q, %v; want %q", path, got, err, want)
		}
	}
}

// fuzzReader checks the reader's promises on any input: it ends, every
// change it returns is valid and survives a payload round trip, every bad
// line has a line number within the input.
func fuzzReader(t *testing.T, input string, f Format) {
	r := NewChangeReader(strings.NewReader(input), f)
	lines := strings.Count(input, "\n") + 1
	for range len(input) + 2 {
		c, err := r.Next()
		var le *LineError
		switch {
		case errors.Is(err, io.EOF):
			return
		case errors.As(err, &le):
			if le.Line < 1 || le.Line > lines {
				t.Fatalf("line %d outside 1..%d: %v", le.Line, lines, err)
			}
			continue
		case err != nil:
			t.Fatalf("final error from a string reader: %v", err)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("returned an invalid change %+v: %v", c, err)
		}
		if c.OutRequestNo == "" {
			c.OutRequestNo = "fuzz_orn"
		}
		task, err := c.Task()
		if err != nil {
			t.Fatalf("Task of a valid change: %v", err)
		}
		back, err := DecodePayload(task.Type(), task.Payload())
		if err != nil {
			t.Fatalf("DecodePayload(%s): %v", task.Payload(), err)
		}
		if diff := cmp.Diff(c, back.Change()); diff != "" {
			t.Fatalf("round trip (-want +got):\n%s", diff)
		}
	}
	t.Fatal("reader does not end")
}

func FuzzJSONL(f *testing.F) {
	f.Add(specJSONL)
	f.Add("\n\n" + `{"op":"get","product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef"}` + "\r\n{")
	f.Add(`{"op":"update","product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef","display_info":{"combo_package_list":[{"name":"p","pick_count":1,"choice_list":[{"name":"c","count":1,"price":100}]}]}}`)
	f.Add(`{"op":"deactivate","product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef","deactivate_reason":"\u0000"}`)
	f.Add("\xef\xbb\xbf[]\nnull\n\"x\"")
	f.Fuzz(func(t *testing.T, input string) { fuzzReader(t, input, FormatJSONL) })
}

func FuzzCSV(f *testing.F) {
	f.Add(specCSV)
	f.Add("op,product_coupon_id,brand_id\nget,1,b\nget,\"1,b\n")
	f.Add("brand_id,op,product_coupon_id,display_info,out_request_no\nb,update,1,\"{\"\"name\"\":\"\"abc\"\"}\",abcdef\n")
	f.Add("op,product_coupon_id,brand_id,colour\n")
	f.Add("\"op\nx\",a\r\n\"")
	f.Fuzz(func(t *testing.T, input string) { fuzzReader(t, input, FormatCSV) })
}

// TestChangeReaderRefusesBadText: text that is not the file's own (invalid
// UTF-8, which decoding would replace with U+FFFD, or a lone surrogate
// escape), control characters and out-of-range money are refused with their
// line number, in JSONL and in CSV.
func TestChangeReaderRefusesBadText(t *testing.T) {
	t.Parallel()
	upd := func(display string) string {
		return `{"op":"update","product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef","display_info":` + display + `}`
	}
	dea := func(reason string) string {
		return `{"op":"deactivate","product_coupon_id":"1","brand_id":"b","out_request_no":"abcdef","deactivate_reason":"` + reason + `"}`
	}
	tests := []struct {
		name   string
		format Format
		input  string
		bad    map[int]string
	}{
		{"jsonl", FormatJSONL, strings.Join([]string{
			upd("{\"name\":\"满减\xff券\"}"),                              // 1: raw invalid byte
			upd(`{"name":"满减\ud800券"}`),                                // 2: lone surrogate escape
			upd(`{"name":"满减\u0000券"}`),                                // 3: NUL
			upd(`{"name":"\u001b[31m满减券"}`),                            // 4: ESC
			dea(`批次信息有误\u0000`),                                        // 5
			dea(`\u001b]0;x\u0007批次`),                                  // 6
			dea("批次\xc3信息"),                                            // 7
			upd(`{"name":"满减券","original_price":9223372036854775807}`), // 8
			upd(`{"name":"满减券","combo_package_list":[{"name":"主食","pick_count":1,"choice_list":[{"name":"汉堡","price":9223372036854775807,"count":1}]}]}`), // 9
			upd(`{"name":"满减券","original_price":9007199254740991}`), // 10: fine
		}, "\n"), map[int]string{
			1: "line 1: invalid UTF-8 at byte", 2: "invalid display_info.name: holds U+FFFD", 3: "invalid display_info.name: must not hold control characters, got U+0000",
			4: "U+001B", 5: "invalid deactivate_reason: must not hold control characters, got U+0000", 6: "invalid deactivate_reason", 7: "invalid UTF-8 at byte",
			8: "invalid display_info.original_price: must be at most 9007199254740991", 9: "choice_list[0].price: must be at most",
		}},
		{"csv", FormatCSV, strings.Join([]string{
			"op,product_coupon_id,brand_id,out_request_no,display_info,deactivate_reason",
			"deactivate,1,b,abcdef,,批次\xff信息",                                                // 2
			"update,1,b,abcdef,\"{\"\"name\"\":\"\"满减\xff券\"\"}\",",                          // 3: inside the JSON column
			"deactivate,1,b,abcdef,,批次\x00信息",                                                // 4
			"deactivate,1,b,abcdef,,\x1b[2J批次信息",                                             // 5
			`update,1,b,abcdef,"{""name"":""满减\u0000券""}",`,                                  // 6
			`update,1,b,abcdef,"{""name"":""满减券"",""original_price"":9223372036854775807}",`, // 7
			"deactivate,1,b,abcdef,,批次信息",                                                    // 8: fine
		}, "\n") + "\n", map[int]string{
			2: "column deactivate_reason: invalid UTF-8 at byte 7", 3: "column display_info: invalid UTF-8", 4: "U+0000", 5: "U+001B", 6: "U+0000", 7: "original_price: must be at most",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, bad := readAll(t, tt.input, tt.format)
			if len(got) != 1 {
				t.Errorf("%d changes accepted, want the one good line: %+v", len(got), got)
			}
			if len(bad) != len(tt.bad) {
				t.Errorf("bad lines = %v, want lines %v", bad, tt.bad)
			}
			for line, want := range tt.bad {
				if !strings.Contains(fmt.Sprintf("line %d: %s", line, bad[line]), want) {
					t.Errorf("line %d: reason %q, want it to contain %q", line, bad[line], want)
				}
			}
		})
	}
}

func TestPayloadSet(t *testing.T) {
	t.Parallel()
	var s PayloadSet
	steps := []struct {
		id, payload  string
		line         int
		wantFirst    int
		wantConflict bool
	}{
		{"update:1:a", `{"x":1}`, 1, 0, false},
		{"update:1:b", `{"x":1}`, 2, 0, false},
		{"update:1:a", `{"x":1}`, 3, 1, false}, // a duplicate line
		{"update:1:a", `{"x":2}`, 4, 1, true},  // another payload
		{"deactivate:1:a", `{"x":2}`, 5, 0, false},
	}
	for _, st := range steps {
		first, conflict := s.Add(st.id, []byte(st.payload), st.line)
		if first != st.wantFirst || conflict != st.wantConflict {
			t.Errorf("line %d: Add(%s, %s) = %d, %v; want %d, %v", st.line, st.id, st.payload, first, conflict, st.wantFirst, st.wantConflict)
		}
	}
	if s.Len() != 3 {
		t.Errorf("Len = %d, want 3", s.Len())
	}
}

// TestPayloadSetMemory bounds what validation keeps per task ID, whatever
// the lengths of IDs and payloads: couponq enqueue validating 1 000 000
// lines must stay well under its 150 MiB goal (issue 14). The heap is
// measured after a GC with the set alive; other tests run in parallel, so
// the bound has room, but a set keeping lines or strings (~200 bytes a
// task here) fails it.
func TestPayloadSetMemory(t *testing.T) {
	const n = 200_000
	payload := []byte(strings.Repeat(`{"display_info":{"name":"满100减10"}}`, 4))
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("update:120344:a_rather_long_out_request_no_%08d", i)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var s PayloadSet
	for i, id := range ids {
		s.Add(id, payload, i+1)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(&s)
	runtime.KeepAlive(ids)
	perID := (float64(after.HeapAlloc) - float64(before.HeapAlloc)) / n
	t.Logf("%.1f bytes of heap per task ID", perID)
	if perID > 80 {
		t.Errorf("PayloadSet keeps %.1f bytes a task ID, want ≤ 80", perID)
	}
}
