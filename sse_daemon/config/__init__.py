"""Connector definitions: text in, validated and typed objects out.

``values`` (parsers) -> ``options`` (the option tables and the typed options built
from them) -> ``model`` (raw and validated objects) <- the front ends ``yamlfile``
and ``statements`` -> ``validate`` (with ``credentials`` and ``endpoints``, the
files options name) -> ``load`` (files by suffix); ``reference`` writes
docs/options.md from the tables. Nothing here serves or connects: the edge,
connectors and daemon import this package, never the reverse.
"""
