"""The typed options: one field per table entry, built once, frozen; and the config package's layering."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from sse_daemon.config import options as tables
from sse_daemon.config.model import ConnectorDef
from sse_daemon.config.options import (
    OPTION_CLASSES,
    AccessOptions,
    AdminOptions,
    BusOptions,
    ListenOptions,
    PortLimitOptions,
    ServerTlsOptions,
    SseServerOptions,
    SseSourceOptions,
    TypedOptions,
)
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml

PACKAGE = Path(__file__).resolve().parents[1] / "sse_daemon"

#: every options class and the table it is built from
CLASSES: list[tuple[type[TypedOptions], tuple[tables.Option, ...]]] = [
    *((OPTION_CLASSES[key], table) for key, table in tables.CONNECTOR_TYPES.items()),
    (AdminOptions, tables.ADMIN_OPTIONS),
    (BusOptions, tables.BUS_OPTIONS),
    (AccessOptions, tables.ACCESS_OPTIONS),
    (ServerTlsOptions, tables.TLS_SERVER_OPTIONS),
    (PortLimitOptions, tables.PORT_LIMIT_OPTIONS),
]


@pytest.mark.reactor_free
@pytest.mark.parametrize(("cls", "table"), CLASSES, ids=lambda v: getattr(v, "__name__", ""))
def test_every_table_entry_has_a_field_and_every_field_an_entry(cls: type[TypedOptions], table: tuple[tables.Option, ...]) -> None:
    assert cls.TABLE == table
    entries = [option.attribute for option in table]
    assert len(entries) == len(set(entries)), "two options of one table map to one field"
    fields = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    assert set(entries) - fields == set(), "options without a field"
    assert fields - set(entries) == set(), "fields without an option"


@pytest.mark.reactor_free
def test_every_connector_type_has_an_options_class_and_the_common_options_are_the_definitions_own() -> None:
    assert set(OPTION_CLASSES) == set(tables.CONNECTOR_TYPES)
    own = {field.name for field in dataclasses.fields(ConnectorDef)}
    assert {option.attribute for option in tables.COMMON_OPTIONS} <= own
    listening = [cls for cls in OPTION_CLASSES.values() if issubclass(cls, ListenOptions)]
    assert sorted(cls.__name__ for cls in listening) == ["HttpSourceOptions", "SseServerOptions"]


@pytest.mark.reactor_free
def test_options_are_parsed_once_typed_and_frozen(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("alice:$2b$12$" + "x" * 53 + "\n")
    config = validate(load_yaml(f"""\
sinks:
  Out:
    type: sse-server
    schema: a int
    server.port: '8020'
    history.size: '5'
    auth.type: basic
    auth.users.file: {users}
    headers: "'X-A:1'"
sources:
  Up:
    type: sse
    stream: Out
    receiver.url: http://u:p@example.com/s
    map.attributes.a: $.b
    event.types: a, b
bus:
  type: redis
  key.prefix: k
"""))
    out, up = config.sinks[0], config.sources[0]
    assert isinstance(out.options, SseServerOptions) and isinstance(up.options, SseSourceOptions)
    assert (out.options.server_port, out.options.history_size, out.options.headers) == (8020, 5, (("X-A", "1"),))
    assert out.options.files() == (str(users),) and out.options.environment() == ()
    assert out.options.by_name()["history.size"] == 5
    assert (up.options.event_types, up.options.map_attributes["a"].text) == (("a", "b"), "$.b")
    assert up.options.mapping.attributes == up.options.map_attributes
    assert config.bus.options.key_prefix == "k" and config.bus.options.url.port == 6379
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.options.history_size = 6  # type: ignore[misc]


@pytest.mark.reactor_free
def test_defaults_come_from_the_table_and_admin_access_reuses_the_sinks_options() -> None:
    built = SseServerOptions.with_defaults(server_port=0, history_size=3)
    assert (built.server_port, built.history_size, built.heartbeat_interval, built.map_type) == (0, 3, 15.0, "json")
    admin = AdminOptions.with_defaults(port=0, auth_type=("basic",), auth_users_file="users")
    access = admin.access("basic")
    assert (access.auth_type, access.auth_users_file, access.auth_realm, access.cors_origins) == ("basic", "users", "sse-daemon admin", ())


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.reactor_free
@pytest.mark.parametrize(("package", "forbidden"), [
    ("config", ("sse_daemon.edge", "sse_daemon.connectors", "sse_daemon.daemon", "sse_daemon.workers", "sse_daemon.ops",
                "sse_daemon.bus", "twisted.internet", "twisted.web")),
    ("mapping", ("sse_daemon.config",)),
])
def test_layering(package: str, forbidden: tuple[str, ...]) -> None:
    """config reads files and builds objects but serves nothing: the edge imports it, never the reverse."""
    wrong = sorted(f"{path.name}: {name}" for path in (PACKAGE / package).glob("*.py") for name in _imports(path)
                   if name.startswith(forbidden))
    assert not wrong


@pytest.mark.reactor_free
def test_config_modules_import_no_cycle() -> None:
    """Each config module imports only modules listed before it: the order below is a topological one."""
    order = ["errors", "values", "grammar", "expressions", "filters", "options", "model", "statements", "siddhi", "yamlfile",
             "credentials", "endpoints", "validate", "load", "reference"]
    assert sorted(order) == sorted(p.stem for p in (PACKAGE / "config").glob("*.py") if p.stem != "__init__")
    for index, name in enumerate(order):
        inside = {m.rsplit(".", 1)[1] for m in _imports(PACKAGE / "config" / f"{name}.py") if m.startswith("sse_daemon.config.")}
        later = inside & set(order[index:])
        assert not later, f"{name} imports {later}"


@pytest.mark.reactor_free
def test_no_string_lookup_of_an_option_outside_the_config_package() -> None:
    lookup = re.compile(r"""\[["'][a-z]+\.[a-z.]+["']\]|\.get\(["'][a-z]+\.[a-z.]+["']""")
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path in PACKAGE.rglob("*.py") if "config" not in path.relative_to(PACKAGE).parts
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if lookup.search(line)]
    assert not found
