package worker

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Throttling of failed basic-auth attempts, per client address. The first
// authFreeFailures failures are answered 401 at once; after that the
// address is refused with 429 (its credentials not even checked, so a
// right guess does not get in either) for authBaseDelay·2^k, k counting the
// failures beyond the free ones, up to authMaxDelay. A success, or
// authWindow without a failure, forgets the address.
const (
	authFreeFailures = 5
	authBaseDelay    = time.Second
	authMaxDelay     = 10 * time.Minute
	authWindow       = 30 * time.Minute
	// authMaxClients bounds the memory of the throttle (entries, the shared
	// one included). When it is full and none is stale, further addresses
	// share one entry: a spray from many addresses slows itself down rather
	// than evicting the addresses already throttled.
	authMaxClients = 4096
	authMaxAddrs   = authMaxClients - 1 // one is kept for the shared entry
	authOverflow   = "(overflow)"
)

// authThrottle remembers recent basic-auth failures by client address.
type authThrottle struct {
	now func() time.Time

	mu        sync.Mutex
	clients   map[string]*authFailures
	lastPrune time.Time
}

type authFailures struct {
	n     int       // failures in a row
	last  time.Time // of the last failure
	until time.Time // refused before this
}

func newAuthThrottle(now func() time.Time) *authThrottle {
	if now == nil {
		now = time.Now
	}
	return &authThrottle{now: now, clients: map[string]*authFailures{}}
}

// blocked reports how long the address must still wait, 0 if it may try.
func (t *authThrottle) blocked(key string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.lookup(key)
	if f == nil {
		return 0
	}
	if d := f.until.Sub(t.now()); d > 0 {
		return d
	}
	return 0
}

// lookup returns the entry of key (or of the overflow entry it shares),
// nil when there is none or it is stale. t.mu must be held.
func (t *authThrottle) lookup(key string) *authFailures {
	f, ok := t.clients[key]
	if !ok {
		f, ok = t.clients[authOverflow]
		if !ok || t.addrs() < authMaxAddrs {
			return nil
		}
	}
	if t.now().Sub(f.last) > authWindow {
		return nil
	}
	return f
}

// fail records a failure of key.
func (t *authThrottle) fail(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	f, ok := t.clients[key]
	if !ok {
		if t.addrs() >= authMaxAddrs && now.Sub(t.lastPrune) >= time.Minute {
			t.prune(now) // at most once a minute: a full map under a spray stays cheap
		}
		if t.addrs() >= authMaxAddrs {
			key = authOverflow
			f = t.clients[key]
		}
		if f == nil {
			f = &authFailures{}
			t.clients[key] = f
		}
	}
	if now.Sub(f.last) > authWindow {
		*f = authFailures{}
	}
	f.n++
	f.last = now
	if k := f.n - authFreeFailures; k >= 0 {
		d := authMaxDelay
		if k < 30 { // 2^30 s is past any cap: avoid the overflow
			d = min(authMaxDelay, authBaseDelay*time.Duration(1<<k))
		}
		f.until = now.Add(d)
	}
}

// succeed forgets key.
func (t *authThrottle) succeed(key string) {
	t.mu.Lock()
	delete(t.clients, key)
	t.mu.Unlock()
}

// addrs is the number of addresses remembered, the shared entry aside.
// t.mu must be held.
func (t *authThrottle) addrs() int {
	if _, ok := t.clients[authOverflow]; ok {
		return len(t.clients) - 1
	}
	return len(t.clients)
}

// prune drops the stale entries. t.mu must be held.
func (t *authThrottle) prune(now time.Time) {
	t.lastPrune = now
	for k, f := range t.clients {
		if now.Sub(f.last) > authWindow && !now.Before(f.until) {
			delete(t.clients, k)
		}
	}
}

func (t *authThrottle) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.clients)
}

// clientKey is the throttled unit of a request: its peer's IP address, or
// the /64 network for IPv6, where one host commonly holds a whole /64.
// Forwarding headers are not trusted: any client could set them.
func clientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if ip.To4() == nil {
		return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	return ip.String()
}

// basicAuth admits requests carrying user and pass, compared in constant
// time (over their hashes, so their lengths do not leak either). Repeated
// failures from one address are slowed down (authThrottle).
func basicAuth(user, pass string, throttle *authThrottle, next http.Handler) http.Handler {
	wantUser, wantPass := sha256.Sum256([]byte(user)), sha256.Sum256([]byte(pass))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := clientKey(r)
		if d := throttle.blocked(key); d > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(d.Seconds()))))
			writeText(w, http.StatusTooManyRequests, fmt.Sprintf("too many failed logins from this address: retry in %v", d.Round(time.Second)))
			return
		}
		u, p, ok := r.BasicAuth()
		gotUser, gotPass := sha256.Sum256([]byte(u)), sha256.Sum256([]byte(p))
		match := subtle.ConstantTimeCompare(gotUser[:], wantUser[:]) & subtle.ConstantTimeCompare(gotPass[:], wantPass[:])
		if !ok || match != 1 {
			if ok { // a request without credentials is the browser asking: not a guess
				throttle.fail(key)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="couponq monitoring", charset="UTF-8"`)
			writeText(w, http.StatusUnauthorized, "unauthorized")
			return
		}
		throttle.succeed(key)
		next.ServeHTTP(w, r)
	})
}
