# Two commands for a newcomer: `make demo` and `make test`. Both set themselves up idempotently.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TP := $(VENV)/bin/touchpoint
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
PYTEST_ARGS ?=
# uv installs the same pinned packages as pip did, in half the time with empty caches (80 s against 160 s).
UV := uv==0.13.9
# The suite in two pytest-xdist workers (tests/conftest.py groups and orders the test files).
TEST_WORKERS ?= 2

.PHONY: setup jars chromium demo test drills bench up down airflow clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || (command -v $(PYTHON) >/dev/null && $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV))
	$(PY) -m pip install -q $(UV)
	$(PY) -m uv pip install -q --python $(PY) -c requirements.lock -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP) jars

jars: $(STAMP)
	$(PY) -m touchpoint.infra.jars

up: setup
	$(TP) up

down:
	@test -x $(TP) && $(TP) down || true

demo: setup
	$(TP) up
	$(TP) demo

# Headless Chromium renders the analyst report in its test (Debian package).
chromium:
	@command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

# Starts the broker for the suite and stops it afterwards unless it was already running.
# The suite includes every fault drill at its `make test` size; `make drills` also runs the larger sizes.
test: setup chromium
	@was_up=$$($(TP) status --json | $(PY) -c 'import json,sys; print(json.load(sys.stdin)["kafka"]["answering"])'); \
	$(TP) up || exit 1; \
	$(PY) -m pytest -m "not long_drill" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
	if [ "$$was_up" != "True" ]; then $(TP) down; fi; \
	exit $$rc

# Fault drills (SIGKILLed streams, a restarted broker, lake faults): tests/test_drills_*.py, docs/DRILLS.md.
drills: setup
	$(TP) up
	$(PY) -m pytest -m drill $(PYTEST_ARGS)

bench: setup
	$(TP) up
	$(PY) -m bench.run_all

airflow: setup
	$(TP) airflow

clean: down
	rm -rf .state
