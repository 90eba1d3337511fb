package wechatpaytest

import (
	"fmt"
	"sync"
	"time"
)

// QPSModel is how the fake enforces the WithQPS ceiling. WeChat Pay
// documents only "20 requests per second"; the models differ in how they
// read it.
type QPSModel int

// QPS models.
const (
	// SlidingWindow (the default) admits at most n calls in any one-second
	// window: the strictest reading of the quota, so a client that passes
	// it passes whatever WeChat Pay really does.
	SlidingWindow QPSModel = iota
	// TokenBucket holds n tokens, refilled at n per second. It forgives a
	// burst after a pause, so up to 2n calls can land in one second.
	TokenBucket
)

// String returns the name `couponq mock --qps-model` takes.
func (m QPSModel) String() string {
	switch m {
	case SlidingWindow:
		return "sliding"
	case TokenBucket:
		return "token-bucket"
	}
	return fmt.Sprintf("QPSModel(%d)", int(m))
}

// EndpointStats counts what the ceiling did to one endpoint's calls. Each
// call that reaches the ceiling counts once, in Admitted or in OverCeiling;
// Spurious429 is a part of Admitted.
type EndpointStats struct {
	// Admitted counts calls let through the ceiling, including those then
	// answered 429 anyway.
	Admitted int
	// OverCeiling counts 429s for calls over the ceiling (Request.Fault
	// FaultQPS).
	OverCeiling int
	// Spurious429 counts admitted calls answered 429 anyway, by
	// WithSpurious429 (FaultSpurious429) or Faults.Status429 (Fault429).
	Spurious429 int
	// MaxInWindow is the most admitted calls seen in any sliding one-second
	// window. Under SlidingWindow it never exceeds the WithQPS ceiling.
	MaxInWindow int
}

// Stats returns the counters of each product-coupon endpoint seen so far,
// keyed by OpUpdate, OpDeactivate and OpGet. They are kept with or without
// a ceiling, so a benchmark can measure the burst a client sends.
func (s *Server) Stats() map[string]EndpointStats {
	return s.limiter.stats()
}

// limiter is the per-endpoint, per-identity ceiling and its counters.
type limiter struct {
	mu    sync.Mutex
	n     int
	model QPSModel
	keys  map[limitKey]*keyState
}

type limitKey struct{ op, identity string }

type keyState struct {
	log    admissionLog
	tokens float64 // TokenBucket only
	last   time.Time
	stats  EndpointStats
}

func (l *limiter) init(n int, model QPSModel) {
	l.n, l.model = n, model
	l.keys = map[limitKey]*keyState{}
}

func (l *limiter) state(k limitKey, now time.Time) *keyState {
	ks, ok := l.keys[k]
	if !ok {
		ks = &keyState{tokens: float64(l.n), last: now}
		ks.log.buf = make([]time.Time, max(l.n, 1))
		l.keys[k] = ks
	}
	return ks
}

// admit decides whether a call at now is within the ceiling and, if so,
// records it.
func (l *limiter) admit(k limitKey, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ks := l.state(k, now)
	// The log must be in time order. A call whose clock reading lost the
	// race to another's is judged at the later time.
	if newest, ok := ks.log.newest(); ok && now.Before(newest) {
		now = newest
	}
	ks.log.expire(now)
	ok := true
	switch {
	case l.n <= 0:
	case l.model == TokenBucket:
		if el := now.Sub(ks.last); el > 0 {
			ks.tokens = min(float64(l.n), ks.tokens+el.Seconds()*float64(l.n))
			ks.last = now
		}
		if ok = ks.tokens >= 1; ok {
			ks.tokens--
		}
	default:
		ok = ks.log.len() < l.n
	}
	if !ok {
		ks.stats.OverCeiling++
		return false
	}
	ks.log.push(now)
	ks.stats.Admitted++
	ks.stats.MaxInWindow = max(ks.stats.MaxInWindow, ks.log.len())
	return true
}

// countSpurious records that an admitted call was answered 429 anyway.
func (l *limiter) countSpurious(k limitKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ks, ok := l.keys[k]; ok {
		ks.stats.Spurious429++
	}
}

func (l *limiter) stats() map[string]EndpointStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]EndpointStats{}
	for k, ks := range l.keys {
		st := out[k.op]
		st.Admitted += ks.stats.Admitted
		st.OverCeiling += ks.stats.OverCeiling
		st.Spurious429 += ks.stats.Spurious429
		st.MaxInWindow = max(st.MaxInWindow, ks.stats.MaxInWindow)
		out[k.op] = st
	}
	return out
}

// admissionLog holds the admission times of the last second, oldest
// first, in a ring. Under SlidingWindow it never holds more than the
// ceiling n, so the ring allocated with n slots never grows; the other
// models grow it to the busiest second seen.
type admissionLog struct {
	buf   []time.Time
	start int
	n     int
}

func (a *admissionLog) len() int { return a.n }

func (a *admissionLog) newest() (time.Time, bool) {
	if a.n == 0 {
		return time.Time{}, false
	}
	return a.buf[(a.start+a.n-1)%len(a.buf)], true
}

// expire drops the admissions a full second or more before now: a call
// exactly one second after the oldest is in a new window.
func (a *admissionLog) expire(now time.Time) {
	for a.n > 0 && now.Sub(a.buf[a.start]) >= time.Second {
		a.start = (a.start + 1) % len(a.buf)
		a.n--
	}
}

func (a *admissionLog) push(t time.Time) {
	if a.n == len(a.buf) {
		grown := make([]time.Time, 2*len(a.buf))
		for i := range a.n {
			grown[i] = a.buf[(a.start+i)%len(a.buf)]
		}
		a.buf, a.start = grown, 0
	}
	a.buf[(a.start+a.n)%len(a.buf)] = t
	a.n++
}
