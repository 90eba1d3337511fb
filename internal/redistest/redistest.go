// Package redistest starts a real redis-server for integration tests, on a
// free loopback port with its own data directory, and stops it through
// tb.Cleanup. It never touches port 6379 or data it did not create.
//
// StartCluster starts a Redis Cluster of three masters (with replicas if
// asked; redis-cli creates it) and StartSentinel a primary, its replica
// and three sentinels (redis-server --sentinel, the same binary); both can
// kill a master and wait for the failover.
//
// Under go test -short every test that needs a server is skipped at once,
// whether or not redis-server is installed: -short means the unit tests
// only (make test-short). Otherwise, without redis-server on PATH the test
// is skipped with a message saying "integration test skipped", except
// under CI (CI=true), where a missing server fails the test: CI must prove
// the integration paths, and it also refuses any log with that message.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/couponq/couponq/internal/testutil"
)

// Server is one redis-server process.
type Server struct {
	tb      testing.TB
	bin     string
	dir     string
	port    int
	persist bool
	cmd     *exec.Cmd
	done    chan struct{}

	// Set by the cluster and sentinel launchers (cluster.go, sentinel.go).
	busPort   int    // cluster bus port; 0: not a cluster node
	replicaOf string // host:port of the primary this server replicates
	sentinel  string // master name it monitors: this server is a sentinel
	monitor   string // host:port of that master
}

// Option configures Start.
type Option func(*Server)

// WithPersistence turns on append-only persistence (fsync every write), so
// a restart keeps every acknowledged write.
func WithPersistence() Option { return func(s *Server) { s.persist = true } }

// Available reports whether redis-server is on PATH.
func Available() bool {
	_, err := exec.LookPath("redis-server")
	return err == nil
}

// Require skips tb under -short, skips it (fails it under CI) when
// redis-server is missing, and returns the server's path otherwise.
func Require(tb testing.TB) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs redis-server: not run under -short")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("redis-server is not on PATH; CI must run the integration tests (install it: apt-get install -y redis-server)")
		}
		tb.Skip("integration test skipped: redis-server is not on PATH (apt-get install redis-server to run it)")
	}
	return bin
}

// Start starts a redis-server on a free loopback port and stops it when the
// test ends.
func Start(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := Reserve(tb, opts...)
	s.Launch()
	return s
}

// Reserve picks a free loopback port and a data directory for a server it
// does not start yet: Launch starts it. It lets a test start a client
// before its Redis. The server is stopped when the test ends.
func Reserve(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	s := &Server{tb: tb, bin: Require(tb), dir: tb.TempDir()}
	for _, o := range opts {
		o(s)
	}
	s.port = freePort(tb)
	tb.Cleanup(s.Stop)
	return s
}

// Launch starts a Reserved server and waits until it answers PING. The
// port was free only when Reserve found it: another process (a client's
// ephemeral port, often) may bind it before redis-server does; then
// another port is tried.
func (s *Server) Launch() {
	s.tb.Helper()
	for attempt := 1; ; attempt++ {
		err := s.startErr()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			s.tb.Fatal(err)
		}
		s.port = freePort(s.tb)
		if s.busPort != 0 {
			s.busPort = freePort(s.tb)
		}
	}
}

var errPortTaken = errors.New("redistest: port taken")

func freePort(tb testing.TB) int {
	tb.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("redistest: find a free port: %v", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if p != 6379 {
			return p
		}
	}
	tb.Fatalf("redistest: no free port")
	return 0
}

func (s *Server) start() {
	s.tb.Helper()
	if err := s.startErr(); err != nil {
		s.tb.Fatal(err)
	}
}

// args is redis-server's command line.
func (s *Server) args() []string {
	if s.sentinel != "" {
		return s.sentinelArgs()
	}
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--maxmemory-policy", "noeviction", "--protected-mode", "yes",
		"--daemonize", "no", "--logfile", filepath.Join(s.dir, "redis.log"),
	}
	if s.persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.busPort != 0 {
		args = append(args, s.clusterArgs()...)
	}
	if s.replicaOf != "" {
		host, port, _ := net.SplitHostPort(s.replicaOf)
		args = append(args, "--replicaof", host, port)
	}
	return args
}

// startErr starts the server and waits until it answers.
func (s *Server) startErr() error {
	args := s.args()
	s.cmd = exec.Command(s.bin, args...)
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("redistest: start redis-server: %v", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(s.cmd, s.done)
	// Wait until it answers PING; bounded. Not tb's context: Restart may
	// run in a Cleanup.
	exited := func() bool {
		select {
		case <-s.done:
			return true
		default:
			return false
		}
	}
	err := testutil.Poll(context.Background(), 10*time.Second, 20*time.Millisecond, func() error {
		if exited() {
			return nil // said below
		}
		c, err := net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		fmt.Fprintf(c, "PING\r\n")
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if !strings.HasPrefix(line, "+PONG") {
			return fmt.Errorf("PING answered %q, %v", line, err)
		}
		return nil
	})
	// A PONG from another server that holds the port is not ours either.
	if err == nil && exited() {
		err = errors.New("redis-server exited")
	}
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
		_ = s.cmd.Process.Kill()
		<-s.done
		if strings.Contains(string(log), "Address already in use") {
			_ = os.Remove(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("%w: %d", errPortTaken, s.port)
		}
		return fmt.Errorf("redistest: redis-server did not answer on %s: %v\n%s", s.Addr(), err, log)
	}
	return nil
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// URL is the redis:// URL of the server, database 0.
func (s *Server) URL() string { return "redis://" + s.Addr() + "/0" }

// Client returns a go-redis client closed at the end of the test.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	s.tb.Cleanup(func() { c.Close() })
	return c
}

// Stop stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// PID is the redis-server's process ID, for faults a test injects itself.
func (s *Server) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Pause freezes the server with SIGSTOP, as a stalled host would: clients'
// connections stay open and their commands wait unanswered. The returned
// resume sends SIGCONT; it may be called more than once, and runs at the
// end of the test in any case, so no server is left frozen.
func (s *Server) Pause() (resume func()) {
	s.tb.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.tb.Fatalf("redistest: SIGSTOP redis-server: %v", err)
	}
	var once sync.Once
	resume = func() { once.Do(func() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }) }
	s.tb.Cleanup(resume)
	return resume
}

// Kill stops the server at once with SIGKILL, as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// Restart stops the server and starts it again on the same port and data
// directory. With persistence, every acknowledged write survives.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	s.start()
}

// Flush deletes every key of the server's database 0 (the test owns it).
func (s *Server) Flush(ctx context.Context) error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	return c.FlushDB(ctx).Err()
}
