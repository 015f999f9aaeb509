# `make run` and `make test` work on a fresh machine with Python 3.11:
# they create .venv, install the project and its test tools, then run.
#
# The install is editable in setuptools' strict mode: a tree of links under
# build/ goes on sys.path, so twistd finds twisted/plugins/sse_daemon_plugin.py
# (the default mode's import hook hides it from Twisted's plugin scan) and
# edits take effect at once. A new or removed file changes its folder, which
# reinstalls, so the link tree always matches the source tree.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= etc/sse-daemon.yaml
# The example's state (its sink's history file, history.path: var/...): in the working tree,
# its content ignored by git. `make clean` leaves it; `make clean-state` empties it.
STATE := var

.PHONY: install run check lint test test-tools clean clean-state

install: $(STAMP)

PACKAGE_DIRS := $(shell find sse_daemon twisted -type d -not -name __pycache__)

$(STAMP): setup.py $(PACKAGE_DIRS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet --config-settings editable_mode=strict -e '.[test]'
	touch $(STAMP)

$(STATE):
	mkdir -p $(STATE)

run: install | $(STATE)
	$(BIN)/twistd --nodaemon --pidfile= sse-daemon --config $(CONFIG)

check: install | $(STATE)
	$(BIN)/twistd --nodaemon --pidfile= sse-daemon --config $(CONFIG) --check

# Debian's chromium, chromium-driver, nginx and redis-server, for the browser,
# proxy and Redis bus tests (installed when missing and we are root; see the script).
test-tools:
	bash .ci/install-test-tools

# ruff, mypy and the import contracts (configured in pyproject.toml); a few seconds.
lint: install
	$(BIN)/ruff check sse_daemon tests twisted
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint test-tools
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info twisted/plugins/dropin.cache

# The example's history files: the next `make run` starts with an empty history.
clean-state:
	find $(STATE) -mindepth 1 ! -name .keep -delete
