# Wormhole build and test entry points. `make test` is what CI runs.
GO        ?= go
BIN       := bin/wormhole
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
FUZZTIME  ?= 10s

.PHONY: all build test check unit e2e fuzz fuzz-brief deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/wormhole

# Everything: static checks, unit and protocol tests with the race
# detector, each fuzz target briefly, then the kernel-client end-to-end
# suite in a qemu guest.
test: check unit fuzz-brief e2e

# A number of runs, not seconds: when a time limit ends while the fuzzer
# minimizes a new input, go test reports "context deadline exceeded" as a
# failure (golang/go#56238); a run count has no such deadline.
fuzz-brief:
	$(MAKE) fuzz FUZZTIME=20000x

check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Unit, protocol (go-nfs-client against a real node) and CLI tests.
unit:
	$(GO) test -race -count=1 -timeout 30m $$($(GO) list ./... | grep -v /tests/e2e)

# The Linux kernel NFS client in a qemu guest against the built binary.
e2e: build
	WH_BIN=$(abspath $(BIN)) $(GO) test -count=1 -timeout 60m -v ./tests/e2e

fuzz:
	$(GO) test ./nfsfront -run '^$$' -fuzz FuzzHandleDecode -fuzztime $(FUZZTIME)
	$(GO) test ./nfsfront -run '^$$' -fuzz FuzzParseCall -fuzztime $(FUZZTIME)
	$(GO) test ./chunker -run '^$$' -fuzz FuzzDecodeChunk -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./chunker -run '^$$' -fuzz FuzzReadRange -fuzztime $(FUZZTIME) -fuzzminimizetime 3s
	$(GO) test ./etcdmeta -run '^$$' -fuzz FuzzDecodeInode -fuzztime $(FUZZTIME)
	$(GO) test ./cluster -run '^$$' -fuzz FuzzMetaDecode -fuzztime $(FUZZTIME)
	$(GO) test ./cluster/pki -run '^$$' -fuzz FuzzParseToken -fuzztime $(FUZZTIME)
	$(GO) test ./chunker/peer -run '^$$' -fuzz FuzzDecodeList -fuzztime $(FUZZTIME)
	$(GO) test ./nfsfront -run '^$$' -fuzz FuzzNLM -fuzztime $(FUZZTIME)

# Debian packages the tests need (root).
deps:
	tests/install-deps.sh

clean:
	rm -rf bin build

# Benchmark against nfs-ganesha on this machine (tests/bench). bench-deps
# installs the Debian packages the comparison needs when they are missing
# (root): nfs-ganesha and its VFS FSAL (the reference server) and rpcbind
# (which ganesha registers with).
.PHONY: bench-deps bench-compare bench-cluster bench-repair
BENCH_DEPS := nfs-ganesha nfs-ganesha-vfs rpcbind

bench-deps:
	@missing=; for p in $(BENCH_DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi

# Wormhole and nfs-ganesha alternately, plus local disk, with the same
# client; BENCH_ARGS passes options (e.g. BENCH_ARGS='--size 64MiB --rounds 3').
BENCH_ARGS ?=
bench-compare: bench-deps build
	tests/bench/compare.sh $(BENCH_ARGS)

# A 3-node cluster on loopback addresses of this machine, a large file
# written and read through one node with redundancy 1, 2 and 3; needs no
# packages (e.g. BENCH_ARGS='--size 1GiB --copies 2 --rounds 3').
bench-cluster: build
	$(GO) run ./tests/bench/cmd/cluster --wormhole bin/wormhole $(BENCH_ARGS)

# A 4-node cluster (copies 2) on loopback addresses: kill -9 a node holding
# 1 GiB of chunks, time detection, full redundancy and repair throughput,
# then join a fifth node and time the rebalance; needs 8 GiB free under
# /tmp (e.g. BENCH_ARGS='--lose 2GiB --repair-bandwidth 64MiB').
bench-repair: build
	$(GO) run ./tests/bench/cmd/cluster --wormhole bin/wormhole --repair $(BENCH_ARGS)
