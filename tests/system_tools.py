"""Programs from Debian that some tests drive (chromium, chromedriver, nginx).

``make test`` installs them with ``.ci/install-test-tools``. Where they cannot
be had (no root, no apt) their tests are skipped with the reason, except in
CI (``CI`` set), where a missing tool is a failure: CI must test everything.
"""

from __future__ import annotations

import os

import pytest


def require(path: str, package: str) -> None:
    if os.access(path, os.X_OK):
        return
    message = f"{path} is missing: install Debian's {package} (`make test` runs .ci/install-test-tools as root)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run this test")
    pytest.skip(message)
