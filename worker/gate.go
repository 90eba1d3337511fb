package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/couponq/couponq/wechatpay"
)

// credentialChecker is what the gate asks of the client to learn whether
// WeChat Pay accepts its credentials: *wechatpay.Client. An API without it
// (a test stub) is taken as always able.
type credentialChecker interface {
	CheckCredentials(ctx context.Context) error
}

var _ credentialChecker = (*wechatpay.Client)(nil)

// credentialTrip is how many tasks in a row, each a different one, must
// meet a credentials error (401 SIGN_ERROR, an answer that does not verify)
// before the worker stops taking tasks: one can be a task's bad luck (a
// WECHATPAY/SIGNTEST probe), three from three tasks are the worker's
// settings.
const credentialTrip = 3

// maxCredentialCalls bounds the come-backs of a task whose calls meet
// credentials errors while the worker runs (the probe finds the
// credentials good): past that many recorded calls its own request must be
// at fault, and judge treats the error as any other (SIGN_ERROR fails, an
// unverifiable answer uses a retry).
const maxCredentialCalls = 20

// errNotVerified is the gate's reason before its first probe answered.
var errNotVerified = errors.New("WeChat Pay credentials not verified yet")

// gate says whether the worker may take tasks: only once WeChat Pay has
// accepted its credentials, and not while they are refused. Run starts the
// asynq server only while it is open and shuts it down when it closes;
// handlers check it too, for the tasks dequeued in between.
type gate struct {
	log *slog.Logger

	mu      sync.Mutex
	armed   bool // Run manages the gate; before, admit lets every task in
	open    bool
	reason  error               // why closed
	changed chan struct{}       // closed and replaced on every change
	failing map[string]struct{} // tasks of the current run of credentials errors

	openedAt   time.Time // when it last opened
	quickTrips int       // trips in a row each within quickTrip of opening
}

// quickTrip: a gate that closes this soon after a probe opened it was
// opened by a probe that could not see the fault (an answer signed by a
// key the probe cannot check); probing backs off, doubling up to maxHoldoff,
// so that such a worker does not churn through tasks.
const (
	quickTrip  = time.Minute
	maxHoldoff = 5 * time.Minute
)

func newGate(log *slog.Logger) *gate {
	return &gate{log: log, reason: errNotVerified, changed: make(chan struct{}), failing: map[string]struct{}{}}
}

// state returns whether the gate is open, a channel closed at its next
// change, and why it is not open.
func (g *gate) state() (open bool, changed <-chan struct{}, reason error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open, g.changed, g.reason
}

// admit returns nil while the gate is open, else why it is closed. An
// unarmed gate admits everything: the handler then runs outside Run (a
// test calling ProcessTask, an asynq server of the caller's own), where no
// probe would ever open it.
func (g *gate) admit() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open || !g.armed {
		return nil
	}
	return g.reason
}

// arm makes admit follow the gate; Run calls it before it starts probing.
func (g *gate) arm() {
	g.mu.Lock()
	g.armed = true
	g.mu.Unlock()
}

func (g *gate) set(open bool, reason error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == open && (open || errors.Is(reason, g.reason) || sameText(reason, g.reason)) {
		return
	}
	now := time.Now()
	switch {
	case open:
		g.openedAt = now
	case g.open && now.Sub(g.openedAt) < quickTrip:
		g.quickTrips++
	case g.open:
		g.quickTrips = 0
	}
	g.open, g.reason = open, reason
	clear(g.failing)
	close(g.changed)
	g.changed = make(chan struct{})
}

func sameText(a, b error) bool { return a != nil && b != nil && a.Error() == b.Error() }

// observe learns from the outcome of one call of task taskID: a streak of
// credentials errors from credentialTrip different tasks, or a refusal to
// sign for the clock (the client's own measurement), closes the gate; an
// answer that shows the signature accepted ends the streak.
func (g *gate) observe(taskID string, err error) {
	ce, isCred := credentialsFault(err)
	switch {
	case err == nil || !isCred && signatureAccepted(err):
		g.mu.Lock()
		clear(g.failing)
		g.mu.Unlock()
		return
	case !isCred:
		return // no answer, or one that says nothing of the credentials
	}
	g.mu.Lock()
	g.failing[taskID] = struct{}{}
	n := len(g.failing)
	g.mu.Unlock()
	if ce.Credential == wechatpay.CredentialClock && errors.Is(err, wechatpay.ErrNotSent) || n >= credentialTrip {
		g.set(false, fmt.Errorf("WeChat Pay refuses this worker's credentials (%d tasks in a row): %w", n, err))
	}
}

// credentialsFault returns the *wechatpay.CredentialsError in err; a bare
// 401 SIGN_ERROR (from an API other than *wechatpay.Client) counts as one
// of the merchant key.
func credentialsFault(err error) (*wechatpay.CredentialsError, bool) {
	var ce *wechatpay.CredentialsError
	if errors.As(err, &ce) {
		return ce, true
	}
	var ae *wechatpay.APIError
	if errors.As(err, &ae) && ae.HTTPStatus == http.StatusUnauthorized && ae.Code == wechatpay.CodeSignError {
		return &wechatpay.CredentialsError{Credential: wechatpay.CredentialMerchantKey, Err: err}, true
	}
	return nil, false
}

// signatureAccepted reports an answer WeChat Pay gave after checking the
// request signature: any error answer but 401, 429 and 5xx (which may come
// before the check).
func signatureAccepted(err error) bool {
	var ae *wechatpay.APIError
	if !errors.As(err, &ae) {
		return false
	}
	s := ae.HTTPStatus
	return s >= 400 && s < 500 && s != http.StatusUnauthorized && s != http.StatusTooManyRequests
}

// probeLoop asks WeChat Pay, every interval while the gate is closed,
// whether the credentials work, and opens the gate when they do. It logs
// the likely cause when they do not: at once when it changes, and once a
// minute while it holds. With no checker the gate opens at once.
func (g *gate) probeLoop(ctx context.Context, checker credentialChecker, interval time.Duration) {
	if checker == nil {
		g.set(true, nil)
		return
	}
	var lastLog time.Time
	var lastCause string
	for {
		open, changed, _ := g.state()
		if open {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			if d := g.holdoff(interval); d > 0 && sleepCtx(ctx, d) != nil {
				return
			}
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := checker.CheckCredentials(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			g.set(true, nil)
			g.log.Info("WeChat Pay accepts the credentials; taking tasks")
			lastCause = ""
			continue
		}
		cause := "unreachable"
		var ce *wechatpay.CredentialsError
		if errors.As(err, &ce) {
			cause = string(ce.Credential)
			g.set(false, fmt.Errorf("WeChat Pay refuses this worker's credentials: %w", err))
		} else if _, _, reason := g.state(); errors.Is(reason, errNotVerified) {
			g.set(false, fmt.Errorf("%w: %w", errNotVerified, err))
		}
		if cause != lastCause || time.Since(lastLog) >= time.Minute {
			lastCause, lastLog = cause, time.Now()
			if ce != nil {
				attrs := []any{"likely_cause", cause, "hint", ce.Credential.Hint(), "err", err}
				if ce.SkewKnown {
					attrs = append(attrs, "clock_skew", ce.Skew.Round(time.Second).String())
				}
				g.log.Error("not taking tasks: WeChat Pay refuses this worker's credentials; probing until it accepts them", attrs...)
			} else {
				g.log.Warn("not taking tasks: cannot check the credentials with WeChat Pay; probing again", "err", err)
			}
		}
		if sleepCtx(ctx, interval) != nil {
			return
		}
	}
}

// holdoff is the wait before the first probe after a trip: none, unless
// the gate keeps closing soon after it opens.
func (g *gate) holdoff(interval time.Duration) time.Duration {
	g.mu.Lock()
	n := g.quickTrips
	g.mu.Unlock()
	if n <= 1 {
		return 0
	}
	d := interval << min(n-1, 16)
	return min(d, maxHoldoff)
}

// probeTimeout bounds one credentials probe.
const probeTimeout = 30 * time.Second
