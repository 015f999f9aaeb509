"""Mappers: wire payloads to typed events and back. Pure; no I/O.

The JSON mapper reads what the system the spec comes from wrote
(``{"event": {...}}``), a bare object, or an array of either, and writes
``{"event": {...}}`` with keys in schema order and null as JSON null.
A message is accepted whole or rejected whole: one bad element rejects the
message, so an HTTP ingest never publishes half a body.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from zope.interface import Interface, implementer

from .schema import ConversionError, Event, Schema, convert


class MappingError(ValueError):
    """A payload that does not map; ``reason`` is a short label for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class IMapper(Interface):
    def decode(payload: str) -> list[dict[str, Any]]:
        """Map one message to the attribute values of zero or more events, or raise MappingError."""

    def encode(event: Event) -> str:
        """Map one event to its wire payload."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@implementer(IMapper)
class JsonMapper:
    def __init__(self, schema: Schema, fail_on_missing: bool = True) -> None:
        self.schema = schema
        self.fail_on_missing = fail_on_missing
        self._unwrap = "event" not in schema.names

    def decode(self, payload: str) -> list[dict[str, Any]]:
        try:
            document = json.loads(payload, parse_constant=_reject_constant)
        except ValueError as e:
            raise MappingError("invalid-json", f"the payload is not valid JSON: {e}") from None
        if isinstance(document, list):
            return [self._values(item, f"element {index}") for index, item in enumerate(document)]
        return [self._values(document, "the payload")]

    def _values(self, document: Any, where: str) -> dict[str, Any]:
        if not isinstance(document, dict):
            raise MappingError(
                "not-an-object",
                f"{where}: expected a JSON object such as {{\"event\": {{...}}}}, found {type(document).__name__}",
            )
        if self._unwrap and len(document) == 1 and isinstance(document.get("event"), dict):
            document = document["event"]
        values: dict[str, Any] = {}
        for attribute in self.schema.attributes:
            if attribute.name not in document:
                if self.fail_on_missing:
                    raise MappingError("missing-attribute", f"{where}: attribute '{attribute.name}' is missing")
                values[attribute.name] = None
                continue
            try:
                values[attribute.name] = convert(document[attribute.name], attribute.type)
            except ConversionError as e:
                raise MappingError("wrong-type", f"{where}: attribute '{attribute.name}': {e}") from None
        return values

    def encode(self, event: Event) -> str:
        ordered = {name: event.values.get(name) for name in self.schema.names}
        return json.dumps({"event": ordered}, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def make_mapper(options: Mapping[str, Any], schema: Schema) -> IMapper:
    """The mapper a connector's options ask for (``map.type``)."""
    map_type = options["map.type"]
    if map_type == "json":
        return JsonMapper(schema, fail_on_missing=options.get("map.fail.on.missing.attribute", True))
    raise ValueError(f"unknown map.type {map_type!r}")  # config validation prevents this
