"""What the operations side (admin listener, figures, stats log) reads of the running daemon.

The daemon sits above ``ops`` in the layers: the admin and the figures may not
import it. They are given an object with these attributes instead, declared
here as protocols, and :class:`~sse_daemon.daemon.service.DaemonService`
declares that it provides them. Every member is read-only: only the daemon
changes its service tree and connector tables.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from twisted.internet.interfaces import IReactorTime

from sse_daemon.bus.connector import ConnectorBus
from sse_daemon.bus.interfaces import IDeliveringBus
from sse_daemon.config.model import Config
from sse_daemon.connectors.route import RouteService
from sse_daemon.edge.listener import ListenerService
from sse_daemon.edge.passwords import PasswordPool
from sse_daemon.policy.connections import DescriptorBudget, Stopping

#: a port as the daemon keys its listeners: (host, port as configured)
PortKey = tuple[str, int]


class DaemonFigures(Protocol):
    """The running pieces whose figures ``/metrics``, ``/status.json`` and the stats log show."""

    @property
    def config(self) -> Config:
        """The running configuration."""

    @property
    def bus(self) -> IDeliveringBus:
        """The bus linking connectors (an ISharedBus with ``bus: {type: redis}``)."""

    @property
    def sinks(self) -> Mapping[str, Any]:
        """Each sink's service (ISseSinkService or ILogSinkService), by connector name."""

    @property
    def sources(self) -> Mapping[str, Any]:
        """Each source (ISource, or the ILeasedService holding it on a shared bus), by connector name."""

    @property
    def source_buses(self) -> Mapping[str, ConnectorBus]:
        """Each source's view of the bus, which notes when it last published."""

    @property
    def listeners(self) -> Mapping[PortKey, ListenerService]:
        """The shared ports."""

    @property
    def routes(self) -> Sequence[RouteService]:
        """The running routes."""

    @property
    def started_at(self) -> float | None:
        """When it started (its clock's seconds), None before."""


class RunningDaemon(DaemonFigures, Protocol):
    """All the admin listener needs: the figures, plus what it builds its port and live views
    with and what its readiness answer depends on."""

    @property
    def reactor(self) -> Any:
        """The reactor its ports listen with."""

    @property
    def clock(self) -> IReactorTime:
        """Timers and timestamps (a task.Clock in tests)."""

    @property
    def passwords(self) -> PasswordPool:
        """The threads that check passwords off the reactor."""

    @property
    def descriptors(self) -> DescriptorBudget:
        """The process's file descriptors, shared by every port."""

    @property
    def stopping(self) -> Stopping:
        """Set once shutdown begins: not ready from then on."""

    @property
    def running(self) -> int:
        """Whether the daemon's service runs (IService.running)."""
