package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
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
