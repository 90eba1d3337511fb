package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// dockerignorePattern is one line of a .dockerignore.
type dockerignorePattern struct {
	re        *regexp.Regexp
	exception bool // a "!" line: put back what earlier lines excluded
}

// parseDockerignore reads a .dockerignore the way Docker's patternmatcher
// does for the syntax couponq uses: paths relative to the context root
// (a leading / is dropped, the pattern cleaned), * and ? within one path
// element, ** across elements, ! for exceptions, the last match winning.
func parseDockerignore(t *testing.T, path string) []dockerignorePattern {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ps []dockerignorePattern
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := dockerignorePattern{}
		if rest, ok := strings.CutPrefix(line, "!"); ok {
			p.exception, line = true, rest
		}
		line = strings.TrimPrefix(filepath.ToSlash(filepath.Clean(line)), "/")
		if strings.ContainsAny(line, `[\`) {
			t.Fatalf("%s: %q: character classes and escapes are not handled by this test", path, line)
		}
		var re strings.Builder
		re.WriteString("^")
		for i := 0; i < len(line); i++ {
			switch c := line[i]; {
			case strings.HasPrefix(line[i:], "**/"):
				re.WriteString("(.*/)?")
				i += 2
			case strings.HasPrefix(line[i:], "**"):
				re.WriteString(".*")
				i++
			case c == '*':
				re.WriteString("[^/]*")
			case c == '?':
				re.WriteString("[^/]")
			default:
				re.WriteString(regexp.QuoteMeta(string(c)))
			}
		}
		re.WriteString("$")
		p.re = regexp.MustCompile(re.String())
		ps = append(ps, p)
	}
	return ps
}

// excluded reports whether the slash-separated path, relative to the
// context root, is left out of the build context: a pattern matching the
// path or one of its parent directories excludes it.
func excluded(ps []dockerignorePattern, path string) bool {
	parts := strings.Split(path, "/")
	out := false
	for _, p := range ps {
		for i := range parts {
			if p.re.MatchString(strings.Join(parts[:i+1], "/")) {
				out = !p.exception
				break
			}
		}
	}
	return out
}

func TestDockerignore(t *testing.T) {
	t.Parallel()
	ps := parseDockerignore(t, "../../.dockerignore")
	for _, tt := range []struct {
		path string
		want bool
	}{
		{".git", true}, {".git/HEAD", true}, {".git/objects/ab/cdef", true},
		{"bin", true}, {"bin/couponq", true}, {"couponq", true},
		{"cmd/couponq/couponq.test", true}, {"coverage.out", true}, {"tasks/cpu.prof", true}, {"test.log", true},
		{".vscode/settings.json", true}, {".idea/workspace.xml", true}, {"worker/.handler.go.swp", true}, {"worker/handler.go~", true},
		{"worker/handler_test.go", true}, {"e2e/e2e_test.go", true}, {"bench/pipeline.txt", true}, {"README.md", true},

		{"go.mod", false}, {"go.sum", false}, {"cmd", false}, {"cmd/couponq", false}, {"cmd/couponq/main.go", false},
		{"wechatpay/client.go", false}, {"internal/redisurl/redisurl.go", false},
	} {
		if got := excluded(ps, tt.path); got != tt.want {
			t.Errorf("excluded(%q) = %v, want %v", tt.path, got, tt.want)
		}
	}

	// Every file `go build ./cmd/couponq` reads from this module is in the
	// build context.
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go command on PATH to list the build's files: %v", err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(goBin, "list", "-deps",
		"-f", `{{if .Module}}{{if .Module.Main}}{{$d := .Dir}}{{range .GoFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$d}}/{{.}}{{"\n"}}{{end}}{{end}}{{end}}`,
		"./").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	files := strings.Fields(string(out))
	if len(files) < 10 {
		t.Fatalf("go list named %d files of the module: %q", len(files), files)
	}
	for _, f := range files {
		rel, err := filepath.Rel(root, f)
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("%s is outside the module root %s", f, root)
		}
		if excluded(ps, filepath.ToSlash(rel)) {
			t.Errorf(".dockerignore leaves out %s, which go build ./cmd/couponq needs", rel)
		}
	}
}
