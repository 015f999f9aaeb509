"""docs/architecture.md explains the package to a newcomer: its module index must list what is there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_module_index_lists_every_module_and_nothing_else() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    index = text[text.index("## Module index"):]
    listed = set(re.findall(r"^(sse_daemon/\S+\.py)\s", index, flags=re.M))
    present = {str(p.relative_to(ROOT)) for p in (ROOT / "sse_daemon").rglob("*.py") if p.name != "__init__.py"}
    assert not present - listed, f"modules missing from docs/architecture.md's module index: {sorted(present - listed)}"
    assert not listed - present, f"the module index lists modules that are gone: {sorted(listed - present)}"


def test_every_package_says_what_it_holds() -> None:
    silent = [str(p.relative_to(ROOT)) for p in (ROOT / "sse_daemon").rglob("__init__.py")
              if '"""' not in p.read_text(encoding="utf-8")[:10]]
    assert not silent, f"packages without a docstring: {silent}"
