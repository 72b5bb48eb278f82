# Two commands do all the set-up from a fresh clone (see README.md):
#   make search   # install into .venv, run the default search on the embedded data
#   make test     # install, start the local SLURM + PostgreSQL dev cluster (as root), run every test
#                 # (and, before them, lint beside the unit tests on the dependencies' floors)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cnas-installed
ARGS ?=
# pytest-xdist workers of `make test` (0: one process). Three on the 2-core machine: SLURM and
# PostgreSQL tests mostly wait (queues, polls, sleeping jobs), a third worker fills those waits.
# How tests are grouped and ordered for the workers: tests/conftest.py.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
# Each phase of `make test` says how long it took (bash's `time`; .ci/run's log keeps them).
SHELL := /bin/bash
export TIMEFORMAT := [phase] %R s wall, %U s user, %S s sys

.PHONY: install search test lint services floors bytecode checks

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	time $(PY) -m pip install --quiet --no-compile -e '.[dev,dashboard]'
	@# pip compiles every module it installs on one core; this uses them all (half the time on
	@# two). As with pip, a file this Python cannot compile (torch ships 3.12-only test helpers)
	@# is left to import time.
	time $(PY) -m compileall -q -j0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

search: $(STAMP)
	$(PY) launch/search.py $(ARGS)

# The SLURM/PostgreSQL tests need the dev cluster; it installs Debian packages, so only root
# starts it. Elsewhere those tests skip with a reason (in CI, CI=true, they fail instead).
services:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$${CNAS_SERVICES:-1}" != 0 ]; then \
		time bash slurm/dev-cluster.sh up; \
	else \
		echo "not starting SLURM/PostgreSQL (needs root + apt-get): their tests will skip"; \
	fi

lint: $(STAMP)
	time $(PY) -m ruff check .
	time $(PY) -m ruff format --check .
	time $(PY) -m mypy

# The unit tests again, on the declared minimum version of every direct dependency (installed
# into .venv-floors/, shadowing .venv's releases): a floor in pyproject.toml can never lie.
floors: $(STAMP)
	time $(PY) .ci/floors.py -n2 --dist=loadgroup --no-loadscope-reorder

# The project's bytecode, written once before the tests: where PYTHONDONTWRITEBYTECODE=1 is set
# (this CI machine's environment sets it), each of the ~300 Python processes of the suite
# (commands, SLURM tasks, DDP ranks) would otherwise compile the modules it imports again (~0.16
# CPU-s each). A stale file is recompiled in memory, never trusted.
bytecode:
	$(PY) -m compileall -q cnas_hpc hydra_plugins tests benchmarks > /dev/null

# lint and floors share nothing: they run side by side (mypy and pip use one core each, the
# floors' tests two), each target's output kept together. Measured against one after the other:
# benchmarks/RESULTS.md (issue 20 item 9).
checks: $(STAMP)
	$(MAKE) --no-print-directory -j2 --output-sync=target lint floors

test: $(STAMP) services bytecode checks
	time $(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),$(XDIST)) $(ARGS)
