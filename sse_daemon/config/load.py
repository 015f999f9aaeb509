"""Configuration files in, a validated Config out: the front end is chosen by suffix."""

from __future__ import annotations

from typing import Callable, Iterable

from sse_daemon.config.errors import ConfigIssue, Location
from sse_daemon.config.model import Config, RawConfig
from sse_daemon.config.siddhi import load_siddhi
from sse_daemon.config.statements import load_statements
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml

__all__ = ["load_files"]


def load_files(paths: Iterable[str]) -> Config:
    """Read and validate every file; raise ConfigError with all problems.

    The front-end is chosen by extension: ``.sql`` files hold statements
    (``sse_daemon.config.statements``), ``.siddhi`` files Siddhi apps
    (``sse_daemon.config.siddhi``), anything else is YAML.
    """
    raw = RawConfig()
    for path in paths:
        try:
            # utf-8-sig: a byte order mark (Windows editors, SQL tools) is dropped for every
            # front end; YAML skipped it already, statements and Siddhi refused it as a character
            with open(path, encoding="utf-8-sig") as f:
                text = f.read()
        except OSError as e:
            raw.issues.append(ConfigIssue(Location(path), f"cannot read the file: {e.strerror or e}"))
            continue
        except UnicodeDecodeError as e:
            raw.issues.append(ConfigIssue(Location(path), f"the file is not UTF-8 text: {e}"))
            continue
        raw.extend(_front_end(path)(text, path))
    return validate(raw)


def _front_end(path: str) -> Callable[[str, str], RawConfig]:
    """``.sql``: statements; ``.siddhi``: a Siddhi app; anything else: YAML."""
    suffix = path.lower().rsplit(".", 1)[-1]
    return {"sql": load_statements, "siddhi": load_siddhi}.get(suffix, load_yaml)
