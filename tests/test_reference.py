"""docs/options.md is generated from the option tables; it must say what the code says."""

from __future__ import annotations

from sse_daemon.config import options as config

from sse_daemon.config import reference


def test_options_reference_is_generated_from_the_code() -> None:
    committed = reference.path().read_text(encoding="utf-8")
    assert committed == reference.render(), "docs/options.md is stale: run `.venv/bin/python -m sse_daemon.config.reference`"


def test_every_option_has_a_row() -> None:
    text = reference.render()
    tables = [config.COMMON_OPTIONS, config.ADMIN_OPTIONS, config.BUS_OPTIONS, *config.CONNECTOR_TYPES.values()]
    missing = sorted({o.name for options in tables for o in options if f"| `{o.name}` |" not in text})
    assert not missing, f"no row for: {missing}"


def test_defaults_are_shown_as_an_operator_writes_them() -> None:
    option = config.Option("x", "INT", "doc", int, 4 * 1024 * 1024)
    assert reference.default_text(option) == "`4194304` (4 MiB)"
    assert reference.default_text(config.Option("x", "BOOL", "doc", bool, False)) == "`false`"
    assert reference.default_text(config.Option("x", "FLOAT", "doc", float, 15.0)) == "`15`"
    assert reference.default_text(config.Option("x", "LIST", "doc", tuple, ())) == "none"
    assert reference.default_text(config.Option("x", "STRING", "doc", str, required=True)) == "(required)"
