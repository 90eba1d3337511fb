package worker

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHTTPUnauthenticatedView: without monitoring authentication the view
// leaves out payloads, results, the Redis INFO, the servers and the
// scheduler entries; with it they are all there.
func TestHTTPUnauthenticatedView(t *testing.T) {
	t.Parallel()
	open := setupHTTP(t, HTTPConfig{})
	authed := setupHTTP(t, HTTPConfig{MonitoringAuth: "ops:pw"})
	for _, p := range []string{"/monitoring/api/redis_info", "/monitoring/api/servers", "/monitoring/api/scheduler_entries", "/monitoring/api/servers/"} {
		if r := open.do(t, http.MethodGet, p); r.status != http.StatusForbidden || !strings.Contains(r.body, "--monitoring-auth") {
			t.Errorf("GET %s without auth: %d %q, want 403 naming --monitoring-auth", p, r.status, r.body)
		}
		if r := authed.do(t, http.MethodGet, p, "ops", "pw"); r.status == http.StatusForbidden || r.status == http.StatusUnauthorized {
			t.Errorf("GET %s with auth: %d", p, r.status)
		}
	}
	if r := authed.do(t, http.MethodGet, "/monitoring/api/servers", "ops", "pw"); r.status != http.StatusOK {
		t.Errorf("servers with auth: %d %s", r.status, r.body)
	}
	const tasks = "/monitoring/api/queues/couponq/pending_tasks"
	r := open.do(t, http.MethodGet, tasks)
	if r.status != http.StatusOK || strings.Contains(r.body, "1000000013") || !strings.Contains(r.body, "(54 bytes, shown with monitoring authentication only)") {
		t.Errorf("pending tasks without auth: %d %s", r.status, r.body)
	}
	r = authed.do(t, http.MethodGet, tasks, "ops", "pw")
	if r.status != http.StatusOK || !strings.Contains(r.body, `\"product_coupon_id\": \"1000000013\"`) {
		t.Errorf("pending tasks with auth: %d %s", r.status, r.body)
	}
	// The queue overview stays open: it is what the view is for.
	if r := open.do(t, http.MethodGet, "/monitoring/api/queues"); r.status != http.StatusOK {
		t.Errorf("queues without auth: %d", r.status)
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// login sends one basic-auth request from addr through h.
func login(h http.Handler, addr, user, pass string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/monitoring/", nil)
	req.RemoteAddr = addr
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// TestBasicAuthThrottled: 200 wrong guesses, then the right password, from
// one address: after the first few the guesses are refused with 429 and the
// right password is refused too until the delay has passed; other addresses
// are unaffected; the delay doubles with each further failure.
func TestBasicAuthThrottled(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	h := basicAuth("ops", "right", newAuthThrottle(clk.Now), ok)
	const attacker = "203.0.113.7:40000"

	counts := map[int]int{}
	for i := range 200 {
		counts[login(h, attacker, "ops", fmt.Sprintf("guess%d", i)).Code]++
	}
	if counts[http.StatusUnauthorized] != authFreeFailures || counts[http.StatusTooManyRequests] != 200-authFreeFailures {
		t.Fatalf("200 wrong guesses answered %v, want %d × 401 then 429s", counts, authFreeFailures)
	}
	w := login(h, attacker, "ops", "right")
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("right password while throttled: %d Retry-After %q, want 429 Retry-After 1", w.Code, w.Header().Get("Retry-After"))
	}
	// Another address, and a browser asking without credentials, are not held back.
	if w := login(h, "198.51.100.1:5000", "ops", "right"); w.Code != http.StatusOK {
		t.Errorf("another address: %d", w.Code)
	}
	// Each failure past the free ones doubles the wait.
	for i, want := range []string{"2", "4", "8", "16"} {
		clk.Add(time.Duration(1<<i) * time.Second)
		if w := login(h, attacker, "ops", "wrong"); w.Code != http.StatusUnauthorized {
			t.Fatalf("guess after the wait %d: %d, want 401", i, w.Code)
		}
		if w := login(h, attacker, "ops", "right"); w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != want {
			t.Fatalf("after failure %d: %d Retry-After %q, want 429 %s", i+authFreeFailures+1, w.Code, w.Header().Get("Retry-After"), want)
		}
	}
	clk.Add(16 * time.Second)
	if w := login(h, attacker, "ops", "right"); w.Code != http.StatusOK {
		t.Fatalf("right password after the wait: %d", w.Code)
	}
	// A success forgets the failures: the next wrong guess is a free one.
	if w := login(h, attacker, "ops", "wrong"); w.Code != http.StatusUnauthorized {
		t.Errorf("wrong guess after a success: %d, want 401", w.Code)
	}
	if w := login(h, attacker, "ops", "right"); w.Code != http.StatusOK {
		t.Errorf("right password after one failure: %d", w.Code)
	}
}

// TestAuthThrottleBounded: failures from many addresses keep the memory
// bounded; the addresses beyond the bound share one throttle, and stale
// entries make room again. IPv6 addresses of one /64 share an entry.
func TestAuthThrottleBounded(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Unix(1_700_000_000, 0)}
	th := newAuthThrottle(clk.Now)
	for i := range 3 * authMaxClients {
		th.fail(net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)).String())
	}
	if n := th.size(); n > authMaxClients {
		t.Fatalf("%d addresses remembered, bound %d", n, authMaxClients)
	}
	if th.blocked("192.0.2.1") == 0 {
		t.Error("an address beyond the bound is not throttled with the overflow")
	}
	clk.Add(authWindow + time.Second)
	th.fail("192.0.2.1")
	if n := th.size(); n != 1 {
		t.Errorf("%d entries after the window, want the stale ones pruned", n)
	}

	req := func(addr string) *http.Request {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = addr
		return r
	}
	if a, b := clientKey(req("[2001:db8:1:2::1]:1")), clientKey(req("[2001:db8:1:2:ffff::9]:2")); a != b {
		t.Errorf("one /64: keys %q and %q", a, b)
	}
	if a, b := clientKey(req("[2001:db8:1:2::1]:1")), clientKey(req("[2001:db8:1:3::1]:1")); a == b {
		t.Errorf("two /64s share key %q", a)
	}
	if k := clientKey(req("192.0.2.1:1234")); k != "192.0.2.1" {
		t.Errorf("IPv4 key %q", k)
	}
}

func TestListenerWarnings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		addr string
		auth bool
		want string
	}{
		{"loopback v4", "127.0.0.1:9090", false, ""},
		{"loopback v6", "[::1]:9090", false, ""},
		{"all interfaces, no auth", "0.0.0.0:9090", false, "has no authentication"},
		{"all v6 interfaces, no auth", "[::]:9090", false, "has no authentication"},
		{"public address, no auth", "192.0.2.10:9090", false, "--monitoring-auth"},
		{"all interfaces with auth", "0.0.0.0:9090", true, "plain HTTP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a, err := net.ResolveTCPAddr("tcp", tt.addr)
			if err != nil {
				t.Fatal(err)
			}
			got := ListenerWarnings(a, tt.auth)
			if tt.want == "" {
				if len(got) != 0 {
					t.Errorf("warnings %q on loopback", got)
				}
				return
			}
			if len(got) != 1 || !strings.Contains(got[0], tt.want) {
				t.Errorf("warnings %q, want one with %q", got, tt.want)
			}
		})
	}
}
