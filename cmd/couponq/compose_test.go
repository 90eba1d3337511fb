package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/couponq/couponq/internal/testutil"
)

// No container engine runs here, so the compose file is checked by parsing
// it (and with `docker compose config` where the plugin exists).
func TestComposeFileWiresThePipeline(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			DependsOn   map[string]any    `yaml:"depends_on"`
			Ports       []string          `yaml:"ports"`
			NetworkMode string            `yaml:"network_mode"`
			Healthcheck map[string]any    `yaml:"healthcheck"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, name := range []string{"redis", "mock", "worker", "asynqmon"} {
		if _, ok := doc.Services[name]; !ok {
			t.Errorf("service %s missing", name)
		}
	}
	redis := strings.Join(doc.Services["redis"].Command, " ")
	for _, w := range []string{"--appendonly yes", "--maxmemory-policy noeviction"} {
		if !strings.Contains(redis, w) {
			t.Errorf("redis command %q lacks %q", redis, w)
		}
	}
	w := doc.Services["worker"]
	if w.Build == nil || strings.Join(w.Command, " ") != "worker" {
		t.Errorf("worker must be built from the Dockerfile and run `worker`: %+v", w)
	}
	for _, k := range []string{"COUPONQ_REDIS_URL", "COUPONQ_RATE", "COUPONQ_HTTP_ADDR", "WECHATPAY_MCHID", "WECHATPAY_MCH_CERT_SERIAL",
		"WECHATPAY_MCH_PRIVATE_KEY_FILE", "WECHATPAY_PUBLIC_KEY_ID", "WECHATPAY_PUBLIC_KEY_FILE", "WECHATPAY_BASE_URL"} {
		if w.Environment[k] == "" {
			t.Errorf("worker environment lacks %s", k)
		}
	}
	if _, ok := w.DependsOn["redis"]; !ok {
		t.Error("worker does not depend on redis")
	}
	mock := strings.Join(doc.Services["mock"].Command, " ")
	for flag, env := range map[string]string{"--mchid": "WECHATPAY_MCHID", "--serial": "WECHATPAY_MCH_CERT_SERIAL", "--public-key-id": "WECHATPAY_PUBLIC_KEY_ID"} {
		if !strings.Contains(mock, flag+" "+w.Environment[env]) {
			t.Errorf("mock %s does not match the worker's %s=%s", flag, env, w.Environment[env])
		}
	}
	for name, s := range doc.Services {
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %s beyond loopback", name, p)
			}
		}
	}
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"AS build", "CGO_ENABLED=0", "nonroot", "COPY --from=build"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q (multi-stage, static, non-root)", want)
		}
	}
	if out, err := exec.Command("docker", "compose", "version").CombinedOutput(); err == nil {
		cmd := exec.Command("docker", "compose", "-f", "../../docker-compose.yml", "config", "-q")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("docker compose config: %v\n%s", err, out)
		}
	} else {
		t.Logf("docker compose plugin absent (%s); checked by parsing only", strings.TrimSpace(string(out)))
	}
}

// dockerInstruction is one instruction of a Dockerfile: its keyword, its
// leading --flags and the words after them.
type dockerInstruction struct {
	keyword string
	flags   map[string]string
	args    []string
}

// dockerStage is one FROM … and the instructions up to the next FROM.
type dockerStage struct {
	name string
	ins  []dockerInstruction
}

// parseDockerfile reads the instructions of a Dockerfile, stage by stage:
// comments dropped, continued lines joined, words split on blanks. Enough
// for the checks below, not a full parser (no heredocs, no JSON-form quoting).
func parseDockerfile(t *testing.T, path string) []dockerStage {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []dockerStage
	var cur strings.Builder
	flush := func() {
		words := strings.Fields(cur.String())
		cur.Reset()
		if len(words) == 0 {
			return
		}
		in := dockerInstruction{keyword: strings.ToUpper(words[0]), flags: map[string]string{}}
		rest := words[1:]
		for len(rest) > 0 && strings.HasPrefix(rest[0], "--") {
			k, v, _ := strings.Cut(strings.TrimPrefix(rest[0], "--"), "=")
			in.flags[k] = v
			rest = rest[1:]
		}
		in.args = rest
		if in.keyword == "FROM" {
			s := dockerStage{}
			if len(rest) == 3 && strings.EqualFold(rest[1], "AS") {
				s.name = rest[2]
			}
			stages = append(stages, s)
			return
		}
		if len(stages) == 0 {
			t.Fatalf("%s: %s before the first FROM", path, in.keyword)
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if body, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			cur.WriteString(body + " ")
			continue
		}
		cur.WriteString(line)
		flush()
	}
	flush()
	return stages
}

// distrolessIDs are the users and groups of the distroless base images.
var distrolessIDs = map[string]string{"root": "0", "nonroot": "65532"}

// numericOwner turns user[:group] into uid:gid with distrolessIDs; a
// missing group is the user's own (distroless gives each user one).
func numericOwner(s string) string {
	u, g, ok := strings.Cut(s, ":")
	if !ok {
		g = u
	}
	for _, p := range []*string{&u, &g} {
		if id, ok := distrolessIDs[*p]; ok {
			*p = id
		}
	}
	return u + ":" + g
}

// keysInImage is what the Dockerfile says about /keys in the final image.
type keysInImage struct {
	user  string      // uid:gid the final stage runs as
	owner string      // uid:gid /keys is copied with
	mode  os.FileMode // mode of the directory made in the build stage
}

// composeMock returns the compose file's mock command, the directory it
// writes its keys to (checking a named volume is mounted there) and the
// worker's environment.
func composeMock(t *testing.T) (args []string, keysDir string, workerEnv map[string]string) {
	t.Helper()
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Command     []string          `yaml:"command"`
			Volumes     []string          `yaml:"volumes"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
		Volumes map[string]any `yaml:"volumes"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	mock := doc.Services["mock"]
	if len(mock.Command) == 0 || mock.Command[0] != "mock" {
		t.Fatalf("mock service command %q does not run `mock`", mock.Command)
	}
	for i, a := range mock.Command {
		if a == "--dir" && i+1 < len(mock.Command) {
			keysDir = mock.Command[i+1]
		}
	}
	if keysDir == "" {
		t.Fatalf("mock command %q has no --dir", mock.Command)
	}
	// Only a fresh named volume takes the image directory's ownership; a
	// bind mount keeps the host's.
	mounted := false
	for _, v := range mock.Volumes {
		src, dst, _ := strings.Cut(v, ":")
		if dst == keysDir {
			if _, named := doc.Volumes[src]; !named {
				t.Errorf("mock mounts %s at %s: not a named volume, so the image's ownership of %s does not carry over", src, dst, keysDir)
			}
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("mock writes its keys to %s but mounts no volume there: %q", keysDir, mock.Volumes)
	}
	return mock.Command, keysDir, doc.Services["worker"].Environment
}

// dockerfileKeys checks that the final stage runs as a non-root user and
// ships dir owned by it, made (with a mode) in an earlier stage.
func dockerfileKeys(t *testing.T, dir string) keysInImage {
	t.Helper()
	stages := parseDockerfile(t, "../../Dockerfile")
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stages, want a build stage and a final one", len(stages))
	}
	final := stages[len(stages)-1]
	var k keysInImage
	var from, src string
	for _, in := range final.ins {
		switch {
		case in.keyword == "USER" && len(in.args) == 1:
			k.user = numericOwner(in.args[0])
		case in.keyword == "COPY" && len(in.args) == 2 && strings.TrimSuffix(in.args[1], "/") == dir:
			k.owner, from, src = numericOwner(in.flags["chown"]), in.flags["from"], in.args[0]
		}
	}
	if k.user == "" || strings.HasPrefix(k.user, "0:") {
		t.Fatalf("the final stage runs as %q, want a non-root USER", k.user)
	}
	if src == "" {
		t.Fatalf("the final stage copies nothing to %s: a fresh volume there would be owned by root", dir)
	}
	if k.owner != k.user {
		t.Errorf("%s is copied with --chown=%q, but the image runs as %s", dir, k.owner, k.user)
	}
	k.mode = 0o755 // mkdir's default under Docker's umask
	made := false
	for _, s := range stages[:len(stages)-1] {
		if s.name != from {
			continue
		}
		for _, in := range s.ins {
			if in.keyword != "RUN" || !slices.Contains(in.args, "mkdir") || !slices.Contains(in.args, src) {
				continue
			}
			made = true
			if i := slices.Index(in.args, "-m"); i >= 0 && i+1 < len(in.args) {
				m, err := strconv.ParseUint(in.args[i+1], 8, 32)
				if err != nil {
					t.Fatalf("mkdir -m %s: %v", in.args[i+1], err)
				}
				k.mode = os.FileMode(m)
			}
		}
	}
	if !made {
		t.Errorf("stage %q never makes %s (RUN mkdir …), which the final stage copies to %s", from, src, dir)
	}
	if k.mode&0o700 != 0o700 {
		t.Errorf("%s has mode %o: its owner cannot write it", dir, k.mode)
	}
	return k
}

func TestDockerfileShipsKeysDirOwnedByItsUser(t *testing.T) {
	t.Parallel()
	_, dir, _ := composeMock(t)
	k := dockerfileKeys(t, dir)
	t.Logf("%s in the image: owned by %s, mode %o; the image runs as %s", dir, k.owner, k.mode, k.user)
}

// syncBuffer is a bytes.Buffer a child process writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The compose file's mock command, run as the image's user against a
// directory owned and moded like the image's /keys (what a fresh named
// volume gets), writes the key files the worker's environment names. As
// root it runs as the image's uid; otherwise as the current user on a
// directory the current user owns, the same relation.
func TestComposeMockWritesKeysAsImageUser(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the couponq binary: not run under -short")
	}
	command, volDir, workerEnv := composeMock(t)
	k := dockerfileKeys(t, volDir)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on PATH to build couponq: %v", err)
	}
	var uid, gid int
	if _, err := fmt.Sscanf(k.user, "%d:%d", &uid, &gid); err != nil {
		t.Fatalf("image user %q: %v", k.user, err)
	}
	asRoot := os.Geteuid() == 0
	if !asRoot {
		t.Logf("not root: running the mock as uid %d on a directory it owns, instead of as %s", os.Getuid(), k.user)
		uid, gid = os.Getuid(), os.Getgid()
	}

	// A directory every user can enter, for the binary and the volumes.
	base, err := os.MkdirTemp("", "couponq-compose-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "couponq")
	build := exec.Command(goBin, "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	// mock runs the compose command on a fresh volume dir owned by
	// owner:group with mode, on a free loopback port, until it prints its
	// settings or exits; it returns what it printed and how it ended.
	mock := func(t *testing.T, owner, group int, mode os.FileMode) (stdout, stderr, dir string, exited error) {
		t.Helper()
		dir, err := os.MkdirTemp(base, "keys-")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(dir, owner, group); err != nil {
			t.Fatal(err)
		}
		args := slices.Clone(command)
		for i := range args[:len(args)-1] {
			switch args[i] {
			case "--addr":
				args[i+1] = "127.0.0.1:0"
			case "--dir":
				args[i+1] = dir
			}
		}
		cmd := exec.Command(bin, args...)
		if asRoot {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
		}
		var out, errOut syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-done
		})
		err = testutil.Poll(t.Context(), 30*time.Second, 20*time.Millisecond, func() error {
			select {
			case exited = <-done:
				done <- exited
				return nil
			default:
			}
			if !strings.Contains(out.String(), "WECHATPAY_BASE_URL=") {
				return errors.New("no settings printed yet")
			}
			return nil
		})
		if err != nil {
			t.Fatalf("mock neither printed its settings nor exited: %v\n%s", err, errOut.String())
		}
		return out.String(), errOut.String(), dir, exited
	}

	stdout, stderr, dir, exited := mock(t, uid, gid, k.mode)
	if exited != nil || stdout == "" {
		t.Fatalf("mock as %d:%d on %s (owned %d:%d, mode %o) exited: %v\n%s", uid, gid, volDir, uid, gid, k.mode, exited, stderr)
	}
	for _, env := range []string{"WECHATPAY_MCH_PRIVATE_KEY_FILE", "WECHATPAY_PUBLIC_KEY_FILE"} {
		rel, err := filepath.Rel(volDir, workerEnv[env])
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Errorf("worker's %s=%s is not in the mock's %s", env, workerEnv[env], volDir)
			continue
		}
		path := filepath.Join(dir, rel)
		if !strings.Contains(stdout, fmt.Sprintf("export %s='%s'", env, path)) {
			t.Errorf("mock did not print %s=%s:\n%s", env, path, stdout)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Errorf("worker's %s: %v", env, err)
			continue
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != uid || fi.Size() == 0 {
			t.Errorf("%s: owned by uid %d, %d bytes; want written by %d", path, st.Uid, fi.Size(), uid)
		}
	}

	// Without the image's directory a fresh volume is root's, mode 0755:
	// the failure the Dockerfile's /keys prevents.
	if asRoot {
		t.Run("root-owned volume fails", func(t *testing.T) {
			_, stderr, _, exited := mock(t, 0, 0, 0o755)
			if exited == nil || !strings.Contains(stderr, "permission denied") {
				t.Errorf("mock as %d:%d on a root-owned %s: exit %v, want permission denied:\n%s", uid, gid, volDir, exited, stderr)
			}
		})
	}
}
