# valkey-lock-proxy
#
#   make build          build bin/valkey-lock-proxy
#   make run            build, start the local cluster, run the proxy in the foreground
#   make test           start the cluster, vet + gofmt check + go test -race, stop the cluster
#   make cluster-start  start the local cluster (integration/cluster.sh start)
#   make cluster-stop   stop it
#   make bench          run integration/cmd/bench against the local cluster (BENCH_ARGS=...)
#   make fuzz           fuzz the RESP reader (FUZZ=FuzzReader FUZZTIME=60s FUZZPKG=./proxy/resp/)
#   make clean          remove build and test output
#
# The cluster uses ports $(VLP_CLUSTER_BASE_PORT)..+5 (default 7101-7106) and a standalone
# server on 7199; see integration/cluster.sh.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

GO ?= go
BIN := bin/valkey-lock-proxy
CLUSTER := integration/cluster.sh

VLP_CLUSTER_BASE_PORT ?= 7101
export VLP_CLUSTER_BASE_PORT
LISTEN ?= 127.0.0.1:6380
UPSTREAM ?= 127.0.0.1:$(VLP_CLUSTER_BASE_PORT),127.0.0.1:$(shell echo $$(($(VLP_CLUSTER_BASE_PORT)+1))),127.0.0.1:$(shell echo $$(($(VLP_CLUSTER_BASE_PORT)+2)))
RUN_ARGS ?=

TEST_TIMEOUT ?= 15m
TEST_FLAGS ?=
PKGS ?= ./...

BENCH_ARGS ?=

FUZZ ?= FuzzReader
FUZZTIME ?= 60s
FUZZPKG ?= ./proxy/resp/

.PHONY: all build run test vet fmt-check cluster-start cluster-stop cluster-status bench fuzz clean

all: build

build:
	@mkdir -p bin
	$(GO) build -o $(BIN) .

run: build cluster-start
	./$(BIN) --listen $(LISTEN) --upstream $(UPSTREAM) $(RUN_ARGS)

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out="$$(gofmt -l .)"; \
	if [ -n "$$out" ]; then \
	  echo "gofmt: these files need 'gofmt -w':"; echo "$$out"; exit 1; \
	fi; \
	echo "gofmt: ok"

# The cluster is stopped on every exit path (success, failure, Ctrl-C). The exit code is
# go test's when it failed, else the first failing check's.
test:
	@trap '$(CLUSTER) stop' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	echo "==> starting the cluster"; \
	$(CLUSTER) start || { echo "==> FAILED: cluster start"; exit 1; }; \
	vars="$$($(CLUSTER) env)" || exit 1; \
	set -a; eval "$$vars"; set +a; \
	echo "$$vars"; \
	rc=0; \
	echo "==> go vet $(PKGS)"; \
	$(GO) vet $(PKGS) || { echo "==> FAILED: go vet"; rc=1; }; \
	echo "==> gofmt -l ."; \
	out="$$(gofmt -l .)" || out="gofmt failed"; \
	if [ -n "$$out" ]; then echo "gofmt: these files need 'gofmt -w':"; echo "$$out"; \
	  echo "==> FAILED: gofmt"; [ "$$rc" -ne 0 ] || rc=1; fi; \
	echo "==> go test -race -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) $(PKGS)"; \
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) $(PKGS); trc=$$?; \
	if [ "$$trc" -ne 0 ]; then echo "==> FAILED: go test (exit $$trc)"; rc=$$trc; fi; \
	if [ "$$rc" -eq 0 ]; then echo "==> all checks passed"; fi; \
	echo "==> stopping the cluster"; \
	exit $$rc

cluster-start:
	$(CLUSTER) start

cluster-stop:
	$(CLUSTER) stop

cluster-status:
	$(CLUSTER) status

# Leaves the cluster running afterwards (`make cluster-stop` to stop it).
bench: cluster-start
	@vars="$$($(CLUSTER) env)" || exit 1; \
	set -a; eval "$$vars"; set +a; \
	echo "$(GO) run ./integration/cmd/bench $(BENCH_ARGS)"; \
	$(GO) run ./integration/cmd/bench $(BENCH_ARGS)

fuzz:
	$(GO) test -run='^$$' -fuzz='^$(FUZZ)$$' -fuzztime=$(FUZZTIME) $(FUZZPKG)

clean:
	rm -rf bin
	rm -f *.test *.out *.prof *.pprof
