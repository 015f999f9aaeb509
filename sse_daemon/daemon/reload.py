"""SIGHUP: re-read the configuration and change only what changed.

1. The files are loaded and validated as at start; an invalid configuration is
   rejected whole, its errors are logged and the running one goes on.
2. The plan from the running configuration (plan.py) says what is kept,
   restarted, removed and added, connector by connector, route by route and
   port by port, and what only a restart changes (the ``admin:`` and ``bus:``
   sections are logged and left, but for the admin's users and tokens files,
   read again at every reload; a change to a sink served by worker
   processes rejects the reload whole). A sink or an ingest whose only change
   is its users, tokens or JWT key is kept: its guard takes the fresh
   credentials, and the sink's streams they no longer let in are ended.
3. The daemon stages everything new off to the side with the builder it
   started with (build.py), and new ports are bound before anything running
   is touched: a port that cannot be bound rejects the reload whole too.
4. The daemon switches over in one reactor turn (``DaemonService.replace``):
   paths on kept ports are pointed at their new resources, old services stop,
   new services start. An old SSE sink closes its subscribers in stages over
   its ``drain.window``, as on shutdown, so they reconnect (to the new sink)
   spread out, not at once.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any, Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.load import load_files
from sse_daemon.config.model import Config
from sse_daemon.connectors.sink.durable import HistoryRefused
from sse_daemon.connectors.sink.historyfile import HistoryUnavailable
from sse_daemon.daemon.plan import Plan, connector_key, history_notes, keys, plan
from sse_daemon.policy.connections import Stopping

if TYPE_CHECKING:
    from sse_daemon.daemon.service import DaemonService

__all__ = ["Plan", "plan", "keys", "connector_key", "Reloader", "ReloadOnSighup"]

log = Logger()


class Reloader:
    """Applies a new configuration to a running DaemonService; one reload at a time."""

    def __init__(self, daemon: "DaemonService", paths: Iterable[str], load: Callable[[list[str]], Config] = load_files,
                 stopping: Stopping | None = None) -> None:
        self.daemon = daemon
        self.paths = list(paths)
        self.load = load
        #: the daemon's shutdown state (drain.py sets it): once set, a reload is ignored
        self.stopping = daemon.stopping if stopping is None else stopping
        self.counters = {"reloads": 0, "rejected": 0}
        self.ignored = 0  # SIGHUPs that came during shutdown
        self.keys = keys(daemon.config)  # what the running connectors were built from
        self._running: Deferred | None = None
        self._again = False

    def reload(self) -> Deferred:
        """Reload now, or right after the reload in progress; fires with True if applied.

        Not once shutdown has begun: a port bound now would serve while the
        daemon drains (and outlive the drain's ``stopListening``).
        """
        if self.stopping:
            self._ignored()
            return succeed(False)
        if self._running is not None:
            self._again = True
            return self._running

        def done(result: Any) -> Any:
            self._running = None
            if self._again:
                self._again = False
                return self.reload()
            return result

        def failed(failure: Failure) -> bool:
            log.failure("reloading the configuration failed", failure)
            return False

        d = self._running = Deferred.fromCoroutine(self._reload())
        d.addErrback(failed)
        d.addBoth(done)  # may run at once, when nothing had to wait
        return d

    def _built_from(self, changes: Plan, not_renewed: list[str]) -> None:
        """What the running connectors are built from now: the keys the plan compared (taken before anything
        read the files again, so a change meanwhile is seen by the next reload), but for a connector whose
        fresh credentials could not be read: it still runs on the old ones, and the next reload renews it."""
        self.keys = {**changes.keys, **{name: self.keys[name] for name in not_renewed if name in self.keys}}

    def _ignored(self) -> None:
        self.ignored += 1
        log.warn("reload ignored: the daemon is shutting down ({count} ignored)", count=self.ignored)

    async def _reload(self) -> bool:
        daemon = self.daemon
        log.info("reloading the configuration from {files}", files=", ".join(self.paths))
        try:
            new = self.load(self.paths)
        except ConfigError as e:
            self.counters["rejected"] += 1
            for issue in e.issues:
                log.error("reload rejected: {issue}", issue=str(issue))
            log.error("the new configuration has {count} error(s); the running configuration is unchanged", count=len(e.issues))
            return False
        changes = plan(daemon.config, new, old_keys=self.keys, old_ports=daemon.endpoints())
        for deferred in changes.deferred:
            log.warn(deferred)
        if not changes.changes:
            daemon.adopt_config(new)
            self._built_from(changes, daemon.renew_credentials(new, changes.renew))
            log.info("configuration reloaded: {summary}", summary=changes.summary() if changes.renew else "nothing changed")
            return True
        if changes.refusal is not None:
            self.counters["rejected"] += 1
            log.error("reload rejected: {reason}; the running configuration is unchanged", reason=changes.refusal)
            return False
        if self.stopping:  # shutdown began while the files were read
            self._ignored()
            return False
        try:
            await daemon.prepare(new, changes)  # new history files are opened and checked on a thread
            staged = None if self.stopping else daemon.stage(new, changes)
        # a sink's new history file is corrupt and history.on.corrupt is refuse, or cannot be opened (a full disk)
        except (HistoryRefused, HistoryUnavailable) as e:
            await daemon.discard()
            self.counters["rejected"] += 1
            log.error("reload rejected: {message}; the running configuration is unchanged", message=str(e))
            return False
        if staged is None:  # shutdown began while the files were opened
            await daemon.discard()
            self._ignored()
            return False
        error, released = staged.bind()
        if error is not None:
            await DeferredList([*released, daemon.discard(staged)], consumeErrors=True)
            self.counters["rejected"] += 1
            log.error("reload rejected: {message}; the running configuration is unchanged", message=str(error))
            return False
        old = daemon.config
        not_renewed = daemon.renew_credentials(new, changes.renew)  # now: not after the drain of what the reload restarts
        await daemon.replace(staged)
        self._built_from(changes, not_renewed)
        self.counters["reloads"] += 1
        for note in history_notes(old, new, changes):
            log.info("reload: {note}", note=note)
        log.info("configuration reloaded: {summary}", summary=changes.summary())
        return True


class ReloadOnSighup(Service):
    """Installs a SIGHUP handler that reloads the daemon (restores the previous handler on stop,
    unless the daemon is shutting down)."""

    name = "reload-on-sighup"

    def __init__(self, reloader: Reloader, reactor: Any) -> None:
        self.reloader = reloader
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def _signalled(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reloader.reload)

    def stopService(self) -> None:
        super().stopService()
        if self.reloader.stopping:  # the process is ending: a late SIGHUP is still logged and ignored,
            return  # not left to the default action (which would end twistd by that signal)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None
