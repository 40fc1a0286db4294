# cinderport — build, demo, test.
GO        ?= go
TOOLS     ?= $(HOME)/.cache/cinderport/bin
MINIO_MOD := github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c
TEST_TIMEOUT ?= 60m
export CINDERPORT_TOOLS := $(TOOLS)

.PHONY: all build demo test test-short test-deps test-deps-go test-deps-debian fuzz bench lint clean

all: build

## build: the worker and the enqueue CLI into bin/
build:
	$(GO) build -o bin/ ./cmd/worker ./cmd/enqueue

## demo: an image through staging → queue → worker → volume and back, all in one process tree
demo: build
	scripts/demo.sh

## test: vet and every test suite; suites whose servers are missing skip (CINDERPORT_REQUIRE_ALL=1: fail)
test:
	$(GO) vet ./...
	$(GO) test -timeout $(TEST_TIMEOUT) -p 2 ./...

## test-short: the fast unit tests only
test-short:
	$(GO) test -short ./...

## test-deps: install what the integration suites need (as root): Debian packages and a pinned MinIO
test-deps: test-deps-debian test-deps-go

test-deps-debian:
	scripts/install-test-deps.sh

test-deps-go:
	@if [ -x "$(TOOLS)/minio" ]; then echo "minio: $(TOOLS)/minio"; else \
	  echo "building MinIO from the Go module proxy (pinned; ~2 minutes)"; \
	  GOBIN="$(TOOLS)" $(GO) install $(MINIO_MOD); fi

## bench: cinderport beside its peers (qemu-img, dd) in one run: prints a markdown table (BENCH_ARGS=--json: JSON)
## and writes bench.json and bench.svg; the go test output goes to stderr (BENCH=Queue or BENCH=Transfer runs one)
BENCH ?= .
BENCH_ARGS ?=
BENCH_OUT ?= $(CURDIR)/bench.out
bench:
	@rm -f $(BENCH_OUT); $(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 1x -timeout 90m ./tests/bench \
	  -args -bench.json $(CURDIR)/bench.json -bench.svg $(CURDIR)/bench.svg -bench.out $(BENCH_OUT) $(BENCH_ARGS) 1>&2; \
	  status=$$?; cat $(BENCH_OUT) 2>/dev/null; exit $$status

## fuzz: run every fuzz target for FUZZTIME each
FUZZTIME ?= 60s
fuzz:
	scripts/fuzz.sh $(FUZZTIME)

lint:
	@files=$$(gofmt -l .); if [ -n "$$files" ]; then echo "gofmt wants to change:" $$files >&2; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin .demo
