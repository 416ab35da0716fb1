# NimsForest developer entry points. On a fresh machine:
#   make run    create .venv if needed, install, start a standalone node with the demo forest
#   make test   create .venv if needed, install, run the checks (make lint) and the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= .nimsforest/standalone
PYTEST_ARGS ?=
JOBS   ?= 2

.PHONY: run test lint install bench units clean help browser-deps

help:
	@echo "make run    - start a standalone node with the demo forest (data in $(DATA))"
	@echo "make test   - run the checks (make lint) and the whole test suite"
	@echo "make lint   - ruff, mypy and the import contracts (layers, no cycles, package faces)"
	@echo "make bench  - print the startup, pipeline and cluster benchmarks"
	@echo "make units  - render the systemd/ units again from their templates"
	@echo "make stack  - run the node, PocketBase and Caddy as one stack (docs/STACK.md)"
	@echo "make clean  - remove .venv and local data"

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "NimsForest needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/nimsforest standalone --demo --data-dir $(DATA)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Debian's Chromium and its driver for the dashboard's browser test (tests/api/test_ui_browser.py),
# installed once when missing; nothing is downloaded at test time.
browser-deps:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		echo "Installing Debian's chromium and chromium-driver for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null; \
	fi

test: lint browser-deps
	$(BIN)/python -m pytest -n $(JOBS) $(PYTEST_ARGS)

bench: $(STAMP)
	@# bytecode compiled as a regular pip install does (start-up is measured, not compiling)
	$(BIN)/python -m compileall -q nimsforest natsembed registry cluster > /dev/null
	$(BIN)/nimsforest bench all

units: $(STAMP)
	for unit in $$($(BIN)/nimsforest systemd-unit --list); do \
		$(BIN)/nimsforest systemd-unit $$unit --prefix /opt/nimsforest --output systemd/$$unit; done

# The node, PocketBase and Caddy as one stack (docs/STACK.md). .env holds the PocketBase
# superuser's password; a first run generates one.
.PHONY: stack
stack: $(STAMP)
	@test -f .env || { umask 077; printf 'POCKETBASE_ADMIN_PASSWORD=%s\n' \
		"$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(18))')" > .env; \
		echo "Wrote .env with a generated PocketBase superuser password."; }
	$(BIN)/nimsforest stack up

clean:
	rm -rf $(VENV) .nimsforest .data .nimsforest-stack
