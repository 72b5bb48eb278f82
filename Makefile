# Two commands do all the set-up from a fresh clone (see README.md):
#   make search   # install into .venv, run the default search on the embedded data
#   make test     # install, start the local SLURM + PostgreSQL dev cluster (as root), run every test
#                 # (beside them: lint, and the unit tests on the dependencies' floors: make floors)
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

.PHONY: install search test lint services floors bytecode

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	time $(PY) -m pip install --quiet -e '.[dev,dashboard]'
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

# lint and floors need no service and share nothing with the tests: they run BESIDE them, at the
# lowest CPU priority, in the CPU the tests leave idle while they wait for SLURM and PostgreSQL
# (~15 % of it on the 2-core machine); their output follows the tests'. Either failing fails
# `make test`. Saves their ~100 s in a row (benchmarks/RESULTS.md, issue 20 item 9).
SIDE_LOG := .ci-side.log
test: $(STAMP) services bytecode
	@nice -n 19 $(MAKE) --no-print-directory lint floors > $(SIDE_LOG) 2>&1 & side=$$!; \
	time $(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),$(XDIST)) $(ARGS); tests=$$?; \
	wait $$side; checks=$$?; \
	echo "--- lint and floors (run beside the tests) ---"; cat $(SIDE_LOG); \
	if [ $$checks != 0 ]; then echo "lint or floors FAILED (exit $$checks): see above"; fi; \
	[ $$tests = 0 ] && [ $$checks = 0 ]
