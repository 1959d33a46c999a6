"""``HEAD`` answered like ``GET`` without the body (RFC 9110 9.3.2).

FastAPI registers a ``GET`` route for ``GET`` only, so ``HEAD`` on every route answered
405: monitors and link checkers that probe with ``HEAD`` saw an error. :class:`HeadAsGet`
runs the ``GET`` route and sends its status and headers (``Content-Length`` included, as
``GET`` would) with an empty body. A live stream (Server-Sent Events) ends as soon as its
headers are out: the route is told the client has gone, so it gives back its stream slot.
"""

from __future__ import annotations

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGet"]

_GONE: Message = {"type": "http.disconnect"}


class HeadAsGet:
    """ASGI middleware: a ``HEAD`` request goes to the ``GET`` route; no body goes out."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        done = anyio.Event()

        async def headers_only(message: Message) -> None:
            if done.is_set() or message["type"] != "http.response.start":
                return  # the body: dropped (a stream is told the client left)
            await send(message)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            done.set()

        async def until_done() -> Message:
            if done.is_set():
                return _GONE
            received: Message = _GONE
            async with anyio.create_task_group() as group:

                async def server() -> None:
                    nonlocal received
                    received = await receive()
                    group.cancel_scope.cancel()

                async def finished() -> None:
                    await done.wait()
                    group.cancel_scope.cancel()

                group.start_soon(server)
                group.start_soon(finished)
            return received

        await self.app({**scope, "method": "GET"}, until_done, headers_only)
