"""Every configuration the docs show loads: YAML, statement and Siddhi blocks of docs/*.md and README.md.

A block may be a fragment (a sink without its stream's schema, a section alone, files
that exist only on a server); anything else it cannot load is a broken example.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.siddhi import load_siddhi
from sse_daemon.config.statements import load_statements
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import TOP_LEVEL_KEYS, load_yaml

pytestmark = pytest.mark.reactor_free

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
#: an unlabelled block that is a Siddhi app (others are output, listings, error messages)
SIDDHI_START = re.compile(r"\A\s*(@App:|@source\(|@sink\(|define\s+stream\b)", re.I)
#: what a fragment of a configuration lacks: a schema given elsewhere, the connectors, files of a real server
FRAGMENT = re.compile(r"has no schema|no sources or sinks are defined|cannot read .*/etc/|directory .* does not exist")


def examples() -> list[tuple[str, str, str]]:
    found = []
    for doc in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        text = doc.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            language, body = match.groups()
            first_line = text.count("\n", 0, match.start()) + 2
            where = f"{doc.relative_to(ROOT)}:{first_line}"
            body = "\n" * (first_line - 1) + body  # errors name the doc's own lines
            if language == "yaml":
                top = yaml.safe_load(body)
                if isinstance(top, dict) and set(top) & set(TOP_LEVEL_KEYS):  # not Prometheus's, not an indented option
                    found.append((where, "yaml", body))
            elif language == "sql" or (language == "" and SIDDHI_START.match(body)):
                found.append((where, language or "siddhi", body))
    return found


def test_the_docs_show_configurations_of_every_kind() -> None:
    assert {kind for _, kind, _ in examples()} == {"yaml", "sql", "siddhi"}


@pytest.mark.parametrize("where, kind, text", examples(), ids=lambda v: v if ":" in str(v) and "\n" not in str(v) else "")
def test_a_docs_example_loads(where: str, kind: str, text: str) -> None:
    front_end = {"yaml": load_yaml, "sql": load_statements, "siddhi": load_siddhi}[kind]
    try:
        validate(front_end(text, where.rsplit(":", 1)[0]))
    except ConfigError as e:
        broken = [str(issue) for issue in e.issues if not FRAGMENT.search(str(issue))]
        assert not broken, "\n".join(broken)
