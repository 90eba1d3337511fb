package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/couponq/couponq/wechatpay"
	"github.com/couponq/couponq/wechatpay/wechatpaytest"
)

type mockConfig struct {
	Addr        string
	PublicURL   string
	Dir         string
	Mode        string
	MchID       string
	BrandID     string
	Serial      string
	PublicKeyID string
	Coupons     int
	QPS         int
	QPSModel    string
	Jitter      time.Duration
	Spurious429 float64
	Latency     time.Duration
	ClockSkew   time.Duration
	Faults      string
	Seed        uint64
	Env         bool
	Check       string
	readyFile   string
	// removeDir: Dir was made by this command (no --dir), so it goes at exit.
	removeDir bool
}

func newMockCmd(e *env) *cobra.Command {
	var c mockConfig
	cmd := &cobra.Command{
		Use:   "mock",
		Short: "Run a fake WeChat Pay and print the settings a worker needs",
		Long: `Runs wechatpaytest — a fake WeChat Pay API v3 with real signature checks,
coupon state, out_request_no idempotency, a QPS ceiling and fault injection —
on a port, writes its keys to --dir and prints the WECHATPAY_* environment a
worker needs.

  eval "$(couponq mock --env)"  # starts it in the background, exports settings
  couponq worker                # now talks to the fake
  kill $COUPONQ_MOCK_PID

--qps N admits at most N calls per endpoint (update, deactivate, get) in any
one-second window; --qps-model token-bucket refills N tokens per second
instead, which forgives bursts. --jitter delays each call before the ceiling
sees it, as the network does. --spurious-429 answers a share of the admitted
calls 429 anyway; they count toward the window. --seed drives every draw.

--faults takes probabilities per request, e.g.
  500=0.05,503=0.02,429=0.05,drop=0.02,badsig=0.01,signtest=0.01,stale=0.01
(drop: the change is applied, then the connection is closed without an answer).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if c.Check != "" {
				return mockCheck(cmd.Context(), c.Check)
			}
			// Before detaching, so that a bad flag exits 2 here rather than
			// in the background process.
			if _, _, err := c.serverOptions(); err != nil {
				return err
			}
			if c.Env {
				return mockDetach(cmd.Context(), e, &c)
			}
			return runMock(cmd.Context(), e, &c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.Addr, "addr", "127.0.0.1:0", "listen address (port 0: a free port)")
	f.StringVar(&c.PublicURL, "public-url", "", "base URL to print (default: http://<listen address>)")
	f.StringVar(&c.Dir, "dir", "", "directory for the key files, written anew with mode 0600 (default: a new temporary directory, removed at exit)")
	f.StringVar(&c.Mode, "mode", "partner", "access mode: partner or brand")
	f.StringVar(&c.MchID, "mchid", "1900000001", "service provider mchid (partner mode)")
	f.StringVar(&c.BrandID, "brand", "120344", "brand of the seeded coupons (and the identity in brand mode)")
	f.StringVar(&c.Serial, "serial", "5157F09EFDC096DE15EBE81A47057A7232F1B8E1", "merchant certificate serial")
	f.StringVar(&c.PublicKeyID, "public-key-id", "PUB_KEY_ID_0119000000012025010100000000000000", "WeChat Pay public-key ID")
	f.IntVar(&c.Coupons, "coupons", 100, "EFFECTIVE coupons to seed, ids 1000000001…")
	f.IntVar(&c.QPS, "qps", 0, "requests/s ceiling per endpoint (429 above it); 0 = none")
	f.StringVar(&c.QPSModel, "qps-model", "sliding", "how --qps is read: sliding (any 1 s window) or token-bucket")
	f.DurationVar(&c.Jitter, "jitter", 0, "network delay before the ceiling, uniform in [0, jitter]")
	f.Float64Var(&c.Spurious429, "spurious-429", 0, "share (0 to 1) of admitted calls answered 429 anyway")
	f.DurationVar(&c.Latency, "latency", 0, "added latency per request, uniform in [0, latency)")
	f.DurationVar(&c.ClockSkew, "clock-skew", 0, "run the mock's clock this far ahead (negative: behind); over 5m it refuses requests with 401 SIGN_ERROR")
	f.StringVar(&c.Faults, "faults", "", "fault probabilities, e.g. 500=0.05,429=0.05,drop=0.02")
	f.Uint64Var(&c.Seed, "seed", 1, "seed of the random draws: faults, jitter, 429s")
	f.BoolVar(&c.Env, "env", false, "start in the background and print `export` lines for eval, then exit")
	f.StringVar(&c.Check, "check", "", "health check: GET this URL and exit 0 if it answers below 500")
	f.StringVar(&c.readyFile, "ready-file", "", "")
	_ = f.MarkHidden("ready-file")
	f.BoolVar(&c.removeDir, "remove-dir", false, "")
	_ = f.MarkHidden("remove-dir")
	return cmd
}

func parseFaults(s string) (wechatpaytest.Faults, error) {
	var f wechatpaytest.Faults
	fields := map[string]*float64{"500": &f.Status500, "503": &f.Status503, "429": &f.Status429, "drop": &f.DropAfterApply,
		"badsig": &f.BadSignature, "signtest": &f.SignTest, "stale": &f.StaleTimestamp}
	sum := 0.0
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		dst, known := fields[k]
		p, err := strconv.ParseFloat(v, 64)
		if !ok || !known || err != nil || p < 0 || p > 1 {
			return f, usageErrorf("--faults: %q is not KIND=PROBABILITY with KIND one of 500, 503, 429, drop, badsig, signtest, stale", part)
		}
		*dst = p
		sum += p
	}
	if sum > 1 {
		return f, usageErrorf("--faults: probabilities add up to %.2f, more than 1", sum)
	}
	return f, nil
}

// serverOptions checks the flags that shape the fake and turns them into
// its options and faults; errors name the flag.
func (c *mockConfig) serverOptions() ([]wechatpaytest.Option, wechatpaytest.Faults, error) {
	mode := wechatpay.Mode(c.Mode)
	if mode != wechatpay.ModePartner && mode != wechatpay.ModeBrand {
		return nil, wechatpaytest.Faults{}, usageErrorf("--mode %q: use partner or brand", c.Mode)
	}
	faults, err := parseFaults(c.Faults)
	if err != nil {
		return nil, faults, err
	}
	if c.Coupons < 0 || c.QPS < 0 || c.Latency < 0 {
		return nil, faults, usageErrorf("--coupons, --qps and --latency must not be negative")
	}
	var model wechatpaytest.QPSModel
	switch c.QPSModel {
	case wechatpaytest.SlidingWindow.String():
		model = wechatpaytest.SlidingWindow
	case wechatpaytest.TokenBucket.String():
		model = wechatpaytest.TokenBucket
	default:
		return nil, faults, usageErrorf("--qps-model %q: use sliding or token-bucket", c.QPSModel)
	}
	if c.Jitter < 0 {
		return nil, faults, usageErrorf("--jitter %v: must not be negative", c.Jitter)
	}
	if !(c.Spurious429 >= 0 && c.Spurious429 <= 1) { // also refuses NaN
		return nil, faults, usageErrorf("--spurious-429 %v: want a share from 0 to 1", c.Spurious429)
	}
	return []wechatpaytest.Option{
		wechatpaytest.WithMode(mode),
		wechatpaytest.WithIdentity(c.MchID, c.BrandID),
		wechatpaytest.WithQPS(c.QPS),
		wechatpaytest.WithQPSModel(model),
		wechatpaytest.WithJitter(0, c.Jitter),
		wechatpaytest.WithSpurious429(c.Spurious429),
		wechatpaytest.WithLatency(c.Latency),
		wechatpaytest.WithClockSkew(c.ClockSkew),
		wechatpaytest.WithSeed(c.Seed),
	}, faults, nil
}

// startMock builds the fake from c and serves it on c.Addr.
func startMock(c *mockConfig) (*wechatpaytest.Server, net.Listener, map[string]string, error) {
	opts, faults, err := c.serverOptions()
	if err != nil {
		return nil, nil, nil, err
	}
	mchKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, nil, err
	}
	wxKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, nil, err
	}
	srv := wechatpaytest.NewServer(nil, append(opts,
		wechatpaytest.WithMerchantKey(c.Serial, mchKey),
		wechatpaytest.WithWeChatPayKey(c.PublicKeyID, wxKey),
	)...)
	srv.SetFaults(faults)
	srv.SeedCoupons(c.BrandID, c.Coupons)
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		srv.Close()
		return nil, nil, nil, usageErrorf("--addr %s: %v", c.Addr, err)
	}
	fail := func(err error) (*wechatpaytest.Server, net.Listener, map[string]string, error) {
		ln.Close()
		srv.Close()
		return nil, nil, nil, err
	}
	if err := c.makeDir(); err != nil {
		return fail(err)
	}
	env, err := srv.WriteEnv(c.Dir)
	if err != nil {
		return fail(err)
	}
	url := c.PublicURL
	if url == "" {
		url = "http://" + ln.Addr().String()
	}
	env["WECHATPAY_BASE_URL"] = url
	go func() { _ = http.Serve(ln, srv) }()
	return srv, ln, env, nil
}

func exportLines(env map[string]string) string {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s='%s'\n", k, strings.ReplaceAll(env[k], "'", `'\''`))
	}
	return b.String()
}

// makeDir makes the key directory: Dir, or a new temporary one that is
// then removed at exit (removeDir).
func (c *mockConfig) makeDir() error {
	if c.Dir == "" {
		d, err := os.MkdirTemp("", "couponq-mock-")
		if err != nil {
			return err
		}
		c.Dir, c.removeDir = d, true
		return nil
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return usageErrorf("--dir: %v", err)
	}
	return nil
}

// cleanDir removes the directory the command made.
func (c *mockConfig) cleanDir() {
	if c.removeDir && c.Dir != "" {
		_ = os.RemoveAll(c.Dir)
	}
}

func runMock(ctx context.Context, e *env, c *mockConfig) error {
	srv, ln, env, err := startMock(c)
	defer c.cleanDir() // after the listener and the server below
	if err != nil {
		return err
	}
	defer srv.Close()
	defer ln.Close()
	lines := exportLines(env)
	if c.readyFile != "" {
		if err := writePrivate(c.readyFile, []byte(lines)); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(e.stderr, "fake WeChat Pay on %s (%d coupons of brand %s, keys in %s); settings for a worker:\n",
			env["WECHATPAY_BASE_URL"], c.Coupons, c.BrandID, c.Dir)
		fmt.Fprint(e.stdout, lines)
	}
	<-ctx.Done()
	return nil
}

// mockDetach starts the mock as a background process and prints its
// settings, so that eval "$(couponq mock --env)" returns at once.
func mockDetach(ctx context.Context, e *env, c *mockConfig) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := c.makeDir(); err != nil {
		return err
	}
	// From here the background mock owns a directory this command made
	// (--remove-dir) and removes it when it stops; until it starts, this
	// process does.
	started := false
	defer func() {
		if !started {
			c.cleanDir()
		}
	}()
	ready := filepath.Join(c.Dir, "env.sh")
	_ = os.Remove(ready)
	args := c.childArgs(ready)
	logf, err := createPrivate(filepath.Join(c.Dir, "mock.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(ready); err == nil && len(b) > 0 {
			fmt.Fprint(e.stdout, string(b))
			fmt.Fprintf(e.stdout, "export COUPONQ_MOCK_PID=%d\n", cmd.Process.Pid)
			started = true
			return cmd.Process.Release()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			log, _ := os.ReadFile(filepath.Join(c.Dir, "mock.log"))
			return fmt.Errorf("mock did not start: %s", strings.TrimSpace(string(log)))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// childArgs are the arguments of the background mock: every setting of c,
// with the settings written to ready.
func (c *mockConfig) childArgs(ready string) []string {
	args := []string{"mock", "--addr", c.Addr, "--dir", c.Dir, "--mode", c.Mode, "--mchid", c.MchID, "--brand", c.BrandID,
		"--serial", c.Serial, "--public-key-id", c.PublicKeyID, "--coupons", strconv.Itoa(c.Coupons), "--qps", strconv.Itoa(c.QPS),
		"--qps-model", c.QPSModel, "--jitter", c.Jitter.String(), "--spurious-429", strconv.FormatFloat(c.Spurious429, 'g', -1, 64),
		"--latency", c.Latency.String(), "--clock-skew", c.ClockSkew.String(), "--faults", c.Faults, "--seed", strconv.FormatUint(c.Seed, 10), "--ready-file", ready}
	if c.PublicURL != "" {
		args = append(args, "--public-url", c.PublicURL)
	}
	if c.removeDir {
		args = append(args, "--remove-dir")
	}
	return args
}

// createPrivate creates path anew with mode 0600 and returns it open for
// writing: a temporary file made exclusively in the same directory (no
// symlink followed), renamed over whatever path was — a file of another
// mode is replaced, a symlink is replaced rather than written through.
func createPrivate(path string) (*os.File, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, err
	}
	err = f.Chmod(0o600)
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	return f, nil
}

// writePrivate writes data to path, mode 0600, like createPrivate but
// renamed into place only once written: a reader polling for path never
// sees it partial.
func writePrivate(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// mockCheck is a health probe for images without curl.
func mockCheck(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return usageErrorf("--check: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode >= 500 {
		return errors.New(resp.Status)
	}
	return nil
}
