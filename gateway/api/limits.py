"""Bounds on what a request may send and a response may return.

Every number a client sends is bounded in the schema (so the OpenAPI document shows the
bound and FastAPI refuses anything beyond it with 422): an integer that reaches SQLite or
PostgreSQL unbounded overflows there (``2**63`` cannot be bound to a SQLite INTEGER) and
used to end the request with a 500.

Request bodies are bounded before they are buffered: :class:`BodyLimit` is a pure ASGI
middleware that reads a body itself, counting bytes as they arrive, and answers ``413`` with
the usual JSON error as soon as the body is over its route's limit, whether the client
announced the length (``Content-Length``, refused before a byte is read) or streams it in
chunks. Without it a 300 MB body to the unauthenticated ``/v1/auth/register`` was buffered
whole (the API grew to 1.65 GB) and echoed back in the 422. A route's limit is
:data:`DEFAULT_MAX_BODY` unless it declares its own with :func:`body_limit`, which also
documents it in the OpenAPI document as ``x-max-body-bytes``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson
from starlette.routing import Match

from gateway.api.models import ErrorInfo, ErrorResponse

__all__ = [
    "DEFAULT_MAX_BODY",
    "BodyLimit",
    "api_routes",
    "body_limit",
    "document_body_limits",
]

#: request bodies of routes that declare no limit of their own; every body the API takes
#: (a login form, a user, a vehicle, a grant, a command) is well under 2 KiB
DEFAULT_MAX_BODY: Final = 16 * 1024
_OPENAPI_KEY: Final = "x-max-body-bytes"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def body_limit(max_bytes: int) -> dict[str, Any]:
    """``openapi_extra`` of a route whose bodies may be up to ``max_bytes``."""
    return {_OPENAPI_KEY: max_bytes}


def document_body_limits(routes: list[Any], default: int = DEFAULT_MAX_BODY) -> None:
    """Show each write route's body limit in the OpenAPI document (``x-max-body-bytes``):
    its own, or ``default``. Call before the routes are included in the app."""
    for route in routes:
        if set(getattr(route, "methods", ())) & {"POST", "PUT", "PATCH", "DELETE"}:
            route.openapi_extra = {**body_limit(default), **(route.openapi_extra or {})}


class BodyTooLarge(Exception):
    """Raised inside :class:`BodyLimit` when a body passes its route's limit."""


class BodyLimit:
    """Refuse request bodies over their route's limit with 413, before buffering them."""

    def __init__(self, app: ASGIApp, default: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.default = default

    def limit_for(self, scope: Scope) -> int:
        """The limit of the route ``scope`` goes to (the default if none matches)."""
        for route in api_routes(scope.get("app")):
            match, _ = route.matches(scope)
            if match is Match.FULL:
                extra = getattr(route, "openapi_extra", None) or {}
                return int(extra.get(_OPENAPI_KEY, self.default))
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit, declared)
            return
        try:
            messages = await _read_body(receive, limit)
        except BodyTooLarge:
            await _refuse(send, limit, None)
            return
        replay = iter(messages)

        async def replayed() -> Message:
            # the buffered body first, then whatever the server says next (a disconnect)
            for message in replay:
                return message
            return await receive()

        await self.app(scope, replayed, send)


def api_routes(app: Any) -> list[Any]:
    """The app's API routes, flat (``create_app`` keeps them in ``app.state.api_routes``:
    FastAPI's own ``app.routes`` nests included routers differently from one version to
    the next)."""
    state = getattr(app, "state", None)
    routes: list[Any] = getattr(state, "api_routes", None) or getattr(app, "routes", [])
    return routes


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_body(receive: Receive, limit: int) -> list[Message]:
    """The request's ``http.request`` messages, at most ``limit`` body bytes in all."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages  # the client went away; the app sees the disconnect
        size += len(message.get("body", b""))
        if size > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            return messages


async def _refuse(send: Send, limit: int, declared: int | None) -> None:
    sent = f"{declared} bytes" if declared is not None else "more"
    body = ErrorResponse(
        error=ErrorInfo(
            code="request_too_large",
            message=f"The request body is too large: this route takes at most {limit} bytes "
            f"and the request sent {sent}. GET /docs shows each route's limit "
            "(x-max-body-bytes).",
            details=[],
        )
    )
    payload = orjson.dumps(body.model_dump(mode="json"))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                # the rest of the body is never read, so the connection cannot be reused
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
