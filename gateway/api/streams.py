"""A bound on the live streams (Server-Sent Events) one user holds open at once
(docs/decisions/0023-security-review-2.md).

A stream (``/v1/stream``, ``/v1/positions/stream``, ``/v1/commands/{id}/events``) holds a
connection, a task and its polling for as long as the client keeps it; without a bound one
account could open thousands. :meth:`StreamSlots.take` reserves one of the user's
``ApiSettings.max_streams_per_user`` slots before the stream starts (429
``too_many_streams`` when none is free) and :class:`SlotStreamingResponse` gives it back
when the response ends, however it ends (the stream finished, the client went away, an
error). The count is per API process: with several processes behind a balancer a user may
hold that many in each.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterable, Callable, Mapping

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.api.errors import ApiError
from gateway.core.policy import Principal

__all__ = ["SlotStreamingResponse", "StreamSlots", "stream_response"]

#: what a refused client is told to wait before trying again
_RETRY_AFTER_S = 5


class StreamSlots:
    """Open streams per user id (thread-safe: released from the event loop, counted from
    route handlers)."""

    def __init__(self, per_user: int | None) -> None:
        self.per_user = per_user
        self._open: dict[int, int] = {}
        self._lock = threading.Lock()

    def take(self, user_id: int) -> Callable[[], None]:
        """Reserve a slot for ``user_id``: the function that gives it back (once, however
        often it is called), or :class:`ApiError` 429 when the user has none free."""
        with self._lock:
            count = self._open.get(user_id, 0)
            if self.per_user is not None and count >= self.per_user:
                raise ApiError(
                    429,
                    "too_many_streams",
                    f"You have {count} live streams open, the most allowed at once "
                    f"({self.per_user}). Close one (each browser tab of the dashboard "
                    "holds two) and try again; the operator can raise the limit "
                    "(--max-streams-per-user, env TELEMATICS_MAX_STREAMS_PER_USER).",
                    headers={"Retry-After": str(_RETRY_AFTER_S)},
                )
            self._open[user_id] = count + 1
        given_back = threading.Event()

        def give_back() -> None:
            with self._lock:
                if given_back.is_set():
                    return
                given_back.set()
                left = self._open.get(user_id, 1) - 1
                if left > 0:
                    self._open[user_id] = left
                else:
                    self._open.pop(user_id, None)

        return give_back

    def open_streams(self, user_id: int) -> int:
        with self._lock:
            return self._open.get(user_id, 0)


class SlotStreamingResponse(StreamingResponse):
    """A streaming response that gives its stream slot back when it ends."""

    def __init__(
        self,
        content: AsyncIterable[bytes],
        *,
        release: Callable[[], None],
        media_type: str,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def stream_response(
    request: Request,
    principal: Principal,
    content: Callable[[], AsyncIterable[bytes]],
    headers: Mapping[str, str],
) -> SlotStreamingResponse:
    """The caller's stream of ``content()`` as Server-Sent Events, in one of their slots
    (429 ``too_many_streams`` when none is free). Call it last in the route: once it
    returns, only the response gives the slot back."""
    slots: StreamSlots = request.app.state.stream_slots
    release = slots.take(principal.user_id)
    try:
        body = content()
    except BaseException:
        release()
        raise
    return SlotStreamingResponse(
        body, release=release, media_type="text/event-stream", headers=headers
    )
