# Two commands do all the set-up from a fresh clone (see README.md):
#   make search   # install into .venv, run the default search on the embedded data
#   make test     # install, start the local SLURM + PostgreSQL dev cluster (as root), run every test
#                 # (and the unit tests once more on the dependencies' floors: make floors)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cnas-installed
ARGS ?=

.PHONY: install search test lint services floors

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,dashboard]'
	touch $(STAMP)

install: $(STAMP)

search: $(STAMP)
	$(PY) launch/search.py $(ARGS)

# The SLURM/PostgreSQL tests need the dev cluster; it installs Debian packages, so only root
# starts it. Elsewhere those tests skip with a reason (in CI, CI=true, they fail instead).
services:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$${CNAS_SERVICES:-1}" != 0 ]; then \
		bash slurm/dev-cluster.sh up; \
	else \
		echo "not starting SLURM/PostgreSQL (needs root + apt-get): their tests will skip"; \
	fi

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# The unit tests again, on the declared minimum version of every direct dependency (installed
# into .venv-floors/, shadowing .venv's releases): a floor in pyproject.toml can never lie.
floors: $(STAMP)
	$(PY) .ci/floors.py

test: $(STAMP) services lint floors
	$(PY) -m pytest $(ARGS)
