"""Mappers: wire payloads to typed events and back. Pure; no I/O, no Twisted.

The JSON mapper reads what the system the spec comes from wrote
(``{"event": {...}}``), a bare object, or an array of either, and writes
``{"event": {...}}`` with keys in schema order and null as JSON null.
A message is accepted whole or rejected whole: one bad element rejects the
message, so an HTTP ingest never publishes half a body.

The original mapper's options are supported (docs/mapping.md): on input an
enclosing element and per-attribute JSONPaths, on output an enclosing element,
a ``{{attr}}`` payload template and JSON validation. The text mapper carries
one string attribute in, and one attribute or a template out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Generator, Iterator, Mapping

from zope.interface import Attribute, Interface, implementer

from sse_daemon.mapping.jsonpath import MISSING, JsonPath
from sse_daemon.events.schema import AttrType, ConversionError, Event, Schema, convert, did_you_mean
from sse_daemon.events.validate import InvalidValue, check_steps, check_value, load_json


class MappingError(ValueError):
    """A payload that does not map; ``reason`` is a short label for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MapperConfigError(ValueError):
    """Mapper options that do not fit the schema: every (option, message) found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{option}: {message}" for option, message in problems))
        self.problems = problems


#: work one step of :meth:`IMapper.decode_steps` does, in items walked inside arrays and objects (the
#: slowest, empty objects, take about 0.8 us each): about 15 ms, so a large payload leaves other work waiting
#: one step at a time instead of the whole of it
DECODE_SLICE = 20_000
#: what mapping one event counts, in the same items (about 4 us: a few attributes, typed and checked)
EVENT_WORK = 5


class IMapper(Interface):
    content_type = Attribute("The media type of encoded payloads, sent by a raw-format sink (sse.format: raw).")

    def decode(payload: str, max_events: int | None = None) -> list[dict[str, Any]]:
        """Map one message to the attribute values of zero or more events, or raise MappingError.

        Every value is checked (validate.py) so that every mapper can encode it; more
        than ``max_events`` events is refused (``too-many-events``) before any is mapped.
        """

    def decode_steps(payload: str, max_events: int | None = None, budget: int = DECODE_SLICE) -> Generator[None, None, list[dict[str, Any]]]:
        """:meth:`decode` as a generator that yields after about ``budget`` events and values walked, and
        returns the attribute values; a caller that resumes it once per reactor turn maps a large payload
        without holding the reactor for the whole of it."""

    def encode(event: Event) -> str:
        """Map one event to its wire payload, or raise MappingError (an output map.validate.json refuses)."""


# --------------------------------------------------------------------------- payload templates


@dataclass(frozen=True, slots=True)
class Slot:
    """A ``{{name}}`` placeholder; ``quoted`` when it stands inside a JSON string literal."""

    name: str
    quoted: bool


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    parts: tuple[str | Slot, ...]

    @property
    def slots(self) -> tuple[Slot, ...]:
        return tuple(part for part in self.parts if isinstance(part, Slot))


_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)


def parse_template(text: str) -> Template:
    """Split a ``map.payload`` template into literal text and slots.

    A slot is *quoted* when the JSON text before it has an open string
    literal (an odd number of unescaped double quotes), as in
    ``{"name": "{{name}}"}``; the JSON mapper renders such a slot as string
    content and any other slot as a JSON value.
    """
    parts: list[str | Slot] = []
    in_string = escaped = False
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        literal = text[position:match.start()]
        in_string, escaped = _scan_json_strings(literal, in_string, escaped)
        if literal:
            parts.append(literal)
        parts.append(Slot(match.group(1).strip(), in_string))
        position = match.end()
    rest = text[position:]
    if "{{" in rest:  # ("}}" alone is common JSON: {"a":{"b":1}})
        raise ValueError(f"'{{{{' is not closed by '}}}}' at {rest[rest.find('{{'):][:20]!r}")
    if rest:
        parts.append(rest)
    return Template(text, tuple(parts))


def _scan_json_strings(text: str, in_string: bool, escaped: bool) -> tuple[bool, bool]:
    for char in text:
        if escaped:
            escaped = False
        elif in_string and char == "\\":
            escaped = True
        elif char == '"':
            in_string = not in_string
    return in_string, escaped


#: one encoder for every value: ``json.dumps`` with options builds a new one per call (a third of
#: the cost of encoding a small event)
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


_ENCODE_STRING = json.encoder.encode_basestring  # the C function the encoder itself uses for a str (ensure_ascii off)


def _fast_json(value: Any) -> str:
    """``_ENCODE(value)``, byte for byte, without the encoder's machinery for the scalars an event mostly
    holds (values are checked on entry: floats are finite, strings have no lone surrogate)."""
    kind = type(value)
    if kind is str:
        return _ENCODE_STRING(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is float:
        return float.__repr__(value)
    return _ENCODE(value)


def value_text(value: Any) -> str:
    """An attribute as plain text: a string as it is, anything else as its JSON text (null is ``null``)."""
    if isinstance(value, str):
        return value
    return _ENCODE(value)


def _json_value(value: Any) -> str:
    return _ENCODE(value)


def _render(template: Template, values: Mapping[str, Any], as_json: bool) -> str:
    out = []
    for part in template.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        value = values.get(part.name)
        if not as_json:
            out.append(value_text(value))
        elif part.quoted:  # string content: escaped so the literal stays valid JSON
            out.append(json.dumps(value_text(value), ensure_ascii=False)[1:-1])
        else:
            out.append(_json_value(value))
    return "".join(out)


def _wrapper(enclosing: JsonPath | None) -> tuple[str, str]:
    """``$.portfolio.company`` -> (``{"portfolio":{"company":``, ``}}``)."""
    if enclosing is None or not enclosing.names_only:
        return "", ""  # an index cannot wrap; config validation refuses it on sinks
    prefix = "".join("{" + _json_value(name) + ":" for name in enclosing.steps)
    return prefix, "}" * len(enclosing.steps)


def _validated(body: str) -> str:
    try:
        json.loads(body, parse_constant=_reject_constant)
    except ValueError as e:
        text = body if len(body) <= 60 else body[:57] + "..."
        raise MappingError("invalid-json", f"the output is not valid JSON ({e}): {text!r}") from None
    return body


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_STRING = AttrType.STRING


def _place(where: int | str) -> str:
    """Where in a payload: an element's index (a message is only written for an error), or a phrase."""
    return f"element {where}" if isinstance(where, int) else where


def _typed(value: Any, attr_type: AttrType, where: int | str, name: str, found_at: str) -> Any:
    """A value found in a payload, checked (every sink must be able to write it) and converted to its type."""
    try:
        check_value(value)
        return convert(value, attr_type)
    except (InvalidValue, ConversionError) as e:
        raise _refused(e, where, name, found_at) from None


def _typed_steps(value: Any, attr_type: AttrType, where: int | str, name: str, found_at: str) -> Generator[int, None, Any]:
    """:func:`_typed` for an array or an object, whose check may be long: it yields what it walked (:func:`check_steps`)."""
    try:
        yield from check_steps(value)
        return convert(value, attr_type)
    except (InvalidValue, ConversionError) as e:
        raise _refused(e, where, name, found_at) from None


def _refused(e: InvalidValue | ConversionError, where: int | str, name: str, found_at: str) -> MappingError:
    at = e.at if isinstance(e, InvalidValue) else ""
    return MappingError(e.reason, f"{_place(where)}: attribute '{name}'{found_at}{at}: {e}")


@implementer(IMapper)
class JsonMapper:
    """JSON in and out, with the original mapper's options.

    Input: ``enclosing`` selects the event or array of events inside the
    document (default: the document itself); ``attributes`` reads named
    attributes from JSONPaths relative to each event (an attribute without a
    path is read from ``$.<name>``); without them an event is
    ``{"event": {...}}`` or a bare object. Output: ``{"event": {...}}`` or the
    ``payload`` template, wrapped in ``enclosing`` (names only), checked by
    ``validate_json``.
    """

    content_type = "application/json"

    def __init__(
        self,
        schema: Schema,
        fail_on_missing: bool = True,
        *,
        enclosing: JsonPath | None = None,
        attributes: Mapping[str, JsonPath] | None = None,
        payload: Template | None = None,
        validate_json: bool = False,
    ) -> None:
        self.schema = schema
        self.fail_on_missing = fail_on_missing
        self.enclosing = None if enclosing is None or enclosing.is_root else enclosing
        self.payload = payload
        self._unwrap = "event" not in schema.names
        self._attributes = tuple((a.name, a.type) for a in schema.attributes)
        self._paths: tuple[tuple[str, AttrType, JsonPath], ...] | None = None
        if attributes:
            self._paths = tuple(
                (a.name, a.type, attributes.get(a.name) or JsonPath((a.name,), f"$.{a.name}"))
                for a in schema.attributes
            )
        self._prefix, self._suffix = _wrapper(self.enclosing)
        #: each attribute's name and its JSON key as the output writes it (',"name":', the first '{"event":{"name":')
        self._keys = tuple((name, ('{"event":{' if index == 0 else ",") + _ENCODE(name) + ":")
                           for index, name in enumerate(schema.names))
        # The default output is valid JSON by construction; only a template needs the check.
        self._validate = validate_json and payload is not None

    def decode(self, payload: str, max_events: int | None = None) -> list[dict[str, Any]]:
        values, items = self._items(payload, max_events)
        return [values(item, where, None) for where, item in items]

    def decode_steps(self, payload: str, max_events: int | None = None, budget: int = DECODE_SLICE) -> Generator[None, None, list[dict[str, Any]]]:
        rows: list[dict[str, Any]] = []
        yield from self._steps(payload, max_events, budget, rows)
        return rows

    def _items(self, payload: str, max_events: int | None) -> tuple[Any, Any]:
        """The payload parsed: the method that maps one event's values, and its events with where each stands."""
        try:
            document = load_json(payload)
        except InvalidValue as e:
            raise MappingError(e.reason, f"the payload: {e}") from None
        except ValueError as e:
            raise MappingError("invalid-json", f"the payload is not valid JSON: {e}") from None
        if self.enclosing is not None:
            document = self.enclosing.find(document)
            if document is MISSING:
                raise MappingError("no-enclosing-element", f"the enclosing element {self.enclosing} is not in the payload")
        values = self._values if self._paths is None else self._path_values
        if isinstance(document, list):
            if max_events is not None and len(document) > max_events:
                raise MappingError("too-many-events", f"the payload holds {len(document)} events; at most {max_events} are accepted at once")
            items: Any = enumerate(document)
        else:
            items = (("the payload", document),)
        return values, items

    def _steps(self, payload: str, max_events: int | None, budget: int, rows: list[dict[str, Any]]) -> Iterator[None]:
        """The events of ``payload`` into ``rows``, yielding after each ``budget`` of work (0: never). The parse
        itself is one step; a payload of ``budget`` characters or fewer cannot walk more than one: mapped at once."""
        values, items = self._items(payload, max_events)
        if not budget or len(payload) <= budget:
            rows += [values(item, where, None) for where, item in items]
            return
        yield  # the parse of a large payload is a step of its own
        spent = 0
        arrays_and_objects: list[tuple[str, Any, AttrType, str]] = []  # an event's, checked here a step at a time
        for where, item in items:
            row = values(item, where, arrays_and_objects)
            for name, value, attr_type, found_at in arrays_and_objects:
                steps = _typed_steps(value, attr_type, where, name, found_at)
                while True:
                    try:
                        spent += next(steps)
                    except StopIteration as typed:
                        row[name] = typed.value
                        break
                    if spent >= budget:
                        yield  # within one large value
                        spent = 0
            arrays_and_objects.clear()
            rows.append(row)
            spent += EVENT_WORK
            if spent >= budget:
                yield
                spent = 0

    def _values(self, document: Any, where: int | str, later: list | None) -> dict[str, Any]:
        """An event's values. Arrays and objects go to ``later`` (name, value, type, where found) when it is a
        list, for the caller to check a step at a time; with None they are checked here."""
        if document.__class__ is not dict:
            raise MappingError(
                "not-an-object",
                f"{_place(where)}: expected a JSON object such as {{\"event\": {{...}}}}, found {type(document).__name__}",
            )
        if self._unwrap and len(document) == 1 and document.get("event").__class__ is dict:
            document = document["event"]
        values: dict[str, Any] = {}
        for name, attr_type in self._attributes:
            value = document.get(name, MISSING)
            if value.__class__ is str and attr_type is _STRING and value.isascii():
                values[name] = value  # ASCII text for a string: nothing to check or convert (the common case, at once)
            elif value is MISSING:
                if self.fail_on_missing:
                    raise MappingError("missing-attribute", f"{_place(where)}: attribute '{name}' is missing")
                values[name] = None
            elif later is not None and (value.__class__ is dict or value.__class__ is list):
                values[name] = None  # its place, in schema order
                later.append((name, value, attr_type, ""))
            else:
                values[name] = _typed(value, attr_type, where, name, "")
        return values

    def _path_values(self, document: Any, where: int | str, later: list | None) -> dict[str, Any]:
        """:meth:`_values` with ``map.attributes`` (JSONPath)."""
        values: dict[str, Any] = {}
        for name, attr_type, path in self._paths or ():
            value = path.find(document)
            if value is MISSING:
                if self.fail_on_missing:
                    raise MappingError("missing-attribute", f"{_place(where)}: attribute '{name}' is missing (nothing at {path})")
                value = None
            if later is not None and (value.__class__ is dict or value.__class__ is list):
                values[name] = None  # its place, in schema order
                later.append((name, value, attr_type, f" (at {path})"))
            else:
                values[name] = _typed(value, attr_type, where, name, f" (at {path})")
        return values

    def encode(self, event: Event) -> str:
        if self.payload is not None:
            body = _render(self.payload, event.values, as_json=True)
        else:  # {"event": {...}} in the schema's order, its keys encoded once (_keys: the first has the opening)
            values = event.values
            parts: list[str] = []
            for name, key in self._keys:
                parts += (key, _fast_json(values.get(name)))
            body = "".join(parts) + "}}"
        body = self._prefix + body + self._suffix
        return _validated(body) if self._validate else body


@implementer(IMapper)
class TextMapper:
    """Plain text: the whole message is the one (string) attribute; out, that
    attribute's text or the ``payload`` template with values as plain text."""

    content_type = "text/plain; charset=utf-8"

    def __init__(self, schema: Schema, *, payload: Template | None = None, validate_json: bool = False) -> None:
        self.schema = schema
        self.payload = payload
        self._name = schema.attributes[0].name
        self._validate = validate_json

    def decode(self, payload: str, max_events: int | None = None) -> list[dict[str, Any]]:
        try:
            check_value(payload)
        except InvalidValue as e:
            raise MappingError(e.reason, f"the payload: {e}") from None
        return [{self._name: payload}]

    def decode_steps(self, payload: str, max_events: int | None = None, budget: int = DECODE_SLICE) -> Generator[None, None, list[dict[str, Any]]]:
        yield from ()  # one step: a string's check is a scan in C
        return self.decode(payload, max_events)

    def encode(self, event: Event) -> str:
        if self.payload is not None:
            body = _render(self.payload, event.values, as_json=False)
        else:
            body = value_text(event.values.get(self._name))
        return _validated(body) if self._validate else body


@dataclass(frozen=True, kw_only=True)
class MappingOptions:
    """What a connector's ``map.*`` options ask of its mapper (the config package builds it)."""

    map_type: str  # json or text
    enclosing: JsonPath | None  # map.enclosing.element
    attributes: Mapping[str, JsonPath]  # map.attributes.<attr> (sources)
    payload: Template | None  # map.payload (sinks)
    validate_json: bool  # map.validate.json (sinks)
    fail_on_missing: bool  # map.fail.on.missing.attribute (sources)


def make_mapper(options: MappingOptions, schema: Schema, role: str | None = None) -> IMapper:
    """The mapper a connector's options ask for (``map.type`` and the ``map.*`` options).

    Options that do not fit the schema raise MapperConfigError listing every
    problem; configuration validation calls this with the connector's
    ``role`` (``source`` or ``sink``) to check the direction-specific rules too.
    """
    map_type = options.map_type
    payload = options.payload
    enclosing = options.enclosing
    attributes = options.attributes
    problems: list[tuple[str, str]] = []
    for slot in payload.slots if payload is not None else ():
        if slot.name not in schema.names:
            problems.append(("map.payload", f"unknown attribute {{{{{slot.name}}}}} in the template{did_you_mean(slot.name, schema.names)}"))
    for name in attributes:
        if name not in schema.names:
            problems.append((f"map.attributes.{name}", f"unknown attribute '{name}'{did_you_mean(name, schema.names)}"))
    if map_type == "text":
        if enclosing is not None:
            problems.append(("map.enclosing.element", "applies only with map.type json"))
        for name in attributes:
            problems.append((f"map.attributes.{name}", "applies only with map.type json"))
        one_string = len(schema.attributes) == 1 and schema.attributes[0].type is AttrType.STRING
        if role == "source" and not one_string:
            problems.append(("map.type", f"map.type text maps each message to one string attribute; the schema must be exactly one, found ({schema})"))
        if role != "source" and payload is None and len(schema.attributes) != 1:
            problems.append(("map.type", f"map.type text writes the schema's only attribute, or a map.payload template; found ({schema}) and no map.payload"))
    elif map_type != "json":
        problems.append(("map.type", f"unknown map.type {map_type!r}"))  # the option table prevents this
    if problems:
        raise MapperConfigError(problems)
    validate_json = options.validate_json
    if map_type == "text":
        return TextMapper(schema, payload=payload, validate_json=validate_json)
    return JsonMapper(
        schema, fail_on_missing=options.fail_on_missing,
        enclosing=enclosing, attributes=attributes, payload=payload, validate_json=validate_json,
    )
