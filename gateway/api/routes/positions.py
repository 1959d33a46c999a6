"""The live map's feed (tag ``vehicles``): ``GET /v1/positions/stream``, Server-Sent Events of
the positions and charge of the vehicles you may read, as their samples are committed.

First ``event: snapshot`` with every visible vehicle's newest position (``data``: a JSON
list), then ``event: positions`` with the ones that changed (at most one event per
``poll_s`` of the process's feed, ``gateway.api.positions``). A reconnecting client
(EventSource does it by itself) gets a fresh snapshot. Scope: exactly the vehicles and
holding periods of ``GET /v1/vehicles`` (read again every 30 s; a disabled user's stream
ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Final

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from gateway.api.deps import Auth, Caller, settings_of
from gateway.api.errors import documented
from gateway.api.positions import MAP_SIGNALS, Position, PositionFeed, number_of
from gateway.api.security import AuthContext, CallerCredential, still_authenticated
from gateway.api.settings import ApiSettings
from gateway.api.streams import stream_response
from gateway.core.policy import Principal
from gateway.core.presence import presence
from gateway.store import TelemetryReader, open_store

__all__ = ["router"]

router = APIRouter(tags=["vehicles"], responses=documented(422, 429))

_KEEP_ALIVE_S: Final = 15.0
_RECHECK_S: Final = 30.0
#: the most vehicles in a snapshot
_SNAPSHOT_MAX: Final = 10_000


class _Gone(Exception):
    """The caller's user was disabled or removed, or changed role or account."""


def _visible(context: AuthContext, caller: tuple[Principal, str]) -> dict[str, int] | None:
    """vin -> tenure the caller reads; None: all (an admin); :class:`_Gone` once the
    caller's credential no longer holds (expired, ended, revoked)."""
    principal, credential = caller
    if not still_authenticated(context, credential, principal):
        raise _Gone
    return context.visible_vins(principal)


def _snapshot(
    reader: TelemetryReader, visible: Mapping[str, int] | None, silence: tuple[int, int]
) -> list[Position]:
    """Every visible vehicle's newest map signals from the store, in one read whatever
    the fleet's size (an administrator's: every VIN the store knows, at its newest holding
    period); a visible vehicle that never reported comes without a position (``online``
    null), so the map needs no other list. ``silence``: (now, the silence limit) in ms,
    for ``online`` as ``GET /v1/vehicles`` shows it."""
    now_ms, silent_ms = silence
    states = reader.map_states(
        tuple(MAP_SIGNALS), limit=_SNAPSHOT_MAX, vins=None if visible is None else dict(visible)
    )
    out: list[Position] = []
    for state in states:
        online, _ = presence(
            state.online, state.last_seen, now_ms=now_ms, silent_after_ms=silent_ms
        )
        found = {MAP_SIGNALS[k]: number_of(v) for k, (v, _) in state.latest.items()}
        out.append(
            Position(
                state.vin,
                state.tenure,
                ts=state.last_seen,
                online=online is True,
                **{k: v for k, v in found.items() if v is not None},  # type: ignore[arg-type]
            )
        )
    if visible is not None:  # those that never reported: listed, without a position
        missing = visible.keys() - {p.vin for p in out}
        out.extend(Position(vin, visible[vin]) for vin in sorted(missing))
    return out


def _frame(event: str, positions: list[Position]) -> bytes:
    data = orjson.dumps([p.json() for p in positions])
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def _changed(feed: PositionFeed, since: int, visible: Mapping[str, int] | None) -> list[Position]:
    return [
        p
        for p in feed.latest.values()
        if p.gen > since and (visible is None or visible.get(p.vin) == p.tenure)
    ]


async def _positions(
    request: Request, feed: PositionFeed, context: AuthContext, caller: tuple[Principal, str]
) -> AsyncIterator[bytes]:
    settings = settings_of(request)
    try:
        visible = await asyncio.to_thread(_visible, context, caller)
    except _Gone:
        return
    feed.subscribe()
    try:
        async for chunk in _feed(feed, context, caller, visible, settings):
            yield chunk
    finally:
        feed.unsubscribe()


async def _feed(
    feed: PositionFeed,
    context: AuthContext,
    caller: tuple[Principal, str],
    visible: dict[str, int] | None,
    settings: ApiSettings,
) -> AsyncIterator[bytes]:
    seen = feed.generation
    silence = (settings.clock_ms(), settings.silent_after_ms)

    def snapshot() -> list[Position]:
        reader = open_store(settings.store, readonly=True)
        try:
            return _snapshot(reader, visible, silence)
        finally:
            reader.close()

    first = await asyncio.to_thread(snapshot)
    feed.seed(first)  # their status is watched from now on
    yield b"retry: 2000\n\n" + _frame("snapshot", first)
    recheck = time.monotonic() + _RECHECK_S
    while True:
        if await feed.wait(seen, _KEEP_ALIVE_S):
            generation = feed.generation
            changed = _changed(feed, seen, visible)
            seen = generation
            if changed:
                yield _frame("positions", changed)
        else:
            yield b": keep-alive\n\n"
        if time.monotonic() >= recheck:
            recheck = time.monotonic() + _RECHECK_S
            try:
                visible = await asyncio.to_thread(_visible, context, caller)
            except _Gone:
                return


@router.get(
    "/v1/positions/stream",
    summary="Live positions of your vehicles (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`snapshot` then `positions` events, each a JSON list of "
            "`{vin, lat, lon, speed, soc, fuel, ts, online}`.",
        }
    },
)
async def positions_stream(
    request: Request, principal: Caller, credential: CallerCredential, context: Auth
) -> StreamingResponse:
    """The positions of the vehicles you may read, live (see the tag's module). A user has
    at most 8 live streams open at once by default (429 `too_many_streams`)."""
    feed: PositionFeed = request.app.state.positions
    return stream_response(
        request,
        principal,
        lambda: _positions(request, feed, context, (principal, credential)),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
