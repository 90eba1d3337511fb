# couponq — every target a developer runs is the one CI runs.
GO        ?= go
BIN       ?= bin/couponq
PKGS      ?= ./...
STATICCHECK_VERSION ?= v0.8.2
GOBIN     ?= $(shell $(GO) env GOPATH)/bin

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build the couponq binary into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/couponq

.PHONY: demo
demo: ## Run the whole pipeline on embedded defaults (miniredis + fake WeChat Pay)
	$(GO) run ./cmd/couponq demo

.PHONY: test
test: ## Run every test with the race detector (integration tests need redis-server)
	$(GO) test -race -count=1 -timeout 15m $(PKGS)

.PHONY: test-race
test-race: test ## Alias of test: the suite always runs with -race

.PHONY: test-short
test-short: ## Run the unit tests only (no redis-server needed), without -race
	$(GO) test -short -count=1 $(PKGS)

.PHONY: bench
bench: ## Run the benchmarks (real redis-server needed for the pipeline ones)
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./wechatpay/ && $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./tasks/ ./bench/

.PHONY: bench-quota
bench-quota: ## Measure the limiter's share of the 20/s quota, 3 scenarios x 3 runs (~5-10 min; redis-server needed)
	$(GO) test ./bench/ -run '^$$' -bench 'Quota' -benchtime=1x -count=3 -timeout 30m

.PHONY: bench-hot
bench-hot: ## Issue 14 figures, 5 runs each: pipeline/direct (cpu, 20ms), enqueue command vs asynq loop, memory (redis-server needed; ~10 min)
	uptime
	$(GO) test ./bench/ -run '^$$' -bench 'PipelineVsDirect' -benchtime=1x -count=5 -timeout 30m
	uptime
	$(GO) test ./bench/ -run '^$$' -bench 'EnqueueCommand' -benchtime=1x -count=5 -timeout 30m
	uptime
	$(GO) test ./bench/ -run '^$$' -bench 'EnqueueMemory|WorkerRSS' -benchtime=1x -count=1 -timeout 30m
	uptime

.PHONY: profile-worker
profile-worker: ## CPU and allocation profiles of the pipeline side of PipelineVsDirect/cpu into bench/profiles/ (redis-server needed)
	COUPONQ_BENCH_PROFILE=$(CURDIR)/bench/profiles $(GO) test ./bench/ -run '^$$' -bench 'PipelineVsDirect/cpu' -benchtime=1x -count=1 -timeout 30m -o bench/profiles/bench.test
	$(GO) tool pprof -top -nodecount=40 bench/profiles/bench.test bench/profiles/cpu.pprof | head -50
	$(GO) tool pprof -top -nodecount=40 -sample_index=alloc_space bench/profiles/bench.test bench/profiles/allocs.pprof | head -50

.PHONY: lint
lint: $(GOBIN)/staticcheck ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GOBIN)/staticcheck $(PKGS)

$(GOBIN)/staticcheck:
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.PHONY: compose-up
compose-up: ## Start Redis, the mock API, a worker and asynqmon with docker compose
	docker compose up --build

.PHONY: clean
clean: ## Remove build output
	rm -rf bin
