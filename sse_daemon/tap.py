"""``twistd sse-daemon``: command-line options and the service they build.

The configuration is loaded and checked while options are parsed, so a bad
file stops twistd before anything binds, with every error listed at once.
"""

from __future__ import annotations

import math
import signal
import sys
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python import usage

from sse_daemon.ops import logs
from sse_daemon.config.errors import ConfigError, ConfigIssue
from sse_daemon.config.load import load_files
from sse_daemon.config.model import Config
from sse_daemon.config.options import ServerTlsOptions
from sse_daemon.connectors.sink.durable import HistoryRefused
from sse_daemon.connectors.sink.historyfile import HistoryUnavailable, check_file
from sse_daemon.daemon.service import DaemonService, build_service
from sse_daemon.edge.listener import server_endpoint
from sse_daemon.edge.tls import is_tls


#: the shortest --stats-interval: a line per connector ten times a second is already more than anyone reads
MIN_STATS_INTERVAL = 0.1


class Options(usage.Options):
    synopsis = "--config FILE [--config FILE ...] [--check]"
    longdesc = (
        "Runs Server-Sent Events sinks and sources defined in YAML files, statement files (.sql) or Siddhi apps (.siddhi). "
        "--check validates the configuration, prints a summary and exits."
    )
    optFlags = [["check", None, "Validate the configuration, print a summary and exit (0 valid, 1 invalid)."]]
    optParameters = [
        ["log-format", None, None, "Log lines as 'json' (one object per line, for the journal) or 'text' (twistd's); "
                                   "default $SSE_DAEMON_LOG_FORMAT or text."],
        ["log-level", None, None, "Lowest level logged: debug, info, warn, error, critical; default $SSE_DAEMON_LOG_LEVEL or info."],
        ["stats-interval", None, "60", "Seconds between log lines with every connector's counters (info level); 0 turns them off."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["config"] = []
        self.loaded: Config | None = None

    def opt_config(self, path: str) -> None:
        """A configuration file: YAML, statements if it ends in .sql, a Siddhi app if in .siddhi (repeat for several files)."""
        self["config"].append(path)

    opt_c = opt_config

    def postOptions(self) -> None:
        self._logging()
        try:
            interval = float(self["stats-interval"])
        except ValueError:
            interval = math.nan
        if not (interval == 0 or MIN_STATS_INTERVAL <= interval < math.inf):  # nan passed every check; 1e-300 wrote lines without end
            raise usage.UsageError(f"--stats-interval: expected 0 (off) or seconds from {MIN_STATS_INTERVAL:g} up, "
                                   f"found {self['stats-interval']!r}")
        self["stats-interval"] = interval
        if not self["config"]:
            raise usage.UsageError("--config FILE is required (for example --config etc/sse-daemon.yaml)")
        try:
            self.loaded = load_files(self["config"])
        except ConfigError as e:
            sys.stderr.write(f"{e}\n")
            raise SystemExit(1) from None
        if self["check"]:
            unparsed = endpoint_problems(self.loaded)
            if unparsed:  # starting would stop at these before it binds anything
                sys.stderr.write(f"{ConfigError(unparsed)}\n")
                raise SystemExit(1)
            problems = history_file_problems(self.loaded)
            fatal = any(refused for _, refused in problems)
            if not fatal:  # "configuration OK" only when the daemon would start
                sys.stdout.write(self.loaded.summary() + "\n")
            for line, _ in problems:
                sys.stderr.write(line + "\n")
            raise SystemExit(1 if fatal else 0)

    def _logging(self) -> None:
        """Make --log-format/--log-level work under twistd, which has neither.

        twistd parses this plugin's options before it starts logging and only
        then reads its own ``logger`` option; naming our observer factory
        there (unless --logger names one already) hands it the log.
        """
        fmt, level = self["log-format"], self["log-level"]
        # Always: twistd alone would log every level, debug (per-event lines) included.
        try:
            parent = getattr(self, "parent", None)
            logs.select(fmt, level, parent.get("logfile") if parent is not None else None)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if parent is not None and not parent.get("logger"):
            parent["logger"] = "sse_daemon.ops.logs.selected_observer"


def endpoint_problems(config: Config) -> list[ConfigIssue]:
    """For ``--check``: each ``server.endpoint`` Twisted cannot parse, at which starting would stop.

    Only Twisted reads these strings (the config layer cannot import it), so validation passes them.
    A ``systemd:`` endpoint is left to the start: Twisted looks up the sockets systemd hands the daemon as
    it parses one, and ``--check`` (``ExecStartPre``) has none.
    """
    from twisted.internet import reactor

    given = [(c.location, c.label, c.options.server_endpoint) for c in config.connectors
             if isinstance(c.options, ServerTlsOptions)]
    if config.admin is not None and is_tls(config.admin.options):  # the admin listener reads it only then
        given.append((config.admin.location, "admin", config.admin.options.server_endpoint))
    issues = []
    for location, label, description in given:
        if not description or description.partition(":")[0] == "systemd":
            continue
        try:
            server_endpoint(reactor, description)
        except ValueError as e:
            issues.append(ConfigIssue(location, str(e), label, "server.endpoint"))
    return issues


def history_file_problems(config: Config) -> list[tuple[str, bool]]:
    """For ``--check``: each sink's history file that is not a readable one (the file is only read),
    with what ``history.on.corrupt`` would do at start, and whether the daemon would refuse to start."""
    problems = []
    for connector in config.sinks:
        path = connector.type == "sse-server" and connector.options.history_path
        if not path:
            continue
        problem = check_file(path)
        if problem is None:
            continue
        if connector.options.history_on_corrupt == "move-aside":
            problems.append((f"warning: {connector.label}: history file {problem}; history.on.corrupt is move-aside: "
                             f"at start it would be renamed {path}.corrupt-<UTC time> and the sink would start with an empty history", False))
        else:
            problems.append((f"error: {connector.label}: history file {problem}; history.on.corrupt is refuse: the daemon "
                             "would not start (set history.on.corrupt: move-aside, or move the file away)", True))
    return problems


class StopOnSigterm(Service):
    """SIGTERM stops the reactor (and so drains the daemon) and twistd exits 0.

    Twisted's own SIGTERM handler makes twistd end by re-raising the signal
    after a clean shutdown; an operator (and systemd's ``SuccessExitStatus``
    defaults aside, many supervisors) reads that as a crash. The reactor
    installs its handlers when it starts running, so ours goes in after.
    A second SIGTERM, or a SIGINT, once shutdown began is logged and ignored:
    stopping a reactor that is stopping already raised (a critical traceback),
    and Twisted's SIGINT handler then made twistd end by that signal.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False
        self._interrupt: Any = None

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        if self.running:
            signal.signal(signal.SIGTERM, self._signalled)
            self._interrupt = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._interrupted)

    def _signalled(self, signum: int, frame: Any) -> None:
        if self._again("SIGTERM"):
            return
        self.log.info("received SIGTERM: draining subscribers and shutting down")
        self.reactor.callFromThread(self.reactor.stop)

    def _interrupted(self, signum: int, frame: Any) -> None:
        """SIGINT (Ctrl-C) stops as Twisted's handler does, once."""
        if self._again("SIGINT"):
            return
        if callable(self._interrupt):
            self._interrupt(signum, frame)
        else:
            self.reactor.callFromThread(self.reactor.stop)

    def _again(self, name: str) -> bool:
        if self.stopping:
            self.log.info("received {signal}: already shutting down; ignored", signal=name)
            return True
        self.stopping = True
        return False


def makeService(options: Options, reactor: Any = None) -> DaemonService:
    assert options.loaded is not None
    try:
        service = build_service(options.loaded, reactor, stats_interval=options["stats-interval"], exit_on_bind_error=True)
    # a corrupt history file and history.on.corrupt: refuse, or one that cannot be opened (a full disk); logging has not started yet
    except (HistoryRefused, HistoryUnavailable) as e:
        sys.stderr.write(f"{e}\n")
        raise SystemExit(1) from None
    # SIGHUP re-reads the same files and changes only what changed (reload.py)
    from sse_daemon.daemon.reload import ReloadOnSighup, Reloader

    ReloadOnSighup(Reloader(service, options["config"]), service.reactor).setServiceParent(service)
    StopOnSigterm(service.reactor).setServiceParent(service)
    return service
