# The two commands: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install tools kube-tools test lint typecheck unit demo bench ab adsload wheels clean

# The venv and the build tool the native core needs before the library installs.
BASE := $(VENV)/.base
$(BASE):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "maturin>=1.7,<2"
	touch $(BASE)

# The native core (issue 25, native/: route matching, picks, circuit-breaker
# counters, xDS decoding, the workload key): a required dependency of the
# library (`proxyless-mesh-native`), built here from source with Rust; cargo's
# target dir native/target keeps rebuilds incremental. Users without a compiler
# install the wheel `make wheels` builds.
NATIVE_STAMP := $(VENV)/.native
$(NATIVE_STAMP): $(BASE) native/Cargo.toml native/pyproject.toml $(wildcard native/src/*.rs)
	@command -v cargo >/dev/null || { echo "the native core needs Rust to build from source (cargo not found): install it (rustup.rs), or install the proxyless-mesh-native wheel"; exit 1; }
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q -m native/Cargo.toml
	touch $(NATIVE_STAMP)

$(STAMP): pyproject.toml control_plane/pyproject.toml requirements-dev.txt | $(NATIVE_STAMP)
	$(PY) -m pip install -q -e . -e ./control_plane -r requirements-dev.txt
	touch $(STAMP)

# The ADS port's native transport (issue 24, native_ads/: tokio + h2, its own
# crate so the native core's build stays small): `meshctl serve --xds-engine native`.
ADS_STAMP := $(VENV)/.native-ads
$(ADS_STAMP): $(STAMP) native_ads/Cargo.toml native_ads/pyproject.toml $(wildcard native_ads/src/*.rs)
	@if command -v cargo >/dev/null; then \
		VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q -m native_ads/Cargo.toml; \
	else echo "no Rust toolchain (cargo): native xDS engine skipped (--xds-engine grpc only)"; fi
	touch $(ADS_STAMP)

install: $(STAMP) $(NATIVE_STAMP) $(ADS_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src control_plane/src tests examples benchmarks
	$(VENV)/bin/ruff format --check src control_plane/src tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# System tools the tests start (Debian packages): Prometheus for the telemetry tests,
# Chromium for the console's browser tests (driven by Playwright; no browser download).
tools:
	command -v prometheus >/dev/null || (apt-get update && apt-get install -y prometheus)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Kubernetes for the kube tests: etcd, kube-apiserver, kube-controller-manager and kubectl
# built from Go modules (tools/kube, tools/etcd) once per machine, cached outside the
# clone; a clone on a machine that has them takes seconds here (tools/build-kube.sh).
export KUBE_TOOLS_DIR ?= $(HOME)/.cache/proxyless-mesh/kube-v1.37.2
kube-tools:
	tools/build-kube.sh "$(KUBE_TOOLS_DIR)"

test: install tools kube-tools lint typecheck
	$(PY) -m pytest -q -ra

demo: install
	$(PY) examples/demo.py

# All tables side by side (~10 min on 2 cores); results in benchmarks/results/.
# BENCH_ARGS passes options through, e.g. make bench BENCH_ARGS="--only data,cp".
bench: install adsload
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# The mesh transport's own CPU per request, a git ref (A) against the working tree (B),
# in alternating processes: make ab REF=6fd74eb [AB_ARGS="--rounds 21 --telemetry-off"].
REF ?= HEAD
ab: $(STAMP)
	$(PY) benchmarks/ab.py --ref $(REF) $(AB_ARGS)

# The scale bench's Go load generator (benchmarks/adsload), built from the Go
# module proxy's packages into ~/.cache/proxyless-mesh/ (outside the clone).
adsload: $(STAMP)
	cd benchmarks && ../$(PY) -c "import cp_go; print(cp_go.binary())"

# Wheels for users (dist/): the native core's, one abi3 wheel for every CPython
# >= 3.11 on this platform (maturin tags it manylinux for the glibc it needs),
# and the two pure-Python packages.
wheels: install
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin build --release -q -m native/Cargo.toml -o dist
	$(PY) -m pip wheel -q --no-deps -w dist . ./control_plane

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
