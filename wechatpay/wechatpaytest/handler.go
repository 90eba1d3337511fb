package wechatpaytest

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/couponq/couponq/wechatpay"
)

// Operations, as logged in Request.Op and Effect.Op.
const (
	OpUpdate       = "update"
	OpDeactivate   = "deactivate"
	OpGet          = "get"
	OpCertificates = "certificates"
)

// Path prefixes of the product-coupon endpoints.
const (
	partnerPrefix = wechatpay.PartnerProductCouponsPath + "/"
	brandPrefix   = wechatpay.BrandProductCouponsPath + "/"
)

// Internal error numbers the fake appends to Request-ID.
const (
	internalOK            = 0
	internalGeneric       = 268500000
	internalRepeat        = 268578926
	internalStateConflict = 268578940
)

// route maps method and path to an operation. ok is false for an unknown
// path; a known path with the wrong method gives op "" and ok true.
func route(method, path string) (op, couponID string, brandPath, ok bool) {
	if path == wechatpay.CertificatesPath {
		if method != http.MethodGet {
			return "", "", false, true
		}
		return OpCertificates, "", false, true
	}
	var rest string
	switch {
	case strings.HasPrefix(path, partnerPrefix):
		rest = path[len(partnerPrefix):]
	case strings.HasPrefix(path, brandPrefix):
		rest, brandPath = path[len(brandPrefix):], true
	default:
		return "", "", false, false
	}
	id, suffix, _ := strings.Cut(rest, "/")
	if id == "" {
		return "", "", brandPath, false
	}
	switch {
	case suffix == "" && method == http.MethodPatch:
		return OpUpdate, id, brandPath, true
	case suffix == "" && method == http.MethodGet:
		return OpGet, id, brandPath, true
	case suffix == "deactivate" && method == http.MethodPost:
		return OpDeactivate, id, brandPath, true
	case suffix == "" || suffix == "deactivate":
		return "", id, brandPath, true
	}
	return "", "", brandPath, false
}

// answer is what the fake sends back.
type answer struct {
	status   int
	code     string
	message  string
	detail   any
	internal int
	body     []byte // a 2xx body
}

func errAnswer(status int, code string, internal int, format string, args ...any) *answer {
	return &answer{status: status, code: code, internal: internal, message: fmt.Sprintf(format, args...)}
}

// writeBody is the JSON body of a write request.
type writeBody struct {
	BrandID          *string         `json:"brand_id"`
	OutRequestNo     string          `json:"out_request_no"`
	DisplayInfo      json.RawMessage `json:"display_info"`
	DeactivateReason string          `json:"deactivate_reason"`
}

// ServeHTTP answers one API call.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := s.now()
	if j := s.drawJitter(); j > 0 {
		// The network's delay comes before the fake sees the call, so the
		// ceiling judges it at its arrival here.
		if s.cfg.now != nil {
			now = now.Add(j)
		} else {
			if !sleepCtx(r, j) {
				return
			}
			now = s.now()
		}
	}
	rec := Request{Time: now, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Serial: r.Header.Get("Wechatpay-Serial")}
	defer func() { s.logRequest(rec) }()

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		s.reply(w, &rec, errAnswer(400, wechatpay.CodeParamError, internalGeneric, "body unreadable or over 1 MiB"), sigGood)
		return
	}
	if d := s.cfg.latency; d > 0 {
		if !sleepCtx(r, d) {
			return
		}
	}
	if err := s.authenticate(r, body, now); err != nil {
		s.reply(w, &rec, errAnswer(401, wechatpay.CodeSignError, internalGeneric, "%v", err), sigGood)
		return
	}
	if r.Method != http.MethodGet {
		rec.Body = body
	}
	if r.Header.Get("User-Agent") == "" {
		s.reply(w, &rec, errAnswer(400, wechatpay.CodeInvalidRequest, internalGeneric, "User-Agent header missing"), sigGood)
		return
	}
	if r.Header.Get("Accept") == "" {
		// The rule book: send Accept: application/json.
		s.reply(w, &rec, errAnswer(400, wechatpay.CodeInvalidRequest, internalGeneric, "Accept header missing"), sigGood)
		return
	}
	if r.Method == http.MethodPatch || r.Method == http.MethodPost {
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			s.reply(w, &rec, errAnswer(400, wechatpay.CodeInvalidRequest, internalGeneric, "Content-Type must be application/json, got %.64q", r.Header.Get("Content-Type")), sigGood)
			return
		}
	}
	op, couponID, brandPath, ok := route(r.Method, r.URL.Path)
	rec.Op, rec.CouponID = op, couponID
	if !ok {
		s.reply(w, &rec, errAnswer(404, wechatpay.CodeNotFound, wechatpay.InternalNotFound, "no such API"), sigGood)
		return
	}
	if op == "" {
		s.reply(w, &rec, errAnswer(405, wechatpay.CodeInvalidRequest, internalGeneric, "method %s not allowed here", r.Method), sigGood)
		return
	}
	if op == OpCertificates {
		s.serveCertificates(w, &rec)
		return
	}
	if brandPath != (s.cfg.mode == wechatpay.ModeBrand) {
		s.reply(w, &rec, errAnswer(401, wechatpay.CodeSignError, internalGeneric, "path and Authorization scheme belong to different access modes"), sigGood)
		return
	}
	serial := r.Header.Get("Wechatpay-Serial")
	switch {
	case serial == "" && s.cfg.mode == wechatpay.ModeBrand:
		s.reply(w, &rec, errAnswer(400, wechatpay.CodeParamError, internalGeneric, "Wechatpay-Serial header missing"), sigGood)
		return
	case serial != "" && s.cfg.mode == wechatpay.ModeBrand && !s.knownSerial(serial):
		s.reply(w, &rec, errAnswer(400, wechatpay.CodeParamError, internalGeneric, "Wechatpay-Serial %.64q is not a current WeChat Pay key", serial), sigGood)
		return
	case serial != "" && !s.issuedSerial(serial):
		// Optional in partner mode, but one that names no key WeChat Pay
		// ever issued is a client bug. A retired certificate's serial
		// still names a key: a client may not have refreshed yet.
		s.reply(w, &rec, errAnswer(400, wechatpay.CodeParamError, internalGeneric, "Wechatpay-Serial %.64q names no WeChat Pay key", serial), sigGood)
		return
	}

	// Who is asking, and for which brand.
	var wb writeBody
	brandMode := s.cfg.mode == wechatpay.ModeBrand
	if op != OpGet {
		if a := decodeWriteBody(body, &wb); a != nil {
			s.reply(w, &rec, a, sigGood)
			return
		}
		if brandMode && wb.BrandID != nil {
			// Brand mode: the Authorization header names the brand.
			s.reply(w, &rec, errAnswer(400, wechatpay.CodeParamError, internalGeneric, "brand_id is not a field of the brand-mode API"), sigGood)
			return
		}
	} else if q, ok := r.URL.Query()["brand_id"]; ok {
		if brandMode && (len(q) != 1 || q[0] != s.cfg.brandID) {
			s.reply(w, &rec, errAnswer(400, wechatpay.CodeParamError, internalGeneric, "brand_id %.40q is not the brand of the Authorization header", strings.Join(q, ",")), sigGood)
			return
		}
		wb.BrandID = &q[0]
	}
	brand := ""
	if wb.BrandID != nil {
		brand = *wb.BrandID
	}
	if brandMode {
		brand = s.cfg.brandID
	}
	rec.BrandID, rec.OutRequestNo = brand, wb.OutRequestNo

	// Scripted and random faults, then the QPS ceiling: none of these process the request.
	if a := s.popScripted(); a != nil {
		rec.Fault = FaultScripted
		s.reply(w, &rec, a, sigGood)
		return
	}
	key := limitKey{op, s.Identity()}
	if !s.limiter.admit(key, now) {
		rec.Fault = FaultQPS
		s.replyRateLimited(w, &rec)
		return
	}
	if s.drawSpurious() {
		// Answered exactly as over the ceiling: a client cannot tell them apart.
		rec.Fault = FaultSpurious429
		s.limiter.countSpurious(key)
		s.replyRateLimited(w, &rec)
		return
	}
	fault, delay := s.drawFault()
	if delay > 0 && !sleepCtx(r, delay) {
		return
	}
	switch fault {
	case Fault500:
		rec.Fault = fault
		s.reply(w, &rec, errAnswer(500, wechatpay.CodeSystemError, internalGeneric, "系统错误"), sigGood)
		return
	case Fault503:
		rec.Fault = fault
		s.reply(w, &rec, errAnswer(503, wechatpay.CodeServiceUnavailable, internalGeneric, "服务不可用"), sigGood)
		return
	case Fault429:
		rec.Fault = fault
		s.limiter.countSpurious(key)
		s.reply(w, &rec, errAnswer(429, wechatpay.CodeRateLimitExceeded, internalGeneric, "请求频率超过限制"), sigGood)
		return
	}

	var a *answer
	switch op {
	case OpUpdate:
		a = s.update(couponID, brand, &wb, now)
	case OpDeactivate:
		a = s.deactivate(couponID, brand, &wb, now)
	case OpGet:
		a = s.get(couponID, brand)
	}
	rec.Fault = fault
	switch fault {
	case FaultDropAfterApply:
		rec.Status = 0
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler) // closes the connection without an answer
	case FaultBadSignature:
		s.reply(w, &rec, a, sigBad)
	case FaultSignTest:
		s.reply(w, &rec, a, sigTest)
	case FaultStaleTimestamp:
		s.reply(w, &rec, a, sigStale)
	default:
		s.reply(w, &rec, a, sigGood)
	}
}

// decodeWriteBody decodes exactly one JSON object: anything after it is
// refused, as a parser of the whole body would.
func decodeWriteBody(body []byte, wb *writeBody) *answer {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(wb); err != nil {
		return errAnswer(400, wechatpay.CodeParamError, internalGeneric, "body is not the expected JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errAnswer(400, wechatpay.CodeParamError, internalGeneric, "body has data after its JSON object")
	}
	return nil
}

// replyRateLimited answers 429 RATELIMIT_EXCEEDED as WeChat Pay does over
// its quota.
func (s *Server) replyRateLimited(w http.ResponseWriter, rec *Request) {
	w.Header().Set("Retry-After", "1")
	s.reply(w, rec, errAnswer(429, wechatpay.CodeRateLimitExceeded, internalGeneric, "请求频率超过限制"), sigGood)
}

// sleepCtx waits d or until the client goes away; false means it went.
func sleepCtx(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// reply writes a signed answer and completes rec.
func (s *Server) reply(w http.ResponseWriter, rec *Request, a *answer, mode sigMode) {
	body := a.body
	if a.status >= 300 {
		eb := map[string]any{"code": a.code, "message": a.message}
		if a.detail != nil {
			eb["detail"] = a.detail
		}
		body, _ = json.Marshal(eb)
	}
	rid := s.ridPrefix + fmt.Sprintf("%016X", s.reqSeq.Add(1)) + "-" + strconv.Itoa(a.internal)
	h := w.Header()
	h["Content-Type"] = []string{"application/json; charset=utf-8"}
	h["Request-Id"] = []string{rid}
	// The fake's own clock, as WeChat Pay's Date is WeChat Pay's: a client
	// measuring its skew from it sees WithClock and WithClockSkew.
	h["Date"] = []string{s.now().UTC().Format(http.TimeFormat)}
	s.signHeaders(h, body, mode, rec.Op == OpCertificates, rec.Serial)
	w.WriteHeader(a.status)
	_, _ = w.Write(body)
	rec.Status, rec.Code, rec.RequestID = a.status, a.code, rid
}

// certificatesAnswer is the JSON of GET /v3/certificates.
type certificatesAnswer struct {
	Data []certificateData `json:"data"`
}

type certificateData struct {
	SerialNo           string         `json:"serial_no"`
	EffectiveTime      string         `json:"effective_time"`
	ExpireTime         string         `json:"expire_time"`
	EncryptCertificate encryptedBlock `json:"encrypt_certificate"`
}

type encryptedBlock struct {
	Algorithm      string `json:"algorithm"`
	Nonce          string `json:"nonce"`
	AssociatedData string `json:"associated_data"`
	Ciphertext     string `json:"ciphertext"`
}

// serveCertificates lists the platform certificates, each encrypted with
// the APIv3 key; 404 RESOURCE_NOT_EXISTS in PublicKeyMode, as for merchants
// registered lately.
func (s *Server) serveCertificates(w http.ResponseWriter, rec *Request) {
	if !s.cfg.keyMode.hasCertificates() {
		s.reply(w, rec, errAnswer(404, wechatpay.CodeNotFound, wechatpay.InternalNotFound, "无可用的平台证书，请使用微信支付公钥"), sigGood)
		return
	}
	block, _ := aes.NewCipher([]byte(s.cfg.apiV3Key))
	aead, _ := cipher.NewGCM(block)
	var ans certificatesAnswer
	s.certMu.RLock()
	for _, c := range s.certs {
		nonce := randomAlnum(12)
		ct := aead.Seal(nil, []byte(nonce), c.pem, []byte("certificate"))
		ans.Data = append(ans.Data, certificateData{
			SerialNo:      c.serial,
			EffectiveTime: c.notBefore.In(cst).Format(time.RFC3339),
			ExpireTime:    c.notAfter.In(cst).Format(time.RFC3339),
			EncryptCertificate: encryptedBlock{
				Algorithm: "AEAD_AES_256_GCM", Nonce: nonce, AssociatedData: "certificate",
				Ciphertext: base64.StdEncoding.EncodeToString(ct),
			},
		})
	}
	s.certMu.RUnlock()
	body, _ := json.Marshal(ans)
	s.reply(w, rec, &answer{status: 200, body: body}, sigGood)
}

// cst is China Standard Time, the zone of WeChat Pay's timestamps.
var cst = time.FixedZone("CST", 8*3600)
