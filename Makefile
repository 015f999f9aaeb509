# `make run` and `make test` work on a fresh machine with Python 3.11:
# they create .venv, install the project (compat editable mode, so twistd
# finds the plugin in this tree) and its test tools, then run.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= etc/sse-daemon.yaml

.PHONY: install run check test test-tools clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/twistd --nodaemon --pidfile= sse-daemon --config $(CONFIG)

check: install
	$(BIN)/twistd --nodaemon --pidfile= sse-daemon --config $(CONFIG) --check

# Debian's chromium, chromium-driver, nginx and redis-server, for the browser,
# proxy and Redis bus tests (installed when missing and we are root; see the script).
test-tools:
	bash .ci/install-test-tools

test: install test-tools
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache
