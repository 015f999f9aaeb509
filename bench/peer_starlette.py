"""The sse-starlette peer: an in-process broadcast under uvicorn, as its users write it.

GET /sub subscribes (an ``EventSourceResponse`` over a per-subscriber ``asyncio.Queue``);
POST /publish puts the request body, as one event's data, into every queue and answers
200. Unbounded queues, as in the library's examples: this peer does not bound a slow
subscriber. Served as uvicorn's users serve it for speed: uvloop and httptools (the
benchmark installs them; ``uvicorn[standard]`` brings both). Run:
``python bench/peer_starlette.py PORT`` (127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import sys

import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

subscribers: set[asyncio.Queue[str]] = set()


async def sub(request: Request) -> EventSourceResponse:
    queue: asyncio.Queue[str] = asyncio.Queue()
    subscribers.add(queue)

    async def stream():
        try:
            while True:
                yield {"data": await queue.get()}
        finally:
            subscribers.discard(queue)

    return EventSourceResponse(stream(), ping=3600)


async def publish(request: Request) -> JSONResponse:
    body = (await request.body()).decode()
    for queue in subscribers:
        queue.put_nowait(body)
    return JSONResponse({"accepted": 1})


app = Starlette(routes=[Route("/sub", sub), Route("/publish", publish, methods=["POST"])])

if __name__ == "__main__":
    port = int(sys.argv[1])
    print(f"peer_starlette listening on 127.0.0.1:{port}", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=4096,
                loop="uvloop", http="httptools")
