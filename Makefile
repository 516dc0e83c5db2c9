# The two commands: `make demo` and `make test`. Everything else is a step they use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install tools test lint typecheck unit demo bench clean

$(STAMP): pyproject.toml control_plane/pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . -e ./control_plane -r requirements-dev.txt
	touch $(STAMP)

# The native core (issue 25, native/): built into the venv when Rust is there
# (cargo's target dir native/target keeps rebuilds incremental); without it
# the library uses its pure-Python decoders, with the same results.
NATIVE_STAMP := $(VENV)/.native
$(NATIVE_STAMP): $(STAMP) native/Cargo.toml native/pyproject.toml $(wildcard native/src/*.rs)
	@if command -v cargo >/dev/null; then \
		VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q -m native/Cargo.toml; \
	else echo "no Rust toolchain (cargo): native core skipped, pure-Python fallback"; fi
	touch $(NATIVE_STAMP)

install: $(STAMP) $(NATIVE_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src control_plane/src tests examples benchmarks
	$(VENV)/bin/ruff format --check src control_plane/src tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# System tools the tests start (Debian packages): Prometheus for the telemetry tests.
tools:
	command -v prometheus >/dev/null || (apt-get update && apt-get install -y prometheus)

test: install tools lint typecheck
	$(PY) -m pytest -q -ra

demo: install
	$(PY) examples/demo.py

# All tables side by side (~10 min on 2 cores); results in benchmarks/results/.
# BENCH_ARGS passes options through, e.g. make bench BENCH_ARGS="--only data,cp".
bench: install
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
