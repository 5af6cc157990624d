# nbd-cow: `make serve` serves a base image (BASE=path, or a generated demo image),
# `make test` runs every test. Both install what they need first.

SHELL := /bin/bash
DEB_TEST_PACKAGES := qemu-utils libnbd-bin python3-libnbd fio qemu-system-x86 nbd-client e2fsprogs busybox-static xz-utils openssl gnutls-bin prometheus systemd nginx curl ceph-mon ceph-osd radosgw ceph-common
BASE ?=
SERVE_ARGS ?=
COVERAGE_FLOOR ?= 90
BRANCH_FLOOR ?= 85

.PHONY: all build serve pack test test-only test-guest deps-test deps-bench bench bench-commit bench-remote typecheck lint format fuzz clean

all: build

# --ignore-scripts: without it npm ci would also run package.json's `prepare` (the build, for
# npm pack and git installs); here dist/.built builds, so a compile error does not cost another
# npm ci. No dependency has install scripts (no "hasInstallScript" in package-lock.json).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

dist/.built: node_modules/.installed tsconfig.json $(shell find lib bin -name '*.ts')
	npm run --silent build
	touch $@

build: dist/.built

serve: build
	node dist/bin/nbd-cow.js serve $(BASE) $(SERVE_ARGS)

# The npm package (what `npm install -g ./nbd-cow-X.tgz` installs), built from an empty dist/ so
# that no output of a renamed or deleted source is shipped.
pack: node_modules/.installed
	rm -rf dist
	npm pack

# Debian packages the end-to-end and guest tests drive (real NBD clients, QEMU, a guest's
# nbd-client and tools to build its disk). Installed only when missing.
deps-test:
	@missing=""; for p in $(DEB_TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

# Anchor servers and fio's nbd engine for the benchmark; installed only when missing.
DEB_BENCH_PACKAGES := nbd-server nbdkit qemu-utils fio python3-libnbd
deps-bench:
	@$(MAKE) --no-print-directory deps-test DEB_TEST_PACKAGES="$(DEB_BENCH_PACKAGES)"

# nbd-cow beside nbd-server, qemu-nbd and nbdkit (bench/README.md). A benchmark, never a test:
# it prints a table and writes bench/results/latest.json. `make bench BENCH_QUICK=1` is short.
# Then the commit comparison below (about 4 minutes; BENCH_COMMIT=0 leaves it out).
bench: build deps-bench
	bench/run.sh
	@if [ "$${BENCH_COMMIT:-1}" != 0 ]; then node dist/bench/commit.js; fi

# `nbd-cow overlay commit` against `qemu-img convert` on a 1 GiB image (bench/commit.ts): prints
# a table, writes bench/results/commit-latest.json. BASE_MB, COMMIT_RUNS (5) change it.
bench-commit: build
	@$(MAKE) --no-print-directory deps-test DEB_TEST_PACKAGES="qemu-utils"
	npx tsc -p tsconfig.bench.json
	node dist/bench/commit.js

# A base image on an HTTP server (nginx on loopback) against the same file served locally and
# nbdkit's curl plugin under its cache filter (bench/remote.ts): cold first read, 16 cold clients,
# warm fio columns. Prints tables, writes bench/results/remote-latest.json. BASE_MB, RUNTIME change it.
bench-remote: build
	@$(MAKE) --no-print-directory deps-test DEB_TEST_PACKAGES="nginx nbdkit fio libnbd-bin"
	npx tsc -p tsconfig.bench.json
	node dist/bench/remote.js

# Hostile input at scale against a live server (fuzz/README.md); long, never part of `make test`.
# Settings from the environment: FUZZ_STREAMS (1000000), FUZZ_SEED, FUZZ_CONCURRENCY, FUZZ_BATCH,
# FUZZ_REPLAY=seed:index to run one stream again.
fuzz: build
	npx tsc -p tsconfig.bench.json
	node dist/fuzz/fuzz.js

# The library, CLI and tests; then the benchmark and fixture scripts (bench/run.sh compiles those).
typecheck: node_modules/.installed
	npx tsc -p tsconfig.test.json
	npx tsc -p tsconfig.bench.json --noEmit

# Biome: formatting and lint rules (biome.json). `make format` applies its safe fixes.
lint: node_modules/.installed
	npx biome check .

format: node_modules/.installed
	npx biome check --write .

test: build deps-test typecheck lint
	npx c8 --check-coverage --lines $(COVERAGE_FLOOR) --branches $(BRANCH_FLOOR) --reporter=text-summary --reporter=text \
	  --exclude 'test/**' --exclude 'dist/test/**' --exclude 'node_modules/**' \
	  tap

test-only: build
	npx tap $(TESTS)

# Only the real-guest boots (test/guest/): QEMU's NBD client and the guest kernel's nbd-client.
test-guest: build deps-test
	npx tap test/guest/*.test.ts

clean:
	rm -rf dist coverage .tap nbd-cow-*.tgz
