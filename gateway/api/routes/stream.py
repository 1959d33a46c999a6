"""The live stream (tag ``notifications``): ``GET /v1/stream``, Server-Sent Events of what
the caller may see, as it happens.

Each event is ``id: <event id>``, ``event: <type>`` (``command.updated``,
``command_job.created``, ``command_job.finished``, ``alert.raised``, ``alert.updated``,
``alert.ended``, ``alert.acknowledged``, ``alert.cleared``, ``trip.finished``,
``trip.updated``: :data:`gateway.core.notify.EVENT_TYPES`, decision 0017) and ``data:``
the event JSON (``{"id", "type", "at", "data"}``, the webhook body too). Ids grow along the
stream (not by one: events of others are skipped). A client that reconnects with
``Last-Event-ID`` gets every event after it that the log still keeps (24 h by default);
when it asked for more than that, the stream first sends ``event: reset`` and the client
should read the current state again. Without ``Last-Event-ID`` the stream starts now.

Scope (:func:`gateway.core.notify.visible_to`): administrators see everything; fleet
managers, viewers and owners their account's events; everyone the events they caused (a
driver's own commands). The caller's credential is checked again every 30 s: the stream
ends with it (expired, ended by a password change or a disabled user, a revoked API key).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from gateway.api.bounds import MAX_ID
from gateway.api.deps import Auth, Bus, Caller
from gateway.api.errors import documented
from gateway.api.security import AuthContext, CallerCredential, still_authenticated
from gateway.api.streams import stream_response
from gateway.core.notify import visible_to
from gateway.core.policy import Principal
from gateway.notify import EventBus
from gateway.statedb.events import EventRecord, event_body

__all__ = ["router"]

router = APIRouter(tags=["notifications"], responses=documented(422))

_KEEP_ALIVE_S = 15.0
_RECHECK_S = 30.0


def _sse(event: EventRecord) -> bytes:
    body = event_body(event.id, event.type, event.at, event.data)
    return f"id: {event.id}\nevent: {event.type}\ndata: {body}\n\n".encode()


def _reset(last: int, oldest: int | None) -> bytes:
    data = orjson.dumps({"reason": "replay_unavailable", "last_event_id": last, "oldest": oldest})
    return b"event: reset\ndata: " + data + b"\n\n"


async def _start(bus: EventBus, last_event_id: int | None) -> tuple[int, bytes | None]:
    """Where the stream begins, and the ``reset`` to send first if it cannot replay."""
    if last_event_id is None:
        return bus.last_id, None
    if last_event_id > bus.last_id:
        # another process may have shown it before this one's poll: ask the log itself
        newest = await asyncio.to_thread(bus.events.last_id)
        if last_event_id <= newest:
            return last_event_id, None
        return bus.last_id, _reset(last_event_id, await bus.first_id())  # not of this log
    oldest = await bus.first_id()
    if last_event_id < bus.last_id and (oldest is None or oldest > last_event_id + 1):
        return max(last_event_id, (oldest or 1) - 1), _reset(last_event_id, oldest)
    return last_event_id, None


async def _events(
    bus: EventBus,
    context: AuthContext,
    caller: tuple[Principal, str],
    last_event_id: int | None,
) -> AsyncIterator[bytes]:
    principal, credential = caller
    cursor, reset = await _start(bus, last_event_id)
    yield b"retry: 2000\n\n"
    if reset is not None:
        yield reset
    recheck = time.monotonic() + _RECHECK_S
    while True:
        batch = await bus.since(cursor, limit=500)
        # what the log gave at once goes out as one chunk: a burst of alerts (hundreds in
        # one worker pass) is one send, not one per event (decision 0063)
        chunk = b"".join(_sse(event) for event in batch if visible_to(principal, event.scope))
        if batch:
            cursor = batch[-1].id
        if chunk:
            yield chunk
        if len(batch) == 500:
            continue
        if time.monotonic() >= recheck:
            recheck = time.monotonic() + _RECHECK_S
            if not await asyncio.to_thread(still_authenticated, context, credential, principal):
                return
        if not await bus.wait(cursor, _KEEP_ALIVE_S):
            yield b": keep-alive\n\n"


@router.get(
    "/v1/stream",
    summary="Live stream of your events (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`command.*`, `command_job.*`, `alert.*` and `trip.*` events "
            "with ids; `reset` when a resume cannot be replayed.",
        },
        **documented(429),
    },
)
async def stream(
    request: Request,
    principal: Caller,
    credential: CallerCredential,
    bus: Bus,
    context: Auth,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=MAX_ID,
            description="Resume after this event (EventSource sends it on reconnect).",
        ),
    ] = None,
) -> StreamingResponse:
    """Events of your scope as they happen (see the tag). Reconnect with `Last-Event-ID`
    to receive what you missed (kept 24 h). A user has at most 8 live streams open at
    once by default (429 `too_many_streams`)."""
    return stream_response(
        request,
        principal,
        lambda: _events(bus, context, (principal, credential), last_event_id),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
