"""CORS for sinks and ingests (pure): which origins may read or post, and the headers that say so.

With ``cors.origins`` empty nothing here applies (the ``headers`` option can
still send fixed headers). With an allow-list, a request from a listed origin
gets ``Access-Control-Allow-Origin`` naming it (``*`` when the list is ``*``
and credentials are off), and a request whose ``Origin`` is not listed is
refused with 403 rather than served: a stream or a simple cross-site POST
would otherwise run, and only its answer would be hidden from the page.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CorsPolicy"]

#: request headers a preflight may ask for; anything else is not granted
ALLOWED_REQUEST_HEADERS = ("accept", "authorization", "cache-control", "content-type", "last-event-id", "x-requested-with")
#: response headers a page's script may read
EXPOSED_HEADERS = "SSE-Replay-From, Retry-After"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: tuple[str, ...] = ()
    credentials: bool = False
    max_age: int = 600
    methods: tuple[str, ...] = ("GET",)

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    def allows(self, origin: str) -> bool:
        return "*" in self.origins or origin.rstrip("/") in self.origins

    def headers(self, origin: str) -> list[tuple[str, str]]:
        """Headers for an actual request from an allowed ``origin``."""
        wildcard = "*" in self.origins and not self.credentials
        headers = [("Access-Control-Allow-Origin", "*" if wildcard else origin), ("Access-Control-Expose-Headers", EXPOSED_HEADERS)]
        if not wildcard:
            headers.append(("Vary", "Origin"))
        if self.credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    def preflight(self, origin: str, method: str, requested: str) -> list[tuple[str, str]] | None:
        """Headers granting a preflight, or None when its method or a header it asks for is not allowed."""
        if method not in self.methods:
            return None
        asked = [h.strip().lower() for h in requested.split(",") if h.strip()]
        if any(h not in ALLOWED_REQUEST_HEADERS for h in asked):
            return None
        headers = self.headers(origin) + [("Access-Control-Allow-Methods", ", ".join(self.methods)),
                                          ("Access-Control-Max-Age", str(self.max_age))]
        if asked:
            headers.append(("Access-Control-Allow-Headers", ", ".join(asked)))
        return headers
