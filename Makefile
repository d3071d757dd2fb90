# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs; the CPU build of torch goes in first so
# that pip never resolves a multi-GB CUDA build for the plain `torch` requirement.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fulmen-installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean docs docs-serve

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/iris.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check --quiet src tests examples benchmarks
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_lite.py
	$(PY) benchmarks/bench_trainer.py
	$(PY) benchmarks/bench_import.py
	$(PY) benchmarks/bench_calls.py
	$(PY) benchmarks/bench_profiler.py
	$(PY) benchmarks/bench_resume.py
	$(PY) benchmarks/bench_async_save.py
	$(PY) benchmarks/bench_ddp_signals.py
	$(PY) benchmarks/bench_deepspeed.py
	$(PY) benchmarks/bench_model_parallel.py

# The documentation site (mkdocs.yml, docs/). `make test` builds it strictly too (tests/docs).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache
