# Realtime Platform: `make run` serves it, `make test` tests it. Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test fuzz lint check bench lock clean

help:
	@echo "make run    serve the platform on http://$(HOST):$(PORT) (SQLite, no Redis, built-in OpenAI emulator)"
	@echo "make test   run the whole test suite (uses Postgres/Redis if DATABASE_URL/REDIS_URL are set)"
	@echo "make fuzz   the API fuzzing gate with 500 examples per operation (RTP_FUZZ_EXAMPLES=N to change)"
	@echo "make lint   ruff and mypy"
	@echo "make bench  run the benchmarks in bench/ and print ratios"
	@echo "make lock   re-pin requirements/*.txt from pyproject.toml"

$(VENV)/.python-ok:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@touch $@

$(VENV)/.base-installed: requirements/base.txt $(VENV)/.python-ok
	$(PY) -m pip install --quiet -r requirements/base.txt
	@touch $@

$(VENV)/.dev-installed: requirements/dev.txt $(VENV)/.python-ok
	$(PY) -m pip install --quiet -r requirements/dev.txt
	@touch $@ $(VENV)/.base-installed

# First run only: a private .env with fresh secrets and DEBUG on, for the embedded demo.
.env: | $(VENV)/.python-ok
	@$(PY) scripts/make_dotenv.py > $@
	@echo "wrote .env with freshly generated secrets (DEBUG on); edit it or set real env vars to override"

run: $(VENV)/.base-installed .env
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v0
	$(PY) manage.py seed_demo
	exec $(PY) manage.py serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed
	$(PY) -m pytest $(PYTEST_ARGS)

# `make test` runs the same module with 25 examples per operation; this is the long run.
fuzz: $(VENV)/.dev-installed
	RTP_FUZZ_EXAMPLES=$${RTP_FUZZ_EXAMPLES:-500} $(PY) -m pytest tests/gates/test_api_fuzz.py --timeout=1800 $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DJANGO_SECRET_KEY=mypy-only RTP_READ_DOTENV=false $(VENV)/bin/mypy realtime_platform tenants tokens usage audit relay upstream

bench: $(VENV)/.dev-installed
	$(PY) -m bench

lock: $(VENV)/.dev-installed
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --allow-unsafe -o requirements/base.txt pyproject.toml
	$(VENV)/bin/pip-compile --quiet --strip-extras --no-header --allow-unsafe --extra dev -o requirements/dev.txt pyproject.toml

clean:
	rm -rf $(VENV) var
