"""The fleet repository: fleets and groups and their vehicles, drivers and their
assignments to vehicles, geofences and per-organization rule settings (issue 13).

The conventions of :mod:`gateway.statedb.accounts`: one short transaction per method,
frozen records out, times passed in by the caller, ``get_*`` returns None for an unknown id
(the API answers 404 without a try/except). Who may do what is the policy's question
(``gateway.core.policy``); this module checks only what the database would word badly: a
vehicle added to a fleet of another account, a duplicate fleet name, and the per-account
quotas the caller passes (``max_count``): the count is taken in the creating transaction,
so a quota is exact on SQLite (one writer) and overshot at most by the requests racing on
PostgreSQL at that instant.

What the rules worker produces (alerts, trips) and its own state are in
:mod:`gateway.statedb.fleet_log`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.statedb.accounts import Conflict, NotFound, _rowcount
from gateway.statedb.database import StateDatabase
from gateway.statedb.models import (
    DriverAssignmentRow,
    DriverRow,
    FleetRow,
    FleetRuleSettingsRow,
    FleetVehicleRow,
    GeofenceRow,
    VehicleRow,
)

__all__ = [
    "AssignmentRecord",
    "DriverRecord",
    "FleetRecord",
    "FleetRepository",
    "GeofenceRecord",
    "QuotaExceeded",
]


@dataclass(frozen=True, slots=True)
class FleetRecord:
    id: int
    account_id: int
    name: str
    kind: str
    speed_limit_kmh: float | None
    created_at: int
    vehicle_count: int = 0


@dataclass(frozen=True, slots=True)
class DriverRecord:
    id: int
    account_id: int
    name: str
    user_id: int | None
    created_at: int


@dataclass(frozen=True, slots=True)
class AssignmentRecord:
    id: int
    driver_id: int
    vin: str
    start_at: int
    end_at: int | None


@dataclass(frozen=True, slots=True)
class GeofenceRecord:
    id: int
    account_id: int
    name: str
    geometry: Mapping[str, Any]
    speed_limit_kmh: float | None
    active_window: Mapping[str, Any] | None
    alert_enter: bool
    alert_exit: bool
    created_at: int
    updated_at: int


def _fleet(row: FleetRow, count: int = 0) -> FleetRecord:
    return FleetRecord(
        row.id, row.account_id, row.name, row.kind, row.speed_limit_kmh, row.created_at, count
    )


def _vehicle_counts(session: Session, fleet_ids: list[int]) -> dict[int, int]:
    """How many vehicles each of these fleets holds (one grouped query; a fleet without
    vehicles is absent)."""
    if not fleet_ids:
        return {}
    query = (
        select(FleetVehicleRow.fleet_id, func.count())
        .where(FleetVehicleRow.fleet_id.in_(fleet_ids))
        .group_by(FleetVehicleRow.fleet_id)
    )
    return {int(fleet_id): int(count) for fleet_id, count in session.execute(query)}


def _driver(row: DriverRow) -> DriverRecord:
    return DriverRecord(row.id, row.account_id, row.name, row.user_id, row.created_at)


def _assignment(row: DriverAssignmentRow) -> AssignmentRecord:
    return AssignmentRecord(row.id, row.driver_id, row.vin, row.start_at, row.end_at)


def _geofence(row: GeofenceRow) -> GeofenceRecord:
    return GeofenceRecord(
        row.id,
        row.account_id,
        row.name,
        row.geometry,
        row.speed_limit_kmh,
        row.active_window,
        row.alert_enter,
        row.alert_exit,
        row.created_at,
        row.updated_at,
    )


class DuplicateFleetName(Conflict):
    """The account has a fleet or group of this name."""


class QuotaExceeded(Conflict):
    """``owner`` (``"account 5"``, ``"driver 7"``) has ``limit`` of ``what`` (fleets,
    drivers, geofences, assignments), its most; ``quota``: the quota's name in
    ``--fleet-quotas`` (default: ``what``)."""

    def __init__(self, what: str, owner: str, limit: int, quota: str | None = None) -> None:
        self.what = what
        self.owner = owner
        self.limit = limit
        self.quota = quota or what
        super().__init__(f"{owner} has {limit} {what}, the most it may have")


def _check_quota(
    session: Any, column: Any, key: int, max_count: int | None, what: str, owner: str = "account"
) -> None:
    if max_count is None:
        return
    count = session.scalar(select(func.count()).where(column == key))
    if int(count or 0) >= max_count:
        raise QuotaExceeded(what, f"{owner} {key}", max_count)


class FleetRepository:
    """Fleets, drivers, geofences and rule settings in the state database."""

    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    # --- fleets -----------------------------------------------------------------------

    def create_fleet(
        self,
        *,
        account_id: int,
        name: str,
        kind: str,
        speed_limit_kmh: float | None,
        now: int,
        max_count: int | None = None,
    ) -> FleetRecord:
        """:class:`QuotaExceeded` if the account has ``max_count`` fleets and groups."""
        try:
            with self._db.write() as session:
                _check_quota(session, FleetRow.account_id, account_id, max_count, "fleets")
                row = FleetRow(
                    account_id=account_id,
                    name=name,
                    kind=kind,
                    speed_limit_kmh=speed_limit_kmh,
                    created_at=now,
                )
                session.add(row)
                session.flush()
                return _fleet(row)
        except IntegrityError as exc:
            raise DuplicateFleetName(f"a fleet or group named {name!r} exists") from exc

    def get_fleet(self, fleet_id: int) -> FleetRecord | None:
        with self._db.read() as session:
            row = session.get(FleetRow, fleet_id)
            if row is None:
                return None
            count = session.scalar(select(func.count()).where(FleetVehicleRow.fleet_id == fleet_id))
            return _fleet(row, int(count or 0))

    def list_fleets(
        self, *, account_id: int | None, after: int | None, limit: int
    ) -> list[FleetRecord]:
        """By id; ``account_id`` None: every account's."""
        query = select(FleetRow).order_by(FleetRow.id).limit(limit)
        if account_id is not None:
            query = query.where(FleetRow.account_id == account_id)
        if after is not None:
            query = query.where(FleetRow.id > after)
        with self._db.read() as session:
            rows = list(session.scalars(query))
            counts = _vehicle_counts(session, [r.id for r in rows])
            return [_fleet(r, counts.get(r.id, 0)) for r in rows]

    def update_fleet(self, fleet_id: int, changes: Mapping[str, Any]) -> FleetRecord | None:
        """``changes``: ``name`` and/or ``speed_limit_kmh``."""
        try:
            with self._db.write() as session:
                row = session.get(FleetRow, fleet_id)
                if row is None:
                    return None
                for name, value in changes.items():
                    setattr(row, name, value)
                session.flush()
                return _fleet(row, _vehicle_counts(session, [fleet_id]).get(fleet_id, 0))
        except IntegrityError as exc:
            raise DuplicateFleetName(
                f"a fleet or group named {changes.get('name')!r} exists"
            ) from exc

    def delete_fleet(self, fleet_id: int) -> bool:
        with self._db.write() as session:
            session.execute(delete(FleetVehicleRow).where(FleetVehicleRow.fleet_id == fleet_id))
            return bool(_rowcount(session.execute(delete(FleetRow).where(FleetRow.id == fleet_id))))

    def add_vehicle(self, fleet_id: int, vin: str, *, now: int) -> bool:
        """Add ``vin`` (of the fleet's account) to the fleet; False if it was in it.
        :class:`NotFound` when the fleet or vehicle is unknown or of another account."""
        with self._db.write() as session:
            fleet = session.get(FleetRow, fleet_id)
            vehicle = session.get(VehicleRow, vin)
            if fleet is None:
                raise NotFound("fleet", fleet_id)
            if vehicle is None or vehicle.account_id != fleet.account_id:
                raise NotFound("vehicle", vin)
            if session.get(FleetVehicleRow, (fleet_id, vin)) is not None:
                return False
            session.add(FleetVehicleRow(fleet_id=fleet_id, vin=vin, added_at=now))
            return True

    def remove_vehicle(self, fleet_id: int, vin: str) -> bool:
        with self._db.write() as session:
            result = session.execute(
                delete(FleetVehicleRow).where(
                    FleetVehicleRow.fleet_id == fleet_id, FleetVehicleRow.vin == vin
                )
            )
            return bool(_rowcount(result))

    def fleet_vins(self, fleet_id: int, *, after: str | None, limit: int) -> list[str]:
        query = (
            select(FleetVehicleRow.vin)
            .where(FleetVehicleRow.fleet_id == fleet_id)
            .order_by(FleetVehicleRow.vin)
            .limit(limit)
        )
        if after is not None:
            query = query.where(FleetVehicleRow.vin > after)
        with self._db.read() as session:
            return list(session.scalars(query))

    def fleet_limits(self, vins: Sequence[str]) -> dict[str, float]:
        """Per VIN the lowest speed limit of its fleets (VINs without one are left out)."""
        with self._db.read() as session:
            rows = session.execute(
                select(FleetVehicleRow.vin, func.min(FleetRow.speed_limit_kmh))
                .join(FleetRow, FleetRow.id == FleetVehicleRow.fleet_id)
                .where(FleetVehicleRow.vin.in_(vins), FleetRow.speed_limit_kmh.is_not(None))
                .group_by(FleetVehicleRow.vin)
            )
            return {vin: float(limit) for vin, limit in rows if limit is not None}

    # --- drivers ----------------------------------------------------------------------

    def create_driver(
        self,
        *,
        account_id: int,
        name: str,
        user_id: int | None,
        now: int,
        max_count: int | None = None,
    ) -> DriverRecord:
        """:class:`QuotaExceeded` if the account has ``max_count`` drivers."""
        with self._db.write() as session:
            _check_quota(session, DriverRow.account_id, account_id, max_count, "drivers")
            row = DriverRow(account_id=account_id, name=name, user_id=user_id, created_at=now)
            session.add(row)
            session.flush()
            return _driver(row)

    def get_driver(self, driver_id: int) -> DriverRecord | None:
        with self._db.read() as session:
            row = session.get(DriverRow, driver_id)
            return None if row is None else _driver(row)

    def list_drivers(
        self, *, account_id: int | None, after: int | None, limit: int
    ) -> list[DriverRecord]:
        query = select(DriverRow).order_by(DriverRow.id).limit(limit)
        if account_id is not None:
            query = query.where(DriverRow.account_id == account_id)
        if after is not None:
            query = query.where(DriverRow.id > after)
        with self._db.read() as session:
            return [_driver(r) for r in session.scalars(query)]

    def report_names(
        self, account_id: int | None, keys: Iterable[str], *, drivers: bool
    ) -> dict[str, str]:
        """The names a report shows next to its keys: the labels of these VINs, or the
        names of these drivers (ids as text), of ``account_id`` (None: any account); a key
        without a name (or of another account) is absent."""
        column = DriverRow.id if drivers else VehicleRow.vin
        name = DriverRow.name if drivers else VehicleRow.label
        owner = DriverRow.account_id if drivers else VehicleRow.account_id
        wanted = sorted({int(k) for k in keys if k.isdecimal()} if drivers else set(keys))
        out: dict[str, str] = {}
        with self._db.read() as session:
            for i in range(0, len(wanted), 500):
                query = select(column, name).where(column.in_(wanted[i : i + 500]))
                if account_id is not None:
                    query = query.where(owner == account_id)
                out.update((str(k), n) for k, n in session.execute(query) if n is not None)
        return out

    def update_driver(self, driver_id: int, changes: Mapping[str, Any]) -> DriverRecord | None:
        with self._db.write() as session:
            row = session.get(DriverRow, driver_id)
            if row is None:
                return None
            for name, value in changes.items():
                setattr(row, name, value)
            session.flush()
            return _driver(row)

    def assign(
        self,
        driver_id: int,
        vin: str,
        *,
        start_at: int,
        end_at: int | None,
        max_count: int | None = None,
        max_account_count: int | None = None,
    ) -> AssignmentRecord:
        """Assign the driver to ``vin`` (of the driver's account) over [start, end);
        :class:`QuotaExceeded` if the driver has ``max_count`` assignments or the
        account's drivers together ``max_account_count``."""
        with self._db.write() as session:
            driver = session.get(DriverRow, driver_id)
            vehicle = session.get(VehicleRow, vin)
            if driver is None:
                raise NotFound("driver", driver_id)
            if vehicle is None or vehicle.account_id != driver.account_id:
                raise NotFound("vehicle", vin)
            _check_quota(
                session,
                DriverAssignmentRow.driver_id,
                driver_id,
                max_count,
                "assignments",
                owner="driver",
            )
            if max_account_count is not None:
                count = session.scalar(
                    select(func.count())
                    .select_from(DriverAssignmentRow)
                    .join(DriverRow, DriverRow.id == DriverAssignmentRow.driver_id)
                    .where(DriverRow.account_id == driver.account_id)
                )
                if int(count or 0) >= max_account_count:
                    raise QuotaExceeded(
                        "assignments",
                        f"account {driver.account_id}",
                        max_account_count,
                        quota="account_assignments",
                    )
            row = DriverAssignmentRow(
                driver_id=driver_id, vin=vin, start_at=start_at, end_at=end_at
            )
            session.add(row)
            session.flush()
            return _assignment(row)

    def assignments(
        self, driver_id: int, *, after: int | None, limit: int
    ) -> list[AssignmentRecord]:
        query = (
            select(DriverAssignmentRow)
            .where(DriverAssignmentRow.driver_id == driver_id)
            .order_by(DriverAssignmentRow.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(DriverAssignmentRow.id > after)
        with self._db.read() as session:
            return [_assignment(r) for r in session.scalars(query)]

    def unassign(self, driver_id: int, assignment_id: int) -> bool:
        with self._db.write() as session:
            result = session.execute(
                delete(DriverAssignmentRow).where(
                    DriverAssignmentRow.id == assignment_id,
                    DriverAssignmentRow.driver_id == driver_id,
                )
            )
            return bool(_rowcount(result))

    # --- geofences --------------------------------------------------------------------

    def create_geofence(
        self,
        *,
        account_id: int,
        values: Mapping[str, Any],
        now: int,
        max_count: int | None = None,
    ) -> GeofenceRecord:
        """``values``: name, geometry, speed_limit_kmh, active_window, alert_enter,
        alert_exit (validated by the caller with ``gateway.core.fleet``).
        :class:`QuotaExceeded` if the account has ``max_count`` geofences."""
        with self._db.write() as session:
            _check_quota(session, GeofenceRow.account_id, account_id, max_count, "geofences")
            row = GeofenceRow(account_id=account_id, created_at=now, updated_at=now, **values)
            session.add(row)
            session.flush()
            return _geofence(row)

    def get_geofence(self, geofence_id: int) -> GeofenceRecord | None:
        with self._db.read() as session:
            row = session.get(GeofenceRow, geofence_id)
            return None if row is None else _geofence(row)

    def list_geofences(
        self, *, account_id: int | None, after: int | None, limit: int
    ) -> list[GeofenceRecord]:
        query = select(GeofenceRow).order_by(GeofenceRow.id).limit(limit)
        if account_id is not None:
            query = query.where(GeofenceRow.account_id == account_id)
        if after is not None:
            query = query.where(GeofenceRow.id > after)
        with self._db.read() as session:
            return [_geofence(r) for r in session.scalars(query)]

    def update_geofence(
        self, geofence_id: int, values: Mapping[str, Any], *, now: int
    ) -> GeofenceRecord | None:
        with self._db.write() as session:
            row = session.get(GeofenceRow, geofence_id)
            if row is None:
                return None
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = now
            session.flush()
            return _geofence(row)

    def delete_geofence(self, geofence_id: int) -> bool:
        with self._db.write() as session:
            result = session.execute(delete(GeofenceRow).where(GeofenceRow.id == geofence_id))
            return bool(_rowcount(result))

    # --- rule settings ----------------------------------------------------------------

    def rule_settings(self, account_id: int) -> dict[str, Any]:
        """The account's stored settings (``{"rules": {...}, "trips": {...}}``; empty
        ones: the defaults)."""
        with self._db.read() as session:
            row = session.get(FleetRuleSettingsRow, account_id)
            return dict(row.settings) if row is not None else {"rules": {}, "trips": {}}

    def set_rule_settings(self, account_id: int, settings: Mapping[str, Any], *, now: int) -> None:
        with self._db.write() as session:
            row = session.get(FleetRuleSettingsRow, account_id)
            if row is None:
                session.add(
                    FleetRuleSettingsRow(
                        account_id=account_id, settings=dict(settings), updated_at=now
                    )
                )
            else:
                row.settings = dict(settings)
                row.updated_at = now
