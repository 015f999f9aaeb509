"""``twistd sse-daemon``: command-line options and the service they build.

The configuration is loaded and checked while options are parsed, so a bad
file stops twistd before anything binds, with every error listed at once.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from .config import Config, ConfigError, load_files
from .service import DaemonService, build_service


class Options(usage.Options):
    synopsis = "--config FILE [--config FILE ...] [--check]"
    longdesc = (
        "Runs Server-Sent Events sinks and sources defined in YAML files. "
        "--check validates the configuration, prints a summary and exits."
    )
    optFlags = [["check", None, "Validate the configuration, print a summary and exit (0 valid, 1 invalid)."]]

    def __init__(self) -> None:
        super().__init__()
        self["config"] = []
        self.loaded: Config | None = None

    def opt_config(self, path: str) -> None:
        """A YAML configuration file (repeat for several files)."""
        self["config"].append(path)

    opt_c = opt_config

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required (for example --config etc/sse-daemon.yaml)")
        try:
            self.loaded = load_files(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"{e}\n")
            raise SystemExit(1)
        if self["check"]:
            sys.stdout.write(self.loaded.summary() + "\n")
            raise SystemExit(0)


def makeService(options: Options, reactor: Any = None) -> DaemonService:
    assert options.loaded is not None
    service = build_service(options.loaded, reactor)
    service.exit_on_bind_error = True
    return service
