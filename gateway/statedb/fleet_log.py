"""What the fleet rules worker produces and remembers: alerts, trips, each vehicle's rule
and trip state, and the partition leases with their cursors (issue 13, decision 0014).

:meth:`FleetLog.commit_partition` stores one partition's step in one transaction: the alert
changes, the trips (closed ones added, a recomputed window replaced), the vehicles' new
states and the partition's cursor, and only if the caller still holds the partition's lease
and the cursor is where it read from. A crash before the commit replays the step from the
old cursor; a step of a worker whose lease was taken over is refused. So every change takes
effect exactly once, whichever process runs the partition.

Alerts and trips name the driver assigned to the vehicle at their start (an assignment
covers ``start_at <= t < end_at``, open-ended when ``end_at`` is NULL; the newest start wins
when two overlap).

Reading for the API: :meth:`alerts` and :meth:`trips` are keyset pages (newest first by
(start, id)) with filters; :meth:`acknowledge` and :meth:`clear` are a person's actions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from sqlalchemy import (
    BigInteger,
    Float,
    String,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from gateway.statedb.database import StateDatabase
from gateway.statedb.events import RETURNING_CHUNK, NewEvent, insert_numbered, publish_many
from gateway.statedb.models import (
    DriverAssignmentRow,
    FleetAlertDayRow,
    FleetAlertRow,
    FleetPartitionRow,
    FleetPassRow,
    FleetTripDayRow,
    FleetTripRow,
    FleetVehicleRow,
    FleetVinStateRow,
    FleetWorkerRow,
    VehicleTenureRow,
)

__all__ = [
    "AlertFilter",
    "AlertRecord",
    "AlertWrite",
    "FleetLog",
    "LeaseLost",
    "PartitionStep",
    "PassNote",
    "StateWrite",
    "TripFilter",
    "TripRecord",
    "TripWrite",
    "VinStep",
]


#: a UTC day in epoch milliseconds
DAY_MS = 86_400_000
#: a vehicle state row with the holding period it belongs to
_STATE_OF_TENURE = and_(
    VehicleTenureRow.vin == FleetVinStateRow.vin,
    VehicleTenureRow.number == FleetVinStateRow.tenure,
)


class LeaseLost(Exception):
    """The partition is no longer this worker's, or its cursor moved: the step is dropped."""


@dataclass(frozen=True, slots=True)
class AlertWrite:
    """One alert change as the worker hands it over (``action``: opened | updated |
    closed)."""

    action: str
    kind: str
    key: str
    severity: str
    start_at: int
    end_at: int | None
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TripWrite:
    start_at: int
    end_at: int
    start_place: tuple[float, float] | None
    end_place: tuple[float, float] | None
    distance_m: float
    max_speed_kmh: float | None
    avg_speed_kmh: float
    energy_used_pct: float | None
    fuel_used_pct: float | None
    ended_by: str
    prior_ignition: bool | None
    prior_moving: bool | None


@dataclass(slots=True)
class VinStep:
    """One vehicle's part of a partition step."""

    vin: str
    tenure: int
    account_id: int
    rule_state: dict[str, Any]
    trip_state: dict[str, Any]
    alerts: list[AlertWrite] = field(default_factory=list)
    trips: list[TripWrite] = field(default_factory=list)
    #: replace the stored trips starting at or after this time (a recompute's window;
    #: ``-1``: all of them) by ``trips``
    replace_from: int | None = None


@dataclass(frozen=True, slots=True)
class StateWrite:
    """A vehicle's rule and trip state as JSON, written when the worker writes its states
    (decision 0050)."""

    vin: str
    tenure: int
    rule_state: dict[str, Any]
    trip_state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PassNote:
    """What a replay needs of a pass whose states were not written (decision 0050): the
    cursor it moved the partition to, the time of its clock tick (None: no tick), and the
    vehicles whose rows it skipped (not provisioned at the time)."""

    cursor: tuple[int, int]
    tick_at: int | None
    skipped: Sequence[tuple[str, int]] = ()


@dataclass(frozen=True, slots=True)
class PartitionStep:
    """One partition's part of a worker's pass: its cursor as read, its new cursor, and
    its vehicles' steps.

    The vehicles' states (decision 0050): with ``behind`` set none are written and the pass
    is noted (``fleet_passes``) for a replay; otherwise ``states`` are written (None: the
    steps' own ``rule_state`` and ``trip_state``, written through) and the partition's
    stored states are then as of ``cursor`` (its notes deleted)."""

    partition: int
    read_from: tuple[int, int]
    cursor: tuple[int, int]
    steps: Sequence[VinStep]
    states: Sequence[StateWrite] | None = None
    behind: PassNote | None = None


@dataclass(frozen=True, slots=True)
class AlertRecord:
    id: int
    account_id: int
    vin: str
    tenure: int
    kind: str
    key: str
    severity: str
    start_at: int
    end_at: int | None
    detail: Mapping[str, Any]
    driver_id: int | None
    acknowledged_by: int | None
    acknowledged_at: int | None
    cleared_by: int | None
    cleared_at: int | None


@dataclass(frozen=True, slots=True)
class TripRecord:
    id: int
    account_id: int
    vin: str
    tenure: int
    start_at: int
    end_at: int
    start_place: tuple[float, float] | None
    end_place: tuple[float, float] | None
    distance_m: float
    duration_ms: int
    max_speed_kmh: float | None
    avg_speed_kmh: float
    energy_used_pct: float | None
    fuel_used_pct: float | None
    ended_by: str
    driver_id: int | None
    prior_ignition: bool | None
    prior_moving: bool | None


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """What :meth:`FleetLog.alerts` returns: every field set narrows the list.
    ``vehicles``: only these (vin, tenure) pairs; ``open``: True open and not cleared
    only, False ended or cleared only; ``acknowledged``: True acknowledged only, False not
    yet acknowledged only."""

    account_id: int | None = None
    vehicles: Sequence[tuple[str, int]] | None = None
    fleet_id: int | None = None
    kind: str | None = None
    open: bool | None = None
    severity: str | None = None
    acknowledged: bool | None = None
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True, slots=True)
class TripFilter:
    account_id: int | None = None
    vehicles: Sequence[tuple[str, int]] | None = None
    fleet_id: int | None = None
    driver_id: int | None = None
    start: int | None = None
    end: int | None = None


def _alert(r: FleetAlertRow) -> AlertRecord:
    return AlertRecord(
        r.id,
        r.account_id,
        r.vin,
        r.tenure,
        r.kind,
        r.key,
        r.severity,
        r.start_at,
        r.end_at,
        r.detail,
        r.driver_id,
        r.acknowledged_by,
        r.acknowledged_at,
        r.cleared_by,
        r.cleared_at,
    )


def _place(lon: float | None, lat: float | None) -> tuple[float, float] | None:
    return None if lon is None or lat is None else (lon, lat)


def _trip(r: FleetTripRow) -> TripRecord:
    return TripRecord(
        r.id,
        r.account_id,
        r.vin,
        r.tenure,
        r.start_at,
        r.end_at,
        _place(r.start_lon, r.start_lat),
        _place(r.end_lon, r.end_lat),
        r.distance_m,
        r.duration_ms,
        r.max_speed_kmh,
        r.avg_speed_kmh,
        r.energy_used_pct,
        r.fuel_used_pct,
        r.ended_by,
        r.driver_id,
        r.prior_ignition,
        r.prior_moving,
    )


_ALERT_EVENT_COLUMNS: Final = (
    FleetAlertRow.id,
    FleetAlertRow.account_id,
    FleetAlertRow.vin,
    FleetAlertRow.kind,
    FleetAlertRow.key,
    FleetAlertRow.severity,
    FleetAlertRow.start_at,
    FleetAlertRow.end_at,
    FleetAlertRow.detail,
    FleetAlertRow.driver_id,
)


def alert_event(
    type: str, alert: Mapping[str, Any], *, at: int, actor_user_id: int | None = None
) -> NewEvent:
    """An ``alert.*`` event (decision 0017), scoped to the account that held the vehicle
    when the alert was raised (the alert's own); published by the caller, in the
    transaction that stores the change."""
    data = {
        "alert_id": alert["id"],
        "vin": alert["vin"],
        "kind": alert["kind"],
        "key": alert["key"],
        "severity": alert["severity"],
        "start_at": alert["start_at"],
        "end_at": alert["end_at"],
        "detail": dict(alert["detail"]),
        "driver_id": alert["driver_id"],
    }
    if actor_user_id is not None:
        data["by"] = actor_user_id
    return NewEvent(type, at, data, alert["account_id"], actor_user_id)


def _alert_mapping(row: FleetAlertRow) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in _ALERT_EVENT_COLUMNS}


def _overlapping(
    replaced: list[tuple[int, int, int, float]], row: Mapping[str, Any]
) -> tuple[int, int, int, float] | None:
    """The first replaced trip (id, start, end, distance) that shares time with ``row``;
    taken off the list (a replaced trip is followed by one new trip at most)."""
    for i, (_, start, end, _) in enumerate(replaced):
        if start <= row["end_at"] and row["start_at"] <= end:
            return replaced.pop(i)
    return None


def _trip_event(
    trip_id: int,
    row: Mapping[str, Any],
    before: tuple[int, int, int, float] | None,
    *,
    at: int,
) -> NewEvent | None:
    """``trip.finished`` for a new trip; after a recompute (late samples), ``trip.updated``
    for a trip that shares time with a replaced one but changed (``replaces``: the old
    id), nothing for one that came out the same. A replaced trip that a recompute joined
    into its neighbour gets no event of its own: the neighbour's ``trip.updated`` covers
    its time."""
    if before is not None and before[1:] == (row["start_at"], row["end_at"], row["distance_m"]):
        return None
    data = {
        "trip_id": trip_id,
        **{k: row[k] for k in _TRIP_EVENT_FIELDS},
    }
    if before is not None:
        data["replaces"] = before[0]
    kind = "trip.finished" if before is None else "trip.updated"
    return NewEvent(kind, at, data, row["account_id"])


_TRIP_EVENT_FIELDS: Final = (
    "vin", "start_at", "end_at", "start_lon", "start_lat", "end_lon", "end_lat", "distance_m",
    "duration_ms", "max_speed_kmh", "avg_speed_kmh", "energy_used_pct", "fuel_used_pct",
    "ended_by", "driver_id",
)  # fmt: skip


class _Assignments:
    """Vehicles' driver assignments, read once per step for all its vehicles: who drove
    a vehicle at a given time (an assignment covers ``start_at <= t < end_at``; the newest
    start wins an overlap)."""

    def __init__(self, session: Session, vins: Iterable[str]) -> None:
        a = DriverAssignmentRow
        self._ranges: dict[str, list[tuple[int, int, int | None]]] = {}
        wanted = sorted(set(vins))
        for chunk in range(0, len(wanted), 500):
            rows = session.execute(
                select(a.vin, a.driver_id, a.start_at, a.end_at)
                .where(a.vin.in_(wanted[chunk : chunk + 500]))
                .order_by(a.start_at.desc(), a.id.desc())
            )
            for vin, d, s, e in rows:
                self._ranges.setdefault(vin, []).append((d, s, e))

    def at(self, vin: str, t: int) -> int | None:
        for driver, start, end in self._ranges.get(vin, ()):
            if start <= t and (end is None or t < end):
                return int(driver)
        return None


def _update_alerts(
    session: Session,
    changed: list[tuple[str, int, str, dict[str, Any]]],
    now: int,
    events: list[NewEvent],
    days: _AlertDays,
) -> None:
    """The changes of alerts stored earlier: their open rows read in a few queries, then
    one bulk UPDATE by id (one UPDATE ... RETURNING per change cost more than the rules
    that made them, decision 0024), an ``alert.updated`` or ``alert.ended`` event each,
    and the idle time an ended ``idling`` alert adds to its day in ``days``."""
    if not changed:
        return
    a = FleetAlertRow
    keys = list({(vin, tenure, key) for vin, tenure, key, _ in changed})
    open_rows: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for chunk in range(0, len(keys), 300):
        rows = session.execute(
            select(*_ALERT_EVENT_COLUMNS, a.tenure).where(
                tuple_(a.vin, a.tenure, a.key).in_(keys[chunk : chunk + 300]),
                a.end_at.is_(None),
            )
        )
        for row in rows.mappings():
            alert = dict(row)
            tenure = alert.pop("tenure")
            open_rows.setdefault((alert["vin"], tenure, alert["key"]), []).append(alert)
    updates = []
    for vin, tenure, key, values in changed:
        for alert in open_rows.get((vin, tenure, key), []):
            updates.append({"id": alert["id"], **values, "updated_at": now})
            before = _idle_ms(alert)
            alert.update(values)
            days.add(alert, tenure, 0, _idle_ms(alert) - before)
            kind = "alert.updated" if alert["end_at"] is None else "alert.ended"
            events.append(alert_event(kind, alert, at=now))
    if updates:
        session.execute(update(a), updates)


def _idle_ms(alert: Mapping[Any, Any]) -> int:
    """What an alert adds to its day's idle time: its duration if it is an ended
    ``idling`` alert (as :meth:`FleetLog.report_days` sums it from the alerts)."""
    if alert["kind"] == "idling" and alert["end_at"] is not None:
        return int(alert["end_at"]) - int(alert["start_at"])
    return 0


class _AlertDays:
    """What a transaction adds to the daily rollup of alerts (``fleet_alert_days``): per
    (account, vin, tenure, UTC day of the start, driver) the number of new alerts and the
    idle time added. Counts and milliseconds are integers, so adding them to the stored
    rows is exact: the rollup stays the sum of its alerts, whatever order alerts are
    stored, ended or arrive late in."""

    def __init__(self) -> None:
        self.deltas: dict[tuple[int, str, int, int, int | None], list[int]] = {}

    def add(self, alert: Mapping[Any, Any], tenure: int, alerts: int, idle_ms: int) -> None:
        if not alerts and not idle_ms:
            return
        key = (int(alert["account_id"]), str(alert["vin"]), tenure,
               int(alert["start_at"]) // DAY_MS, alert["driver_id"])  # fmt: skip
        delta = self.deltas.setdefault(key, [0, 0])
        delta[0] += alerts
        delta[1] += idle_ms

    def store(self, session: Session) -> None:
        """Add the deltas to the stored rows (one read, one bulk UPDATE, one INSERT). Only
        the worker holding a vehicle's partition writes its alerts, in the transaction
        that checks its lease, so nobody else changes these rows meanwhile."""
        if not self.deltas:
            return
        r = FleetAlertDayRow
        days = list({(vin, tenure, day) for _, vin, tenure, day, _ in self.deltas})
        stored: dict[tuple[int, str, int, int, int | None], int] = {}
        for chunk in range(0, len(days), 300):
            rows = session.execute(
                select(r.id, r.account_id, r.vin, r.tenure, r.day, r.driver_id).where(
                    tuple_(r.vin, r.tenure, r.day).in_(days[chunk : chunk + 300])
                )
            )
            stored.update({(a, v, t, d, driver): i for i, a, v, t, d, driver in rows})
        updates, inserts = [], []
        for key, (alerts, idle) in self.deltas.items():
            if key in stored:
                updates.append({"row_id": stored[key], "add_alerts": alerts, "add_idle": idle})
            else:
                account, vin, tenure, day, driver = key
                inserts.append({"account_id": account, "vin": vin, "tenure": tenure,
                                "day": day, "driver_id": driver, "alerts": alerts,
                                "idle_ms": idle})  # fmt: skip
        if updates:  # a Core executemany: the ORM's bulk UPDATE sets values, cannot add
            add = r.alerts + bindparam("add_alerts"), r.idle_ms + bindparam("add_idle")
            statement = update(r).where(r.id == bindparam("row_id"))
            session.connection().execute(statement.values(alerts=add[0], idle_ms=add[1]), updates)
        if inserts:
            session.execute(insert(r), inserts)


def _dumps(value: Mapping[str, Any]) -> str:
    """A state as JSON text (orjson: keys that are not strings written as strings, as
    ``json.dumps`` does)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _json_text(name: str, postgresql: bool) -> Any:
    """A bound parameter carrying JSON text into a JSON column (JSONB on PostgreSQL)."""
    param = bindparam(name, type_=String)
    return cast(param, JSONB) if postgresql else param


def _state_writes(parts: Sequence[PartitionStep]) -> list[StateWrite]:
    """The states the partitions' steps write: none for a pass noted behind."""
    out: list[StateWrite] = []
    for p in parts:
        if p.behind is not None:
            continue
        if p.states is not None:
            out.extend(p.states)
        else:
            out.extend(StateWrite(s.vin, s.tenure, s.rule_state, s.trip_state) for s in p.steps)
    return out


def _note_row(partition: int, note: PassNote) -> dict[str, Any]:
    return {
        "partition": partition,
        "sample_cursor": note.cursor[0],
        "event_cursor": note.cursor[1],
        "tick_at": note.tick_at,
        "skipped": [list(k) for k in note.skipped] or None,
    }


def _id_chunks(ids: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _chunks(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``rows`` in slices of :data:`RETURNING_CHUNK` for an INSERT ... RETURNING each."""
    for start in range(0, len(rows), RETURNING_CHUNK):
        yield rows[start : start + RETURNING_CHUNK]


class FleetLog:
    """Alerts, trips, per-vehicle state and partition leases in the state database."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    # --- leases and state (the worker) -------------------------------------------------

    def take_partitions(
        self, owner: str, count: int, *, now: int, ttl_ms: int
    ) -> dict[int, tuple[int, int]]:
        """Renew ``owner``'s leases and take its share of the ``count`` partitions; returns
        the partitions held, each with its (sample, event) cursor.

        ``owner`` announces itself (``fleet_workers``, alive as long as a lease); with W
        workers alive, each holds at most ceil(count / W) partitions: it gives back what it
        holds beyond that (the highest first) and takes free or expired ones up to it. So a
        worker that starts beside a running one gets about half within two renewals (the
        running one gives, then it takes), and a dead worker's partitions are taken over
        once its leases expire (decision 0029)."""
        with self._db.write(background=True) as session:
            self._ensure_partitions(session, count)
            share = self._announce(session, owner, count, until=now + ttl_ms, now=now)
            mine = sorted(
                session.scalars(
                    select(FleetPartitionRow.partition).where(
                        FleetPartitionRow.owner == owner, FleetPartitionRow.partition < count
                    )
                )
            )
            keep, surplus = mine[:share], mine[share:]
            if surplus:
                session.execute(
                    update(FleetPartitionRow)
                    .where(
                        FleetPartitionRow.owner == owner,
                        FleetPartitionRow.partition.in_(surplus),
                    )
                    .values(owner=None, lease_until=0)
                )
            free = list(
                session.scalars(
                    select(FleetPartitionRow.partition)
                    .where(
                        FleetPartitionRow.partition < count,
                        or_(
                            FleetPartitionRow.owner.is_(None),
                            FleetPartitionRow.lease_until < now,
                        ),
                        FleetPartitionRow.partition.not_in(mine),
                    )
                    .order_by(FleetPartitionRow.partition)
                    .limit(max(share - len(keep), 0))
                )
            )
            session.execute(
                update(FleetPartitionRow)
                .where(
                    FleetPartitionRow.partition.in_([*keep, *free]),
                    or_(
                        FleetPartitionRow.owner == owner,
                        FleetPartitionRow.owner.is_(None),
                        FleetPartitionRow.lease_until < now,
                    ),
                )
                .values(owner=owner, lease_until=now + ttl_ms)
            )
            rows = session.scalars(
                select(FleetPartitionRow).where(
                    FleetPartitionRow.owner == owner, FleetPartitionRow.partition < count
                )
            )
            return {r.partition: (r.sample_cursor, r.event_cursor) for r in rows}

    @staticmethod
    def _ensure_partitions(session: Session, count: int) -> None:
        known = set(session.scalars(select(FleetPartitionRow.partition)))
        for p in range(count):
            if p not in known:
                session.add(
                    FleetPartitionRow(
                        partition=p, owner=None, lease_until=0, sample_cursor=0, event_cursor=0
                    )
                )
        session.flush()

    @staticmethod
    def _announce(session: Session, owner: str, count: int, *, until: int, now: int) -> int:
        """Record ``owner`` alive until ``until``, forget the workers that are not; the
        share of the ``count`` partitions each of the living may hold."""
        session.execute(delete(FleetWorkerRow).where(FleetWorkerRow.alive_until < now))
        row = session.get(FleetWorkerRow, owner)
        if row is None:
            session.add(FleetWorkerRow(owner=owner, alive_until=until))
        else:
            row.alive_until = until
        session.flush()
        alive = session.scalar(select(func.count()).select_from(FleetWorkerRow)) or 1
        return -(-count // alive)

    def workers(self, *, now: int) -> list[str]:
        """The workers alive at ``now`` (announced by :meth:`take_partitions`)."""
        with self._db.read() as session:
            return list(
                session.scalars(
                    select(FleetWorkerRow.owner)
                    .where(FleetWorkerRow.alive_until >= now)
                    .order_by(FleetWorkerRow.owner)
                )
            )

    def release_partitions(self, owner: str) -> None:
        with self._db.write(background=True) as session:
            session.execute(
                update(FleetPartitionRow)
                .where(FleetPartitionRow.owner == owner)
                .values(owner=None, lease_until=0)
            )
            session.execute(delete(FleetWorkerRow).where(FleetWorkerRow.owner == owner))

    def vin_states(
        self, keys: Iterable[tuple[str, int]]
    ) -> dict[tuple[str, int], tuple[dict[str, Any], dict[str, Any]]]:
        keys = list(keys)
        if not keys:
            return {}
        with self._db.read() as session:
            rows = session.scalars(
                select(FleetVinStateRow).where(
                    tuple_(FleetVinStateRow.vin, FleetVinStateRow.tenure).in_(keys)
                )
            )
            return {(r.vin, r.tenure): (dict(r.rule_state), dict(r.trip_state)) for r in rows}

    def all_vin_keys(self) -> list[tuple[str, int, int]]:
        """Every vehicle with a state, with its account: what the worker ticks."""
        with self._db.read() as session:
            rows = session.execute(
                select(
                    FleetVinStateRow.vin, FleetVinStateRow.tenure, VehicleTenureRow.account_id
                ).join(VehicleTenureRow, _STATE_OF_TENURE)
            )
            return [(v, t, a) for v, t, a in rows]

    def account_places(self, account_id: int, *, limit: int = 10_000) -> list[tuple[float, float]]:
        """The last place (lon, lat) the rules saw of each vehicle ``account_id`` holds now
        (at most ``limit`` vehicles; those without a position are left out)."""
        with self._db.read() as session:
            states = session.scalars(
                select(FleetVinStateRow.rule_state["place"])
                .join(VehicleTenureRow, _STATE_OF_TENURE)
                .where(
                    VehicleTenureRow.account_id == account_id,
                    VehicleTenureRow.ended_at.is_(None),
                )
                .limit(limit)
            )
            places = list(states)  # only the place, not the whole state (its fences, ...)
        return [(float(p[0]), float(p[1])) for p in places if p]

    def accounts_of(self, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The account that held each (vin, tenure); unknown ones are left out."""
        keys = list(keys)
        if not keys:
            return {}
        with self._db.read() as session:
            rows = session.execute(
                select(
                    VehicleTenureRow.vin, VehicleTenureRow.number, VehicleTenureRow.account_id
                ).where(tuple_(VehicleTenureRow.vin, VehicleTenureRow.number).in_(keys))
            )
            return {(v, n): a for v, n, a in rows}

    def vin_trips(self, vin: str, tenure: int) -> list[TripRecord]:
        with self._db.read() as session:
            rows = session.scalars(
                select(FleetTripRow)
                .where(FleetTripRow.vin == vin, FleetTripRow.tenure == tenure)
                .order_by(FleetTripRow.start_at)
            )
            return [_trip(r) for r in rows]

    def commit_partition(
        self,
        partition: int,
        owner: str,
        *,
        read_from: tuple[int, int],
        cursor: tuple[int, int],
        steps: Sequence[VinStep],
        now: int,
    ) -> None:
        """One partition's step in one transaction; :class:`LeaseLost` (nothing stored)
        unless ``owner`` holds the lease and the cursor is still ``read_from``."""
        self.commit_partitions(owner, [PartitionStep(partition, read_from, cursor, steps)], now=now)

    def commit_partitions(self, owner: str, parts: Sequence[PartitionStep], *, now: int) -> None:
        """Several partitions' steps in one transaction (a worker's whole pass: one commit,
        not one per partition), with their ``alert.*`` and ``trip.*`` events;
        :class:`LeaseLost` and nothing stored unless ``owner`` holds every one's lease and
        each cursor is still where it read from."""
        if not parts:
            return
        with self._db.write(background=True) as session:
            rows = {
                r.partition: r
                for r in session.scalars(
                    select(FleetPartitionRow)
                    .where(FleetPartitionRow.partition.in_([p.partition for p in parts]))
                    .with_for_update()
                )
            }
            for p in parts:
                row = rows.get(p.partition)
                if (
                    row is None
                    or row.owner != owner
                    or row.lease_until < now
                    or (row.sample_cursor, row.event_cursor) != p.read_from
                ):
                    raise LeaseLost(p.partition)
            events: list[NewEvent] = []
            self._store_steps(session, [s for p in parts for s in p.steps], now, events)
            publish_many(session, events)
            self._store_states(session, _state_writes(parts), now)
            notes, flushed = [], []
            for p in parts:
                row = rows[p.partition]
                row.sample_cursor, row.event_cursor = p.cursor
                if p.behind is None:
                    row.states_sample_cursor, row.states_event_cursor = p.cursor
                    flushed.append(p.partition)
                else:
                    notes.append(_note_row(p.partition, p.behind))
            if flushed:
                session.execute(delete(FleetPassRow).where(FleetPassRow.partition.in_(flushed)))
            if notes:
                session.connection().execute(insert(FleetPassRow), notes)

    def replay_plan(
        self, partitions: Iterable[int]
    ) -> dict[int, tuple[tuple[int, int], list[PassNote]]]:
        """Per partition the cursor its stored states are as of and the passes noted since,
        in commit order (decision 0050)."""
        wanted = list(partitions)
        if not wanted:
            return {}
        with self._db.read() as session:
            r, n = FleetPartitionRow, FleetPassRow
            plan: dict[int, tuple[tuple[int, int], list[PassNote]]] = {
                p: ((s, e), [])
                for p, s, e in session.execute(
                    select(r.partition, r.states_sample_cursor, r.states_event_cursor).where(
                        r.partition.in_(wanted)
                    )
                )
            }
            notes = session.execute(
                select(n.partition, n.sample_cursor, n.event_cursor, n.tick_at, n.skipped)
                .where(n.partition.in_(wanted))
                .order_by(n.id)
            )
            for p, s, e, tick_at, skipped in notes:
                keys = [(str(v), int(t)) for v, t in skipped or []]
                plan[p][1].append(PassNote((s, e), tick_at, keys))
            return plan

    def _store_states(self, session: Session, states: Sequence[StateWrite], now: int) -> None:
        """Every vehicle's rule and trip state: one upsert, executed for all of them, the
        JSON serialized here by orjson (in C) rather than per row by the column type's
        ``json.dumps``; no read of which rows exist (the ORM's bulk UPDATE and that read
        were a fifth of the worker's CPU per sample, decision 0037)."""
        if not states:
            return
        v = FleetVinStateRow
        pg = self._db.backend == "postgresql"
        statement = (postgresql.insert if pg else sqlite.insert)(v).values(
            vin=bindparam("p_vin"),
            tenure=bindparam("p_tenure"),
            rule_state=_json_text("p_rule", pg),
            trip_state=_json_text("p_trip", pg),
            updated_at=bindparam("p_at"),
        )
        statement = statement.on_conflict_do_update(
            index_elements=[v.vin, v.tenure],
            set_={
                "rule_state": statement.excluded.rule_state,
                "trip_state": statement.excluded.trip_state,
                "updated_at": statement.excluded.updated_at,
            },
        )
        rows = [
            {
                "p_vin": step.vin,
                "p_tenure": step.tenure,
                "p_rule": _dumps(step.rule_state),
                "p_trip": _dumps(step.trip_state),
                "p_at": now,
            }
            for step in states
        ]
        session.connection().execute(statement, rows)

    def _store_steps(
        self, session: Session, steps: Sequence[VinStep], now: int, events: list[NewEvent]
    ) -> None:
        """Every vehicle's alerts and trips of a step in a few bulk statements (not a few
        per vehicle: a step of a busy partition holds hundreds of vehicles), the events of
        the changes, and the daily rollup of the days whose trips changed."""
        if not steps:
            return
        drivers = _Assignments(session, (s.vin for s in steps if s.alerts or s.trips))
        new_alerts: list[dict[str, Any]] = []
        closed_here: set[int] = set()  # id() of the new rows that also ended in the step
        changed: list[tuple[str, int, str, dict[str, Any]]] = []
        trips: list[dict[str, Any]] = []
        replaced: dict[tuple[str, int], list[tuple[int, int, int, float]]] = {}
        touched: dict[tuple[str, int], set[int]] = {}
        for step in steps:
            self._fold_alerts(step, drivers, now, new_alerts, changed, closed_here)
            days = {t.start_at // DAY_MS for t in step.trips}
            if step.replace_from is not None:
                t = FleetTripRow
                in_window = (t.vin == step.vin, t.tenure == step.tenure,
                             t.start_at >= step.replace_from)  # fmt: skip
                old = select(t.start_at, t.id, t.end_at, t.distance_m).where(*in_window)
                gone = [(i, start, end, dist) for start, i, end, dist in session.execute(old)]
                replaced[(step.vin, step.tenure)] = gone
                days.update(start // DAY_MS for _, start, _, _ in gone)
                session.execute(delete(t).where(*in_window))
            if days:
                touched[(step.vin, step.tenure)] = days
            trips.extend(self._trip_row(step, t, drivers) for t in step.trips)
        alert_days = _AlertDays()
        _update_alerts(session, changed, now, events, alert_days)
        # Core executions of the inserts (the ORM's bulk INSERT ... RETURNING machinery
        # cost more than the statements; nothing here needs ORM objects: decision 0037)
        connection = session.connection()
        sqlite_ids = connection.dialect.name == "sqlite"  # see insert_numbered
        if new_alerts:
            statement = insert(FleetAlertRow).returning(
                *_ALERT_EVENT_COLUMNS, sort_by_parameter_order=True
            )
            if sqlite_ids:  # what RETURNING would give: the ids and the values as given
                insert_numbered(connection, FleetAlertRow, new_alerts)
                stored = [{c.key: row[c.key] for c in _ALERT_EVENT_COLUMNS} for row in new_alerts]
            else:
                stored = [
                    dict(alert)
                    for chunk in _chunks(new_alerts)
                    for alert in connection.execute(statement, chunk).mappings().all()
                ]
            for alert, row in zip(stored, new_alerts, strict=True):
                alert_days.add(alert, row["tenure"], 1, _idle_ms(alert))
                events.append(alert_event("alert.raised", dict(alert), at=now))
                if id(row) in closed_here:
                    events.append(alert_event("alert.ended", dict(alert), at=now))
        if trips:
            statement = insert(FleetTripRow).returning(
                FleetTripRow.id, sort_by_parameter_order=True
            )
            if sqlite_ids:
                ids = insert_numbered(connection, FleetTripRow, trips)
            else:
                ids = [
                    i
                    for chunk in _chunks(trips)
                    for i in connection.scalars(statement, chunk).all()
                ]
            for trip_id, row in zip(ids, trips, strict=True):
                before = _overlapping(replaced.get((row["vin"], row["tenure"]), []), row)
                event = _trip_event(trip_id, row, before, at=now)
                if event is not None:
                    events.append(event)
        alert_days.store(session)
        for (vin, tenure), days in touched.items():
            _roll_up(session, vin, tenure, days)

    @staticmethod
    def _fold_alerts(
        step: VinStep,
        drivers: _Assignments,
        now: int,
        rows: list[dict[str, Any]],
        changes: list[tuple[str, int, str, dict[str, Any]]],
        closed_here: set[int],
    ) -> None:
        """The step's alert changes folded per key (an alert opened and closed within one
        step is one new row, noted in ``closed_here``): new rows to insert, and changes of
        alerts stored earlier ((vin, tenure, key, values))."""
        new: dict[str, dict[str, Any]] = {}
        instants: list[dict[str, Any]] = []
        changed: dict[str, dict[str, Any]] = {}
        for c in step.alerts:
            values = {"severity": c.severity, "end_at": c.end_at, "detail": dict(c.detail)}
            if c.action == "opened":
                row = {
                    "account_id": step.account_id,
                    "vin": step.vin,
                    "tenure": step.tenure,
                    "kind": c.kind,
                    "key": c.key,
                    "start_at": c.start_at,
                    "driver_id": drivers.at(step.vin, c.start_at),
                    "updated_at": now,
                    **values,
                }
                if c.end_at is not None:  # an instant: never updated
                    instants.append(row)
                else:
                    new[c.key] = row
            elif c.key in new:
                new[c.key].update(values)
                if c.end_at is not None:  # opened and ended within the step
                    closed_here.add(id(new[c.key]))
                    instants.append(new.pop(c.key))
            else:
                changed[c.key] = values
        rows.extend([*instants, *new.values()])
        changes.extend((step.vin, step.tenure, key, values) for key, values in changed.items())

    @staticmethod
    def _trip_row(step: VinStep, t: TripWrite, drivers: _Assignments) -> dict[str, Any]:
        start, end = t.start_place or (None, None), t.end_place or (None, None)
        return {
            "account_id": step.account_id,
            "vin": step.vin,
            "tenure": step.tenure,
            "start_at": t.start_at,
            "end_at": t.end_at,
            "start_lon": start[0],
            "start_lat": start[1],
            "end_lon": end[0],
            "end_lat": end[1],
            "distance_m": t.distance_m,
            "duration_ms": t.end_at - t.start_at,
            "max_speed_kmh": t.max_speed_kmh,
            "avg_speed_kmh": t.avg_speed_kmh,
            "energy_used_pct": t.energy_used_pct,
            "fuel_used_pct": t.fuel_used_pct,
            "ended_by": t.ended_by,
            "driver_id": drivers.at(step.vin, t.start_at),
            "prior_ignition": t.prior_ignition,
            "prior_moving": t.prior_moving,
        }

    # --- reading and a person's actions (the API) --------------------------------------

    def get_alert(self, alert_id: int) -> AlertRecord | None:
        with self._db.read() as session:
            row = session.get(FleetAlertRow, alert_id)
            return None if row is None else _alert(row)

    def alerts(
        self, f: AlertFilter, *, before: tuple[int, int] | None, limit: int
    ) -> list[AlertRecord]:
        """Newest first by (start, id); ``before``: the last (start, id) of the previous
        page."""
        a = FleetAlertRow
        query = select(a).order_by(a.start_at.desc(), a.id.desc()).limit(limit)
        query = query.where(*_scope(a, f.account_id, f.vehicles, f.fleet_id))
        if f.kind is not None:
            query = query.where(a.kind == f.kind)
        if f.open is True:
            query = query.where(a.end_at.is_(None), a.cleared_at.is_(None))
        elif f.open is False:
            query = query.where(or_(a.end_at.is_not(None), a.cleared_at.is_not(None)))
        if f.severity is not None:
            query = query.where(a.severity == f.severity)
        if f.acknowledged is True:
            query = query.where(a.acknowledged_at.is_not(None))
        elif f.acknowledged is False:
            query = query.where(a.acknowledged_at.is_(None))
        if f.start is not None:
            query = query.where(a.start_at >= f.start)
        if f.end is not None:
            query = query.where(a.start_at < f.end)
        if before is not None:
            query = query.where(tuple_(a.start_at, a.id) < before)
        with self._db.read() as session:
            return [_alert(r) for r in session.scalars(query)]

    def acknowledge(self, alert_id: int, *, user_id: int, now: int) -> AlertRecord | None:
        """Mark it seen by ``user_id`` (the first acknowledgement stays)."""
        with self._db.write(background=True) as session:
            row = session.get(FleetAlertRow, alert_id)
            if row is None:
                return None
            if row.acknowledged_at is None:
                row.acknowledged_by, row.acknowledged_at, row.updated_at = user_id, now, now
                ack = alert_event(
                    "alert.acknowledged", _alert_mapping(row), at=now, actor_user_id=user_id
                )
                publish_many(session, [ack])
            return _alert(row)

    def get_alerts(self, alert_ids: Sequence[int]) -> list[AlertRecord]:
        """The alerts of ``alert_ids`` that exist, in no particular order."""
        with self._db.read() as session:
            return [
                _alert(r)
                for chunk in _id_chunks(alert_ids)
                for r in session.scalars(select(FleetAlertRow).where(FleetAlertRow.id.in_(chunk)))
            ]

    def acknowledge_many(self, alert_ids: Sequence[int], *, user_id: int, now: int) -> list[int]:
        """:meth:`acknowledge` for each of ``alert_ids`` in one transaction (one
        ``alert.acknowledged`` event per alert newly acknowledged); the ids it
        acknowledged now, in the order of ``alert_ids``."""
        with self._db.write(background=True) as session:
            rows = {
                r.id: r
                for chunk in _id_chunks(alert_ids)
                for r in session.scalars(select(FleetAlertRow).where(FleetAlertRow.id.in_(chunk)))
            }
            events, done = [], []
            for alert_id in alert_ids:
                row = rows.get(alert_id)
                if row is not None and row.acknowledged_at is None:
                    row.acknowledged_by, row.acknowledged_at, row.updated_at = user_id, now, now
                    done.append(alert_id)
                    events.append(
                        alert_event(
                            "alert.acknowledged", _alert_mapping(row), at=now, actor_user_id=user_id
                        )
                    )
            publish_many(session, events)
            return done

    def clear(self, alert_id: int, *, user_id: int, now: int) -> AlertRecord | None:
        """A person closes the alert: it leaves the open list (the rule's condition may
        still last; the rules raise it again only after it has cleared by itself)."""
        with self._db.write(background=True) as session:
            row = session.get(FleetAlertRow, alert_id)
            if row is None:
                return None
            if row.cleared_at is None:
                row.cleared_by, row.cleared_at, row.updated_at = user_id, now, now
                cleared = alert_event("alert.cleared", _alert_mapping(row), at=now,
                                      actor_user_id=user_id)  # fmt: skip
                publish_many(session, [cleared])
            return _alert(row)

    def trips(
        self, f: TripFilter, *, before: tuple[int, int] | None, limit: int
    ) -> list[TripRecord]:
        """Newest first by (start, id)."""
        t = FleetTripRow
        query = select(t).order_by(t.start_at.desc(), t.id.desc()).limit(limit)
        query = query.where(*_scope(t, f.account_id, f.vehicles, f.fleet_id))
        if f.driver_id is not None:
            query = query.where(t.driver_id == f.driver_id)
        if f.start is not None:
            query = query.where(t.start_at >= f.start)
        if f.end is not None:
            query = query.where(t.start_at < f.end)
        if before is not None:
            query = query.where(tuple_(t.start_at, t.id) < before)
        with self._db.read() as session:
            return [_trip(r) for r in session.scalars(query)]

    def trip_days(self, f: TripFilter, *, by_driver: bool) -> list[tuple[Any, ...]]:
        """Per (vin or driver id, UTC day number) of the filter's trips: (key, day, trips,
        duration, distance, max speed, energy, fuel), summed by the database. Whole days
        come from the daily rollup (``fleet_trip_days``), the partial days at the range's
        edges from the trips themselves (integer division of epoch milliseconds is the
        UTC day on SQLite and PostgreSQL alike)."""
        if f.start is None or f.end is None:
            return self._trip_sums(f, by_driver, f.start, f.end)
        first, last = -(-f.start // DAY_MS), f.end // DAY_MS  # the whole days: [first, last)
        if first >= last:
            return self._trip_sums(f, by_driver, f.start, f.end)
        out = []
        if f.start < first * DAY_MS:
            out += self._trip_sums(f, by_driver, f.start, first * DAY_MS)
        out += self._rollup_sums(f, by_driver, first, last)
        if last * DAY_MS < f.end:
            out += self._trip_sums(f, by_driver, last * DAY_MS, f.end)
        return out

    def _trip_sums(
        self, f: TripFilter, by_driver: bool, start: int | None, end: int | None
    ) -> list[tuple[Any, ...]]:
        t = FleetTripRow
        who = t.driver_id if by_driver else t.vin
        day = t.start_at // DAY_MS
        query = (
            select(
                who,
                day,
                func.count(),
                func.sum(t.duration_ms),
                func.sum(t.distance_m),
                func.max(t.max_speed_kmh),
                func.sum(t.energy_used_pct),
                func.sum(t.fuel_used_pct),
            )
            .where(*_scope(t, f.account_id, f.vehicles, f.fleet_id))
            .group_by(who, day)
        )
        if by_driver:
            query = query.where(t.driver_id.is_not(None))
        if f.driver_id is not None:
            query = query.where(t.driver_id == f.driver_id)
        if start is not None:
            query = query.where(t.start_at >= start)
        if end is not None:
            query = query.where(t.start_at < end)
        with self._db.read() as session:
            return [tuple(r) for r in session.execute(query)]

    def _rollup_sums(
        self, f: TripFilter, by_driver: bool, first: int, last: int
    ) -> list[tuple[Any, ...]]:
        r = FleetTripDayRow
        who = r.driver_id if by_driver else r.vin
        query = (
            select(
                who,
                r.day,
                func.sum(r.trips),
                func.sum(r.duration_ms),
                func.sum(r.distance_m),
                func.max(r.max_speed_kmh),
                func.sum(r.energy_used_pct),
                func.sum(r.fuel_used_pct),
            )
            .where(*_scope(r, f.account_id, f.vehicles, f.fleet_id), r.day >= first, r.day < last)
            .group_by(who, r.day)
        )
        if by_driver:
            query = query.where(r.driver_id.is_not(None))
        if f.driver_id is not None:
            query = query.where(r.driver_id == f.driver_id)
        with self._db.read() as session:
            return [tuple(row) for row in session.execute(query)]

    def report_days(
        self, tf: TripFilter, af: AlertFilter, *, by_driver: bool
    ) -> list[tuple[Any, ...]]:
        """Per (vin or driver id, UTC day) of the filters' trips and alerts, in one query:
        (key, day, trips, driving ms, distance, max speed, energy, fuel, alerts, idle ms),
        ordered by key (as text, byte order) and day. Trips of whole days come from the
        daily rollup, of the partial days at the range's edges from the trips; alerts are
        counted by the day they started, idle time is the duration of the ended ``idling``
        alerts. The counts and milliseconds come as ints, the sums as floats (None: no
        value), the tuples as the database driver gives them (decision 0030)."""
        with self._db.read() as session:
            connection = session.connection()
            query = self._report_query(tf, af, by_driver, connection.dialect.name)
            return _driver_rows(connection, query)

    def _report_query(self, tf: TripFilter, af: AlertFilter, by_driver: bool, dialect: str) -> Any:
        parts = []
        for lo, hi, whole_days in _spans(tf.start, tf.end):
            if whole_days:
                parts.append(_rollup_part(tf, by_driver, lo, hi))
            else:
                parts.append(_trip_part(tf, by_driver, lo, hi))
        for lo, hi, whole_days in _spans(af.start, af.end):
            if whole_days:
                parts.append(_alert_rollup_part(af, by_driver, tf.driver_id, lo, hi))
            else:
                parts.append(_alert_part(af, by_driver, tf.driver_id, lo, hi))
        u = union_all(*parts).subquery()
        # the order a report's lines are in (key as text: driver 10 before driver 9), so a
        # CSV can be written as the rows come (gateway.core.fleet.reports.report_cells)
        # (selected and grouped by too: one sort serves the GROUP BY and the ORDER BY)
        key: Any = cast(u.c.who, String) if by_driver else u.c.who
        if dialect == "postgresql":
            key = key.collate("C")
        # the sums of integers cast: PostgreSQL's sum of a bigint is a numeric (a Decimal)
        return (
            select(
                key,
                u.c.day,
                cast(func.sum(u.c.trips), BigInteger),
                cast(func.sum(u.c.duration), BigInteger),
                func.sum(u.c.distance),
                func.max(u.c.top),
                func.sum(u.c.energy),
                func.sum(u.c.fuel),
                cast(func.sum(u.c.alerts), BigInteger),
                cast(func.sum(u.c.idle), BigInteger),
            )
            .group_by(key, u.c.day)
            .order_by(key, u.c.day)
        )

    def alert_days(
        self, f: AlertFilter, *, by_driver: bool
    ) -> list[tuple[str | int | None, int, int, int]]:
        """Per (vin or driver id, UTC day of the start) of the filter's alerts: (key, day,
        alerts, idle ms: the duration of the ended ``idling`` alerts), for reports."""
        a = FleetAlertRow
        who = a.driver_id if by_driver else a.vin
        day = a.start_at // DAY_MS
        idle = case(
            (and_(a.kind == "idling", a.end_at.is_not(None)), a.end_at - a.start_at), else_=0
        )
        query = (
            select(who, day, func.count(), func.sum(idle))
            .where(*_scope(a, f.account_id, f.vehicles, f.fleet_id))
            .group_by(who, day)
        )
        if f.start is not None:
            query = query.where(a.start_at >= f.start)
        if f.end is not None:
            query = query.where(a.start_at < f.end)
        with self._db.read() as session:
            return [(w, int(d), int(n), int(i or 0)) for w, d, n, i in session.execute(query)]

    def scope_vehicles(self, f: TripFilter, start: int, end: int) -> list[str]:
        """The VINs of the filter's scope held by its account at some time in [start, end)
        (a utilization report lists the unused ones too)."""
        if f.vehicles is not None:
            return sorted({vin for vin, _ in f.vehicles})
        v = VehicleTenureRow
        query = select(v.vin).where(
            v.started_at < end, or_(v.ended_at.is_(None), v.ended_at > start)
        )
        if f.account_id is not None:
            query = query.where(v.account_id == f.account_id)
        if f.fleet_id is not None:
            query = query.where(
                v.vin.in_(select(FleetVehicleRow.vin).where(FleetVehicleRow.fleet_id == f.fleet_id))
            )
        with self._db.read() as session:
            return sorted(set(session.scalars(query)))

    def fault_counts(self, f: AlertFilter) -> list[tuple[str, str, int]]:
        """(vin, code, fault-code alerts started in the filter's range) per vehicle and code."""
        a = FleetAlertRow
        query = (
            select(a.vin, a.key, func.count())
            .where(*_scope(a, f.account_id, f.vehicles, f.fleet_id), a.kind == "fault_code")
            .group_by(a.vin, a.key)
        )
        if f.start is not None:
            query = query.where(a.start_at >= f.start)
        if f.end is not None:
            query = query.where(a.start_at < f.end)
        with self._db.read() as session:
            return [(vin, key.partition(":")[2], int(n)) for vin, key, n in session.execute(query)]


def _driver_rows(connection: Connection, query: Any) -> list[tuple[Any, ...]]:
    """``query``'s rows as the DBAPI driver's own tuples: SQLAlchemy's result rows cost a
    tenth of a 30-day report's CPU (decision 0030). Only for queries whose columns need no
    SQLAlchemy type conversion (numbers and text) and whose parameters are plain numbers
    and strings; expanding parameters (``IN`` lists) are rendered one by one."""
    compiled = query.compile(dialect=connection.dialect,
                             compile_kwargs={"render_postcompile": True})  # fmt: skip
    params = compiled.construct_params()
    positions = compiled.positiontup
    args: Any = params if positions is None else tuple(params[p] for p in positions)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(compiled.string, args)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _zeros() -> list[Any]:
    """The trip columns of an alert's line in :meth:`FleetLog.report_days`."""
    return [
        literal(0, BigInteger).label("trips"),
        literal(0, BigInteger).label("duration"),
        literal(0.0, Float).label("distance"),
        cast(null(), Float).label("top"),
        cast(null(), Float).label("energy"),
        cast(null(), Float).label("fuel"),
    ]


def _trip_columns(
    table: type[FleetTripRow] | type[FleetTripDayRow], trips: Any, day: Any
) -> list[Any]:
    return [
        day.label("day"),
        cast(trips, BigInteger).label("trips"),
        cast(table.duration_ms, BigInteger).label("duration"),
        cast(table.distance_m, Float).label("distance"),
        cast(table.max_speed_kmh, Float).label("top"),
        cast(table.energy_used_pct, Float).label("energy"),
        cast(table.fuel_used_pct, Float).label("fuel"),
        literal(0, BigInteger).label("alerts"),
        literal(0, BigInteger).label("idle"),
    ]


def _spans(start: int | None, end: int | None) -> list[tuple[Any, Any, bool]]:
    """[start, end) cut into what a report reads from the rows themselves and what from a
    daily rollup: (start ms, end ms, False) for the partial days at the edges (or the whole
    range when it holds no whole UTC day or is open), (first day, last day, True) for the
    whole days between them."""
    if start is None or end is None:
        return [(start, end, False)]
    first, last = -(-start // DAY_MS), end // DAY_MS  # the whole days: [first, last)
    if first >= last:
        return [(start, end, False)]
    spans: list[tuple[Any, Any, bool]] = [(first, last, True)]
    if start < first * DAY_MS:
        spans.append((start, first * DAY_MS, False))
    if last * DAY_MS < end:
        spans.append((last * DAY_MS, end, False))
    return spans


def _alert_part(
    f: AlertFilter, by_driver: bool, driver_id: int | None, start: int | None, end: int | None
) -> Any:
    """The alerts started in [start, end), one line each, for :meth:`FleetLog.report_days`."""
    a = FleetAlertRow
    who = a.driver_id if by_driver else a.vin
    idle = case((and_(a.kind == "idling", a.end_at.is_not(None)), a.end_at - a.start_at), else_=0)
    query = select(
        who.label("who"),
        (a.start_at // DAY_MS).label("day"),
        *_zeros(),
        literal(1, BigInteger).label("alerts"),
        cast(idle, BigInteger).label("idle"),
    ).where(*_scope(a, f.account_id, f.vehicles, f.fleet_id))
    if by_driver:
        query = query.where(a.driver_id.is_not(None))
    if driver_id is not None:
        query = query.where(a.driver_id == driver_id)
    if start is not None:
        query = query.where(a.start_at >= start)
    if end is not None:
        query = query.where(a.start_at < end)
    return query


def _alert_rollup_part(
    f: AlertFilter, by_driver: bool, driver_id: int | None, first: int, last: int
) -> Any:
    """The alert rollup's lines of the whole days [first, last)."""
    r = FleetAlertDayRow
    who = r.driver_id if by_driver else r.vin
    query = select(
        who.label("who"),
        r.day.label("day"),
        *_zeros(),
        cast(r.alerts, BigInteger).label("alerts"),
        cast(r.idle_ms, BigInteger).label("idle"),
    ).where(*_scope(r, f.account_id, f.vehicles, f.fleet_id), r.day >= first, r.day < last)
    if by_driver:
        query = query.where(r.driver_id.is_not(None))
    if driver_id is not None:
        query = query.where(r.driver_id == driver_id)
    return query


def _trip_part(f: TripFilter, by_driver: bool, start: int | None, end: int | None) -> Any:
    """The trips of [start, end), one line each, for :meth:`FleetLog.report_days`."""
    t = FleetTripRow
    who = t.driver_id if by_driver else t.vin
    query = select(who.label("who"), *_trip_columns(t, literal(1), t.start_at // DAY_MS))
    query = query.where(*_scope(t, f.account_id, f.vehicles, f.fleet_id))
    if by_driver:
        query = query.where(t.driver_id.is_not(None))
    if f.driver_id is not None:
        query = query.where(t.driver_id == f.driver_id)
    if start is not None:
        query = query.where(t.start_at >= start)
    if end is not None:
        query = query.where(t.start_at < end)
    return query


def _rollup_part(f: TripFilter, by_driver: bool, first: int, last: int) -> Any:
    """The rollup's lines of the whole days [first, last)."""
    r = FleetTripDayRow
    who = r.driver_id if by_driver else r.vin
    query = select(who.label("who"), *_trip_columns(r, r.trips, r.day)).where(
        *_scope(r, f.account_id, f.vehicles, f.fleet_id), r.day >= first, r.day < last
    )
    if by_driver:
        query = query.where(r.driver_id.is_not(None))
    if f.driver_id is not None:
        query = query.where(r.driver_id == f.driver_id)
    return query


def _roll_up(session: Session, vin: str, tenure: int, days: set[int]) -> None:
    """Recompute the rollup rows of one vehicle's holding period on ``days`` from its
    trips (after trips were added or replaced there)."""
    t, r = FleetTripRow, FleetTripDayRow
    session.execute(delete(r).where(r.vin == vin, r.tenure == tenure, r.day.in_(days)))
    day = t.start_at // DAY_MS
    summed = session.execute(
        select(
            t.account_id,
            day,
            t.driver_id,
            func.count(),
            func.sum(t.duration_ms),
            func.sum(t.distance_m),
            func.max(t.max_speed_kmh),
            func.sum(t.energy_used_pct),
            func.sum(t.fuel_used_pct),
        )
        .where(
            t.vin == vin,
            t.tenure == tenure,
            t.start_at >= min(days) * DAY_MS,
            t.start_at < (max(days) + 1) * DAY_MS,
        )
        .group_by(t.account_id, day, t.driver_id)
    )
    rows = [
        {
            "account_id": account,
            "vin": vin,
            "tenure": tenure,
            "day": int(d),
            "driver_id": driver,
            "trips": n,
            "duration_ms": int(duration),
            "distance_m": float(distance),
            "max_speed_kmh": top,
            "energy_used_pct": energy,
            "fuel_used_pct": fuel,
        }
        for account, d, driver, n, duration, distance, top, energy, fuel in summed
        if int(d) in days
    ]
    if rows:
        session.execute(insert(r), rows)


def _scope(
    table: type[FleetAlertRow]
    | type[FleetAlertDayRow]
    | type[FleetTripRow]
    | type[FleetTripDayRow],
    account_id: int | None,
    vehicles: Sequence[tuple[str, int]] | None,
    fleet_id: int | None,
) -> list[Any]:
    """The conditions of an account, a set of (vin, tenure) and a fleet's vehicles."""
    conditions: list[Any] = []
    if account_id is not None:
        conditions.append(table.account_id == account_id)
    if vehicles is not None:
        conditions.append(
            tuple_(table.vin, table.tenure).in_(list(vehicles)) if vehicles else False
        )
    if fleet_id is not None:
        conditions.append(
            table.vin.in_(select(FleetVehicleRow.vin).where(FleetVehicleRow.fleet_id == fleet_id))
        )
    return conditions
