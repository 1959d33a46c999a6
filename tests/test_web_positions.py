"""The live map's positions feed, without a server: where it starts and how a sample
becomes a position (gateway.api.positions)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.api.positions import LAT, LON, SPEED, Position, PositionFeed, _newest_id, position_of
from gateway.store import LoggedSample, MapState, VehicleSummary


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


class _Statuses:
    """A reader whose vehicles' status the test sets; it counts status reads."""

    def __init__(self) -> None:
        self.online: dict[str, bool] = {}
        self.last_seen: dict[str, int] = {}
        self.status_reads = 0
        self.asked: list[dict[str, int]] = []

    def samples_after(self, cursor: int, *, limit: int) -> list[LoggedSample]:
        return []

    def list_vehicles(
        self, *, limit: int, after: str | None = None, vins: dict[str, int] | None = None
    ) -> list[VehicleSummary]:
        self.status_reads += 1
        assert vins is not None  # only the vehicles the feed holds, at their periods
        self.asked.append(dict(vins))
        return [
            VehicleSummary(vin, self.online[vin], 0, self.last_seen[vin], None)
            for vin in sorted(vins)
            if vin in self.online
        ][:limit]

    def close(self) -> None:
        pass


def test_a_vehicle_that_goes_offline_is_sent_again_greyed() -> None:
    """Issue 14: a vehicle whose status turns offline (or that falls silent) is marked
    with a new generation, so every open map greys it without a reload; one status read
    per round, whatever the number of vehicles."""
    statuses = _Statuses()
    now = [100_000]
    for vin in ("A", "B", "C"):
        statuses.online[vin], statuses.last_seen[vin] = True, now[0]

    async def scenario() -> list[tuple[int, dict[str, bool | None]]]:
        feed = PositionFeed(
            lambda: statuses,  # type: ignore[arg-type, return-value]
            poll_s=0.05,
            presence_s=0.05,
            clock_ms=lambda: now[0],
            silent_after_ms=10_000,
        )
        feed.seed([Position(v, 1, lat=48.1, lon=11.5, online=True) for v in ("A", "B", "C")])
        await feed.start()
        feed.subscribe()
        seen: list[tuple[int, dict[str, bool | None]]] = []

        async def step() -> None:
            await asyncio.sleep(0.3)
            seen.append((feed.generation, {v: p.online for v, p in feed.latest.items()}))

        await step()  # nothing turned
        statuses.online["B"] = False  # its Last Will
        await step()
        now[0] += 20_000  # A and C fall silent, C is heard from again
        statuses.last_seen["C"] = now[0]
        await step()
        await feed.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == (0, {"A": True, "B": True, "C": True})
    assert seen[1][0] == 1
    assert seen[1][1] == {"A": True, "B": False, "C": True}
    assert seen[2][0] == 2
    assert seen[2][1] == {"A": False, "B": False, "C": True}
    assert all(asked == {"A": 1, "B": 1, "C": 1} for asked in statuses.asked)
    assert statuses.status_reads >= 3


def test_a_sample_does_not_turn_an_offline_vehicle_online() -> None:
    """Its status does (the feed's status read): a sample alone would flap the marker."""
    offline = Position("V", 1, lat=48.1, lon=11.5, ts=1000, online=False)
    moved = position_of(offline, {LAT: 48.2}, 2000, 1)
    assert moved is not None
    assert moved.online is False
    assert position_of(Position("V", 1), {LAT: 48.2}, 2000, 1).online is True  # type: ignore[union-attr]


class _Fleet:
    """A reader whose map_states answers two vehicles' rows, one of them silent."""

    def __init__(self) -> None:
        self.reads = 0

    def map_states(
        self, signals: tuple[str, ...], *, limit: int, vins: dict[str, int] | None = None
    ) -> list[MapState]:
        self.reads += 1
        rows = [
            MapState("A", 1, True, 9_000, {LAT: (48.1, 9_000), LON: (11.5, 9_000)}),
            MapState("S", 1, True, 1_000, {SPEED: (True, 1_000)}),  # silent; not a number
        ]
        return [r for r in rows if vins is None or vins.get(r.vin) == r.tenure][:limit]


def test_the_snapshot_is_one_read_and_lists_vehicles_that_never_reported() -> None:
    from gateway.api.routes.positions import _snapshot

    fleet = _Fleet()
    reader: Any = fleet
    got = _snapshot(reader, {"A": 1, "S": 1, "N": 3}, (10_000, 5_000))
    assert fleet.reads == 1
    assert [(p.vin, p.tenure, p.lat, p.lon, p.speed, p.online) for p in got] == [
        ("A", 1, 48.1, 11.5, None, True),
        ("S", 1, None, None, None, False),  # silent for longer than the limit
        ("N", 3, None, None, None, None),  # provisioned, never reported
    ]
