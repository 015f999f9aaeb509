"""A real redis-server for the Redis bus tests, on a free port, thrown away after.

Debian's ``redis-server`` (``.ci/install-test-tools``); where it cannot be had the
tests skip with the reason, and fail under ``CI`` (tests/system_tools.py's rule).
Persistence is off (``--save ""``, ``--appendonly no``): a restart starts empty
unless the test restarts it with ``keep=True`` data (see :meth:`RedisServer.restart`).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from .system_tools import require

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``url`` for the daemon's ``bus.url``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--dbfilename", "test.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + timeout
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > end:
                self.stop()
                pytest.fail(f"redis-server did not answer PING on port {self.port} within {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def restart(self, keep: bool = True) -> None:
        """Stop and start on the same port. With ``keep`` the data survives (SAVE first, as a
        persistent production Redis keeps acknowledged writes); without, it starts empty."""
        if keep and self.process is not None:
            subprocess.run(["/usr/bin/redis-cli", "-p", str(self.port), "SAVE"], check=True, capture_output=True, timeout=10)
        else:
            (self.directory / "test.rdb").unlink(missing_ok=True)
        self.stop()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path):
    """A running redis-server on a free port of 127.0.0.1; killed after the test."""
    require(REDIS_SERVER, "redis-server")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
