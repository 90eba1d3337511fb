package wechatpaytest

import (
	"crypto/sha256"
	"encoding/json"
	"strconv"
	"time"

	"github.com/couponq/couponq/wechatpay"
)

// Fault names, as logged in Request.Fault.
const (
	FaultScripted       = "scripted"         // FailNext
	FaultQPS            = "qps"              // the WithQPS ceiling
	FaultSpurious429    = "spurious_429"     // admitted by the ceiling, RATELIMIT_EXCEEDED anyway (WithSpurious429)
	Fault500            = "500"              // SYSTEM_ERROR before applying
	Fault503            = "503"              // SERVICE_UNAVAILABLE before applying
	Fault429            = "429"              // RATELIMIT_EXCEEDED before applying
	FaultDropAfterApply = "drop_after_apply" // applied, then the connection closed without an answer
	FaultBadSignature   = "bad_signature"    // processed, answer signature corrupted
	FaultSignTest       = "signtest"         // processed, WECHATPAY/SIGNTEST/ signature
	FaultStaleTimestamp = "stale_timestamp"  // processed, answer timestamp 10 minutes old
)

// Faults are drawn per product-coupon request (never for /v3/certificates)
// from the WithSeed generator. Each field is a probability in [0, 1]; their
// sum should not exceed 1. Latency adds a uniform random delay in
// [0, Latency) to every request.
type Faults struct {
	Status500      float64
	Status503      float64
	Status429      float64
	DropAfterApply float64
	BadSignature   float64
	SignTest       float64
	StaleTimestamp float64
	Latency        time.Duration
}

// Request is one entry of the request log.
type Request struct {
	Time         time.Time // when the fake got it, after any WithJitter delay
	Method       string
	Path         string
	Op           string // OpUpdate, OpDeactivate, OpGet, OpCertificates; "" when unrouted
	CouponID     string
	BrandID      string
	OutRequestNo string
	Status       int    // 0 when the connection was dropped
	Code         string // error code answered
	RequestID    string
	Fault        string // one of the Fault* names, "" for none
	Query        string // the raw query
	Body         []byte // a write's body as received (once the signature checked out)
	Serial       string // the request's Wechatpay-Serial; in BothKeyModes the answer is signed by the key it names
}

// Effect is one change the fake applied.
type Effect struct {
	Time         time.Time
	Op           string // OpUpdate or OpDeactivate
	CouponID     string
	BrandID      string
	OutRequestNo string
}

type scripted struct {
	status int
	code   string
}

type idemKey struct{ brand, outRequestNo string }

type idemEntry struct {
	op       string
	couponID string
	digest   [32]byte
}

// FailNext makes the next product-coupon request answer status with code,
// without processing it. Calls queue up.
func (s *Server) FailNext(status int, code string) {
	s.mu.Lock()
	s.failNext = append(s.failNext, scripted{status, code})
	s.mu.Unlock()
}

func (s *Server) popScripted() *answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failNext) == 0 {
		return nil
	}
	f := s.failNext[0]
	s.failNext = s.failNext[1:]
	internal := internalGeneric
	switch f.code {
	case wechatpay.CodeNoAuth:
		internal = wechatpay.InternalNoAuth
	case wechatpay.CodeNotFound:
		internal = wechatpay.InternalNotFound
	}
	return errAnswer(f.status, f.code, internal, "scripted failure")
}

// SetFaults sets the random faults drawn for every later request.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	s.faults = f
	s.mu.Unlock()
}

// drawJitter draws the WithJitter delay of one request.
func (s *Server) drawJitter() time.Duration {
	lo, hi := s.cfg.jitterMin, s.cfg.jitterMax
	if hi <= 0 {
		return 0 // no draw, so seeded fault sequences stay as they were
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return lo + time.Duration(s.rng.Int64N(int64(hi-lo)+1))
}

// drawSpurious reports whether an admitted call is answered 429 anyway.
func (s *Server) drawSpurious() bool {
	if s.cfg.spurious <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Float64() < s.cfg.spurious
}

// drawFault draws this request's fault and extra latency.
func (s *Server) drawFault() (string, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.faults
	var delay time.Duration
	if f.Latency > 0 {
		delay = time.Duration(s.rng.Int64N(int64(f.Latency)))
	}
	if f.Status500+f.Status503+f.Status429+f.DropAfterApply+f.BadSignature+f.SignTest+f.StaleTimestamp <= 0 {
		return "", delay
	}
	u := s.rng.Float64()
	for _, c := range [...]struct {
		p    float64
		name string
	}{
		{f.Status500, Fault500}, {f.Status503, Fault503}, {f.Status429, Fault429},
		{f.DropAfterApply, FaultDropAfterApply}, {f.BadSignature, FaultBadSignature},
		{f.SignTest, FaultSignTest}, {f.StaleTimestamp, FaultStaleTimestamp},
	} {
		if u < c.p {
			return c.name, delay
		}
		u -= c.p
	}
	return "", delay
}

// SeedCoupons adds n EFFECTIVE coupons of brandID and returns their ids.
func (s *Server) SeedCoupons(brandID string, n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, n)
	for i := range ids {
		s.nextID++
		id := strconv.FormatUint(s.nextID, 10)
		ids[i] = id
		s.coupons[id] = &wechatpay.ProductCoupon{
			ProductCouponID: id,
			State:           wechatpay.StateEffective,
			BrandID:         brandID,
			Scope:           "ALL",
			Type:            "NORMAL",
			UsageMode:       "SINGLE",
			SingleUsageInfo: &wechatpay.SingleUsageInfo{NormalCoupon: &wechatpay.NormalCoupon{Threshold: 10000, DiscountAmount: 1000}},
			// Everything a whole display_info holds, so a test sees what an
			// update keeps (pick 3 of one choice: no rule bounds pick_count).
			DisplayInfo: &wechatpay.DisplayInfo{
				Name:          "满100减10元券",
				ImageURL:      "https://wxpaylogo.qpic.cn/wxpaylogo/seed/" + id + ".png",
				BackgroundURL: "https://wxpaylogo.qpic.cn/wxpaylogo/seed/" + id + "_bg.png",
				DetailImageURLList: []string{
					"https://wxpaylogo.qpic.cn/wxpaylogo/seed/" + id + "_d1.png",
					"https://wxpaylogo.qpic.cn/wxpaylogo/seed/" + id + "_d2.png",
				},
				OriginalPrice: 10000,
				ComboPackageList: []wechatpay.ComboPackage{{Name: "主食", PickCount: 3, ChoiceList: []wechatpay.ComboChoice{
					{Name: "米饭", Price: 200, Count: 1, ImageURL: "https://wxpaylogo.qpic.cn/wxpaylogo/seed/rice.png"},
				}}},
			},
			OutProductNo: "seed_" + id,
		}
	}
	return ids
}

// AddCoupon adds (or replaces) a coupon. The fake keeps its own copy.
func (s *Server) AddCoupon(c wechatpay.ProductCoupon) {
	c = cloneCoupon(c)
	s.mu.Lock()
	s.coupons[c.ProductCouponID] = &c
	s.mu.Unlock()
}

// Coupon returns a copy of a coupon's current state.
func (s *Server) Coupon(id string) (wechatpay.ProductCoupon, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.coupons[id]
	if !ok {
		return wechatpay.ProductCoupon{}, false
	}
	return cloneCoupon(*c), true
}

// cloneCoupon deep-copies c through JSON, dropping Raw.
func cloneCoupon(c wechatpay.ProductCoupon) wechatpay.ProductCoupon {
	b, err := json.Marshal(c)
	if err != nil {
		panic("wechatpaytest: " + err.Error())
	}
	var out wechatpay.ProductCoupon
	if err := json.Unmarshal(b, &out); err != nil {
		panic("wechatpaytest: " + err.Error())
	}
	return out
}

// Requests returns a copy of the request log, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, 0, len(s.requests))
	out = append(out, s.requests[s.reqStart:]...)
	return append(out, s.requests[:s.reqStart]...)
}

func (s *Server) logRequest(r Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.requestLimit > 0 && len(s.requests) >= s.cfg.requestLimit {
		s.requests[s.reqStart] = r
		s.reqStart = (s.reqStart + 1) % len(s.requests)
		return
	}
	s.requests = append(s.requests, r)
}

// Effects returns a copy of the changes applied, in order.
func (s *Server) Effects() []Effect {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Effect(nil), s.effects...)
}

// AppliedCount reports how many times a change with this out_request_no
// was applied, over all brands. Idempotency means it is never above 1.
func (s *Server) AppliedCount(outRequestNo string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied[outRequestNo]
}

// lookupLocked finds the coupon and checks the caller's brand owns it.
func (s *Server) lookupLocked(id, brand string) (*wechatpay.ProductCoupon, *answer) {
	c, ok := s.coupons[id]
	if !ok {
		return nil, errAnswer(404, wechatpay.CodeNotFound, wechatpay.InternalNotFound, "商品券不存在")
	}
	if c.BrandID != brand {
		return nil, errAnswer(403, wechatpay.CodeNoAuth, wechatpay.InternalNoAuth, "无权操作该品牌的商品券")
	}
	return c, nil
}

// checkRepeatLocked applies out_request_no idempotency. It returns nil for
// a new key, else the answer to a repeat or a conflict.
func (s *Server) checkRepeatLocked(k idemKey, e idemEntry, c *wechatpay.ProductCoupon) *answer {
	prev, ok := s.idem[k]
	if !ok {
		return nil
	}
	if prev != e {
		return errAnswer(400, wechatpay.CodeInvalidRequest, wechatpay.InternalOutRequestNoReused,
			"out_request_no 已使用，且请求数据与之前不同")
	}
	if s.cfg.repeat == RepeatError {
		return errAnswer(400, wechatpay.CodeAlreadyExists, internalRepeat, "out_request_no 对应的请求已处理")
	}
	return couponAnswer(c)
}

func couponAnswer(c *wechatpay.ProductCoupon) *answer {
	b, err := json.Marshal(c)
	if err != nil {
		return errAnswer(500, wechatpay.CodeSystemError, internalGeneric, "encoding")
	}
	return &answer{status: 200, body: b}
}

func digest(parts ...any) [32]byte {
	b, _ := json.Marshal(parts)
	return sha256.Sum256(b)
}

// update applies a PATCH the way that loses data if a client sends less
// than the whole display_info: WeChat Pay documents name, image_url and
// background_url as required and does not say whether PATCH merges or
// replaces, so the fake requires them and replaces display_info whole.
func (s *Server) update(id, brand string, wb *writeBody, now time.Time) *answer {
	if pe := s.checkWrite(brand, wb.OutRequestNo); pe != nil {
		return pe.answer()
	}
	d, pe := checkDisplayInfo(wb.DisplayInfo)
	if pe != nil {
		return pe.answer()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, a := s.lookupLocked(id, brand)
	if a != nil {
		return a
	}
	k := idemKey{brand, wb.OutRequestNo}
	e := idemEntry{op: OpUpdate, couponID: id, digest: digest(d)}
	if a := s.checkRepeatLocked(k, e, c); a != nil {
		return a
	}
	if c.State == wechatpay.StateDeactivated {
		return errAnswer(400, wechatpay.CodeInvalidRequest, internalStateConflict, "商品券已失效，不可修改")
	}
	next := *c // never mutate the old value: Coupon copies may share it
	next.DisplayInfo = d.model()
	s.coupons[id] = &next
	s.recordLocked(k, e, Effect{Time: now, Op: OpUpdate, CouponID: id, BrandID: brand, OutRequestNo: wb.OutRequestNo})
	return couponAnswer(&next)
}

// checkWrite applies the rules every write shares: a brand (partner mode
// sends it in the body) and the idempotency key's form.
func (s *Server) checkWrite(brand, outRequestNo string) *paramError {
	if brand == "" {
		return refuse("brand_id", "required")
	}
	return checkOutRequestNo(outRequestNo)
}

func (s *Server) deactivate(id, brand string, wb *writeBody, now time.Time) *answer {
	if pe := s.checkWrite(brand, wb.OutRequestNo); pe != nil {
		return pe.answer()
	}
	if pe := checkDeactivateReason(wb.DeactivateReason); pe != nil {
		return pe.answer()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, a := s.lookupLocked(id, brand)
	if a != nil {
		return a
	}
	k := idemKey{brand, wb.OutRequestNo}
	e := idemEntry{op: OpDeactivate, couponID: id, digest: digest(wb.DeactivateReason)}
	if a := s.checkRepeatLocked(k, e, c); a != nil {
		return a
	}
	if c.State != wechatpay.StateEffective {
		return errAnswer(400, wechatpay.CodeInvalidRequest, internalStateConflict, "商品券状态为%s，不可失效", c.State)
	}
	next := *c
	next.State = wechatpay.StateDeactivated
	next.DeactivateRequestNo = wb.OutRequestNo
	next.DeactivateReason = wb.DeactivateReason
	next.DeactivateTime = now.In(cst).Format(time.RFC3339)
	s.coupons[id] = &next
	s.recordLocked(k, e, Effect{Time: now, Op: OpDeactivate, CouponID: id, BrandID: brand, OutRequestNo: wb.OutRequestNo})
	return couponAnswer(&next)
}

func (s *Server) recordLocked(k idemKey, e idemEntry, eff Effect) {
	s.idem[k] = e
	s.applied[k.outRequestNo]++
	s.effects = append(s.effects, eff)
}

func (s *Server) get(id, brand string) *answer {
	if brand == "" {
		return refuse("brand_id", "required").answer()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, a := s.lookupLocked(id, brand)
	if a != nil {
		return a
	}
	return couponAnswer(c)
}
