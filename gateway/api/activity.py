"""When the API last began serving a request: what tells the fleet rules worker, which
shares this process and its GIL, whether a person is waiting (decision 0024).

:class:`RequestActivity` is a pure ASGI middleware that stamps the monotonic time at which
each HTTP request begins (a long-lived event stream counts once, when it opens), and
:meth:`RequestActivity.recent` answers whether one began within the last ``window_s``.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ActivityStamp", "RequestActivity"]


class RequestActivity:
    """The monotonic time the last HTTP request began (``-inf``: none yet)."""

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self.last = float("-inf")

    def stamp(self) -> None:
        self.last = time.monotonic()

    def recent(self) -> bool:
        """True when a request began within the last ``window_s`` seconds."""
        return time.monotonic() - self.last < self.window_s


class ActivityStamp:
    """Stamps :class:`RequestActivity` as each HTTP request begins; nothing else."""

    def __init__(self, app: ASGIApp, activity: RequestActivity) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.activity.stamp()
        await self.app(scope, receive, send)
