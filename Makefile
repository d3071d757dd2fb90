# Two entry points that work on a fresh machine: `make demo` and `make test`.
# `make demo` builds a light .venv-demo: fulmen, its runtime dependencies and what the demo needs
# (scikit-learn's iris data). `make test` (and lint, bench, docs) builds .venv with the development
# set (the `dev` extra: DeepSpeed, Ray, the trackers, mkdocs, ...). The CPU build of torch goes in
# first so that pip never resolves a multi-GB CUDA build for the plain `torch` requirement.
PYTHON ?= python3
VENV ?= .venv
DEMO_VENV ?= .venv-demo
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
DEMO_PY := $(DEMO_VENV)/bin/python
STAMP := $(VENV)/.fulmen-installed
DEMO_STAMP := $(DEMO_VENV)/.fulmen-installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench clean docs docs-serve gpu-check

# $(1): the virtual environment, $(2): the extras to install fulmen with.
define install
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(1)/bin/python -m pip install --quiet -e ".[$(2)]"
endef

$(STAMP): pyproject.toml Makefile
	$(call install,$(VENV),dev)
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml Makefile
	$(call install,$(DEMO_VENV),demo)
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_PY) examples/iris.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check --quiet src tests examples benchmarks
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

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
	$(PY) benchmarks/bench_fault_tolerance.py

# The documentation site (mkdocs.yml, docs/). `make test` builds it strictly too (tests/docs).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8000

# On a machine with a CUDA GPU: every test marked `gpu` (tests/gpu) and a bf16 step benchmark
# against a raw loop, one short table; under 8 minutes. Without CUDA the tests are skipped.
gpu-check: $(STAMP)
	timeout 480 $(PY) benchmarks/bench_gpu.py --tests

clean:
	rm -rf $(VENV) $(DEMO_VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache
