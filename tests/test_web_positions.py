"""The live map's positions feed, without a server: where it starts and how a sample
becomes a position (gateway.api.positions)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.api.positions import LAT, LON, SPEED, Position, PositionFeed, _newest_id, position_of
from gateway.store import LoggedSample


class _Log:
    """samples_after over a set of row ids (with gaps, as pruning leaves them)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = sorted(ids)
        self.reads = 0

    def samples_after(self, cursor: int, *, limit: int) -> list[LoggedSample]:
        self.reads += 1
        after = [i for i in self.ids if i > cursor][:limit]
        return [LoggedSample(i, "V", 1, i, i, i, {}) for i in after]


@pytest.mark.parametrize(
    "ids", [[], [1], [5], [1, 2, 3], [1023, 1024, 1025], list(range(300, 5000, 7)), [10**9]]
)
def test_the_feed_starts_at_the_newest_sample(ids: list[int]) -> None:
    log = _Log(ids)
    reader: Any = log
    assert _newest_id(reader) == (max(ids) if ids else 0)
    assert log.reads <= 2 * 31 + 2  # logarithmic, not a scan


def test_a_sample_moves_the_position_and_an_older_one_does_not() -> None:
    base = Position("V", 1)
    moved = position_of(base, {LAT: 48.1, LON: 11.5, SPEED: 30}, 1000, 1)
    assert moved is not None
    assert (moved.lat, moved.lon, moved.speed, moved.ts, moved.gen) == (48.1, 11.5, 30.0, 1000, 1)
    assert moved.online is True
    assert position_of(moved, {LAT: 48.2}, 999, 2) is None  # a late, older sample
    assert (
        position_of(moved, {"Vehicle.Cabin.Door.Row1.DriverSide.IsLocked": True}, 2000, 2) is None
    )
    # a value that is not a number (booleans included) moves nothing
    assert position_of(moved, {SPEED: True}, 2000, 2) is None


def test_the_feed_reads_only_while_a_map_watches() -> None:
    log = _Log([1, 2, 3])
    opened: list[int] = []

    def open_reader() -> Any:
        opened.append(1)
        return _Closing(log)

    async def scenario() -> tuple[int, int, int]:
        feed = PositionFeed(open_reader, poll_s=0.05)
        await feed.start()
        await asyncio.sleep(0.3)
        idle = log.reads
        feed.subscribe()
        await asyncio.sleep(0.3)
        watched = log.reads
        feed.unsubscribe()
        await asyncio.sleep(0.1)  # a read under way may finish
        after = log.reads
        await asyncio.sleep(0.3)
        await feed.stop()
        return idle, watched, log.reads - after

    idle, watched, later = asyncio.run(scenario())
    assert idle == 0
    assert watched > 3  # found the newest sample, then polled
    assert later == 0


class _Closing:
    def __init__(self, log: _Log) -> None:
        self.log = log

    def samples_after(self, cursor: int, *, limit: int) -> list[LoggedSample]:
        return self.log.samples_after(cursor, limit=limit)

    def close(self) -> None:
        pass
