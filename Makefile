# Two commands for a newcomer: `make run` serves Depot, `make test` tests it.
# Both create .venv and install the dependencies on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# pytest-xdist workers: half again as many as cores (an idle one takes tests from a
# busy one). Many tests spend part of their time waiting on a subprocess or a
# socket: with one worker per core the cores stood idle 16 % of a quiet run, and on
# two cores three workers took the suite from 10 min 29 s to 8 min 16 s.
# 0 runs the suite in this one process.
PYTEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1; print(max(1, n * 3 // 2))')
# npm writes this once `npm ci` has installed e2e/node_modules.
E2E_STAMP := e2e/node_modules/.package-lock.json

.PHONY: install e2e-install lock run test lint audit format schema docs graphiql services services-stop clean

# The lock: every package at the version (and hashes) tested, for every
# platform and Python >= 3.11. requirements/runtime.txt is the image's share.
LOCK := requirements/dev.txt
LOCK_ARGS ?=
LOCK_FLAGS = --quiet --universal --python-version 3.11 --generate-hashes --custom-compile-command 'make lock' $(LOCK_ARGS)

# pip installs only uv (locked, hashed); uv installs the rest from the lock,
# in seconds where pip takes minutes. Nothing but Python is needed first.
UV := $(BIN)/uv
UV_PIP = $(UV) pip install --quiet --python $(BIN)/python

$(UV): requirements/bootstrap.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Depot needs Python 3.11 or newer; set PYTHON=python3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/bootstrap.txt
	@touch $(UV)

$(STAMP): pyproject.toml $(LOCK) $(UV)
	$(UV_PIP) --require-hashes -r $(LOCK)
	$(UV_PIP) --no-deps --no-build-isolation -e .
	@$(UV) pip check --quiet --python $(BIN)/python >/dev/null || { $(UV) pip check --python $(BIN)/python; echo "$(LOCK) lacks what pyproject.toml asks for: run 'make lock'"; exit 1; }
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install Depot with its development tools from the lock

# uv keeps every pin the files already hold unless told otherwise:
# `make lock` after editing pyproject.toml changes only what it must;
# `make lock LOCK_ARGS=--upgrade` moves everything to the newest allowed.
lock: $(UV) ## Refresh requirements/*.txt (the lock) from pyproject.toml
	$(UV) pip compile pyproject.toml requirements/build.in --extra dev $(LOCK_FLAGS) -o requirements/dev.txt
	$(UV) pip compile pyproject.toml requirements/build.in $(LOCK_FLAGS) -o requirements/runtime.txt
	$(UV) pip compile requirements/bootstrap.in $(LOCK_FLAGS) -o requirements/bootstrap.txt

# No install scripts: esbuild's binary comes as its platform package, and the
# only script in the tree (esbuild's check of that binary) is not needed.
$(E2E_STAMP): e2e/package.json e2e/package-lock.json
	npm ci --prefix e2e --no-audit --no-fund --ignore-scripts
	@touch $@

e2e-install: ## Install the frontend clients the browser tests drive, when npm is here
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(E2E_STAMP); \
	else echo "npm not found: tests/test_browser.py will skip (install Node.js 20 or newer)"; fi

run: $(STAMP) ## Serve Depot on the embedded defaults: http://localhost:8000/graphql
	$(BIN)/depot serve

# Bytecode is written even where the environment says not to (PYTHONDONTWRITEBYTECODE):
# the suite starts many Python processes (its xdist workers and every depot serve,
# worker and scheduler a test runs), and without the cache each compiles Depot again
# (collection alone took 9.2 s of CPU per xdist worker instead of 5.7 s).
test: $(STAMP) e2e-install ## Run the whole test suite (PostgreSQL and Redis tests skip without them)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest --numprocesses=$(PYTEST_WORKERS) --maxprocesses=8 --dist=worksteal $(PYTEST_ARGS)

lint: $(STAMP) ## Lint, check formatting and type-check (strict)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

audit: $(STAMP) ## Check the locked packages against known vulnerabilities (pip-audit)
	$(BIN)/python scripts/audit.py $(LOCK)

format: $(STAMP) ## Fix lint findings and format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schema: $(STAMP) ## Write the schema SDL to schema.graphql after changing the schema
	$(BIN)/depot export-schema --output schema.graphql

docs: $(STAMP) ## Regenerate the README's configuration table and .env.example from the settings
	$(BIN)/python -m tests.test_docs

graphiql: $(STAMP) ## Refresh GraphiQL's files in api/static/graphiql/ from npm and their hash manifest
	$(BIN)/python scripts/vendor_graphiql.py

services: ## Start PostgreSQL and Redis for the tests; eval the output
	@scripts/test-services.sh start

services-stop: ## Stop the test services and delete their data
	@scripts/test-services.sh stop

clean: ## Remove the virtual environment, caches and ./var
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
