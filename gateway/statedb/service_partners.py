"""Service partners, dealer consent, service plans and maintenance notices (issue 16, items
4 and 5; docs/decisions/0026-lifecycle-owner-services.md).

A partner sees a vehicle's diagnostics in two ways, both the holder's decision and both
bound to the holding period they were given in (a transfer ends them):

- **workshop**: while the car is ``in_service`` at the partner's account and before the
  service's end time (``vehicle_lifecycle.service_account_id``/``service_until``, decision
  0021);
- **dealer**: while the holder's consent (:class:`DealerConsent`) lasts.

:meth:`ServicePartnerRepository.partner_access` answers which, if any.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from sqlalchemy import ColumnElement, Select, select, update
from sqlalchemy.exc import IntegrityError

from gateway.core.maintenance import DueItem, ServicePlan
from gateway.statedb.database import StateDatabase
from gateway.statedb.events import NewEvent, publish_many
from gateway.statedb.models import (
    AccountRow,
    DealerConsentRow,
    MaintenanceNoticeRow,
    ServicePartnerRow,
    ServicePlanRow,
    VehicleLifecycleRow,
    VehicleRow,
)

__all__ = [
    "MAX_PLANS",
    "DealerConsent",
    "MaintenanceNotice",
    "PartnerAccess",
    "ServicePartner",
    "ServicePartnerRepository",
]

#: service plans an installation may have (one per model line; the check reads them all)
MAX_PLANS: Final = 1000


@dataclass(frozen=True, slots=True)
class ServicePartner:
    account_id: int
    name: str
    created_at: int


@dataclass(frozen=True, slots=True)
class DealerConsent:
    id: int
    vin: str
    tenure: int
    account_id: int
    dealer_account_id: int
    created_by: int | None
    created_at: int
    expires_at: int | None
    ended_at: int | None
    ended_by: int | None

    def open_at(self, now: int) -> bool:
        return self.ended_at is None and (self.expires_at is None or now < self.expires_at)

    @classmethod
    def from_row(cls, row: DealerConsentRow) -> DealerConsent:
        return cls(
            row.id,
            row.vin,
            row.tenure,
            row.account_id,
            row.dealer_account_id,
            row.created_by,
            row.created_at,
            row.expires_at,
            row.ended_at,
            row.ended_by,
        )


@dataclass(frozen=True, slots=True)
class PartnerAccess:
    """Why a partner account may read a vehicle's diagnostics now, and until when."""

    vin: str
    tenure: int
    holder_account_id: int
    via: Literal["workshop", "dealer"]
    until: int | None


@dataclass(frozen=True, slots=True)
class MaintenanceNotice:
    vin: str
    tenure: int
    key: str
    kind: str
    message: str
    raised_at: int
    done_at: int | None


class ServicePartnerRepository:
    def __init__(self, db: StateDatabase) -> None:
        self._db = db

    # --- partners ------------------------------------------------------------------------

    def register_partner(
        self, account_id: int, *, name: str, by: int | None, now: int
    ) -> tuple[ServicePartner, bool] | None:
        """Register an organization account as a service partner: (the partner, whether
        this call registered it). An account already registered keeps its name (the
        caller compares); None when there is no such organization account."""
        with self._db.write() as session:
            account = session.get(AccountRow, account_id)
            if account is None or account.kind != "organization":
                return None
            row = session.get(ServicePartnerRow, account_id)
            created = row is None
            if row is None:
                row = ServicePartnerRow(
                    account_id=account_id, name=name, created_at=now, created_by=by
                )
                session.add(row)
                session.flush()
            return ServicePartner(row.account_id, row.name, row.created_at), created

    def partners(self) -> list[ServicePartner]:
        with self._db.read() as session:
            rows = session.scalars(select(ServicePartnerRow).order_by(ServicePartnerRow.name))
            return [ServicePartner(r.account_id, r.name, r.created_at) for r in rows]

    def partner(self, account_id: int) -> ServicePartner | None:
        with self._db.read() as session:
            row = session.get(ServicePartnerRow, account_id)
            return None if row is None else ServicePartner(row.account_id, row.name, row.created_at)

    # --- dealer consent --------------------------------------------------------------------

    def give_consent(
        self,
        *,
        vin: str,
        tenure: int,
        account_id: int,
        dealer_account_id: int,
        expires_at: int | None,
        by: int | None,
        now: int,
    ) -> DealerConsent:
        """The holder's consent for ``dealer_account_id``; an earlier open consent of the
        same holding period ends (one dealer at a time)."""
        with self._db.write() as session:
            session.execute(
                update(DealerConsentRow)
                .where(*_open_consent(vin, tenure))
                .values(ended_at=now, ended_by=by)
                .execution_options(synchronize_session=False)
            )
            row = DealerConsentRow(
                vin=vin,
                tenure=tenure,
                account_id=account_id,
                dealer_account_id=dealer_account_id,
                created_by=by,
                created_at=now,
                expires_at=expires_at,
            )
            session.add(row)
            session.flush()
            return DealerConsent.from_row(row)

    def consent(self, vin: str, tenure: int, now: int) -> DealerConsent | None:
        """The open consent of the holding period, if any."""
        with self._db.read() as session:
            row = session.scalar(_newest_open_consent(vin, tenure))
            found = None if row is None else DealerConsent.from_row(row)
            return found if found is not None and found.open_at(now) else None

    def withdraw_consent(
        self, vin: str, tenure: int, *, by: int | None, now: int
    ) -> DealerConsent | None:
        with self._db.write() as session:
            row = session.scalar(_newest_open_consent(vin, tenure).with_for_update())
            if row is None:
                return None
            row.ended_at = now
            row.ended_by = by
            session.flush()
            return DealerConsent.from_row(row)

    # --- who may read diagnostics ---------------------------------------------------------

    def partner_access(self, vin: str, partner_account_id: int, now: int) -> PartnerAccess | None:
        """Whether ``partner_account_id`` may read the vehicle's diagnostics now: as the
        workshop of a running service (before its end), or as the dealer of an open
        consent, always of the current holding period."""
        with self._db.read() as session:
            vehicle = session.get(VehicleRow, vin)
            if vehicle is None or vehicle.revoked_at is not None:
                return None
            life = session.get(VehicleLifecycleRow, vin)
            if (
                life is not None
                and life.decommissioned_at is None
                and life.service_account_id == partner_account_id
                and life.service_until is not None
                and now < life.service_until
            ):
                return PartnerAccess(
                    vin, vehicle.tenure, vehicle.account_id, "workshop", life.service_until
                )
        consent = self.consent(vin, vehicle.tenure, now)
        if consent is not None and consent.dealer_account_id == partner_account_id:
            return PartnerAccess(
                vin, vehicle.tenure, vehicle.account_id, "dealer", consent.expires_at
            )
        return None

    def partner_vehicles(self, partner_account_id: int, now: int) -> list[PartnerAccess]:
        """Every vehicle the partner may read now (workshop or dealer), by VIN."""
        with self._db.read() as session:
            vins = set(
                session.scalars(
                    select(VehicleLifecycleRow.vin).where(
                        VehicleLifecycleRow.service_account_id == partner_account_id
                    )
                )
            )
            vins |= set(
                session.scalars(
                    select(DealerConsentRow.vin).where(
                        DealerConsentRow.dealer_account_id == partner_account_id,
                        DealerConsentRow.ended_at.is_(None),
                    )
                )
            )
        found = [self.partner_access(vin, partner_account_id, now) for vin in sorted(vins)]
        return [a for a in found if a is not None]

    # --- service plans ---------------------------------------------------------------------

    def put_plan(self, plan: ServicePlan, *, by: int | None, now: int) -> bool:
        """Create or replace the plan of ``plan.vin_prefix``; False when the installation
        has :data:`MAX_PLANS` already and this would be a new one."""
        with self._db.write() as session:
            row = session.scalar(
                select(ServicePlanRow).where(ServicePlanRow.vin_prefix == plan.vin_prefix)
            )
            if row is None:
                count = len(list(session.scalars(select(ServicePlanRow.id).limit(MAX_PLANS))))
                if count >= MAX_PLANS:
                    return False
                row = ServicePlanRow(vin_prefix=plan.vin_prefix)
                session.add(row)
            row.name = plan.name
            row.every_km = plan.every_km
            row.every_months = plan.every_months
            row.fault_codes = list(plan.fault_codes)
            row.updated_at = now
            row.updated_by = by
            try:
                session.flush()
            except IntegrityError:  # the same prefix created meanwhile
                return False
            return True

    def plans(self) -> list[ServicePlan]:
        with self._db.read() as session:
            rows = session.scalars(select(ServicePlanRow).order_by(ServicePlanRow.vin_prefix))
            return [
                ServicePlan(r.name, r.vin_prefix, r.every_km, r.every_months, tuple(r.fault_codes))
                for r in rows
            ]

    # --- maintenance notices ---------------------------------------------------------------

    def notices(self, vin: str, tenure: int) -> list[MaintenanceNotice]:
        with self._db.read() as session:
            rows = session.scalars(
                select(MaintenanceNoticeRow)
                .where(MaintenanceNoticeRow.vin == vin, MaintenanceNoticeRow.tenure == tenure)
                .order_by(MaintenanceNoticeRow.id)
            )
            return [
                MaintenanceNotice(r.vin, r.tenure, r.key, r.kind, r.message, r.raised_at, r.done_at)
                for r in rows
            ]

    def raise_notices(
        self,
        *,
        vin: str,
        tenure: int,
        account_id: int,
        items: Sequence[DueItem],
        now: int,
    ) -> list[DueItem]:
        """Record the items not notified before in this holding period and publish, in the
        same transaction, a ``maintenance.due`` event to the holder's account (the alert:
        its live stream and webhooks) and one to the consenting dealer's account (its
        webhooks: a signed delivery). The items that were new."""
        with self._db.write() as session:
            vehicle = session.get(VehicleRow, vin)
            if (
                vehicle is None
                or vehicle.revoked_at is not None
                or vehicle.tenure != tenure
                or vehicle.account_id != account_id
            ):
                return []  # it changed hands since it was read
            known = set(
                session.scalars(
                    select(MaintenanceNoticeRow.key).where(
                        MaintenanceNoticeRow.vin == vin, MaintenanceNoticeRow.tenure == tenure
                    )
                )
            )
            new = [i for i in items if i.key not in known]
            if not new:
                return []
            for item in new:
                session.add(
                    MaintenanceNoticeRow(
                        vin=vin,
                        tenure=tenure,
                        account_id=account_id,
                        key=item.key,
                        kind=item.kind,
                        message=item.message,
                        raised_at=now,
                    )
                )
            session.flush()
            data = {
                "vin": vin,
                "due": [
                    {"key": i.key, "kind": i.kind, "at": i.at, "message": i.message} for i in new
                ],
            }
            events = [NewEvent("maintenance.due", now, data, account_id)]
            dealer = session.scalar(_newest_open_consent(vin, tenure))
            if dealer is not None and DealerConsent.from_row(dealer).open_at(now):
                events.append(NewEvent("maintenance.due", now, data, dealer.dealer_account_id))
            publish_many(session, events)
            return new

    def service_done(self, vin: str, tenure: int, *, now: int) -> int:
        """A service ended: the items notified so far in the period are done."""
        with self._db.write() as session:
            result = session.execute(
                update(MaintenanceNoticeRow)
                .where(
                    MaintenanceNoticeRow.vin == vin,
                    MaintenanceNoticeRow.tenure == tenure,
                    MaintenanceNoticeRow.done_at.is_(None),
                )
                .values(done_at=now)
                .execution_options(synchronize_session=False)
            )
            return int(getattr(result, "rowcount", 0) or 0)


def _open_consent(vin: str, tenure: int) -> tuple[ColumnElement[bool], ...]:
    """The conditions of a holding period's consents that have not ended."""
    return (
        DealerConsentRow.vin == vin,
        DealerConsentRow.tenure == tenure,
        DealerConsentRow.ended_at.is_(None),
    )


def _newest_open_consent(vin: str, tenure: int) -> Select[DealerConsentRow]:
    """The holding period's newest consent that has not ended (it may have expired)."""
    return (
        select(DealerConsentRow)
        .where(*_open_consent(vin, tenure))
        .order_by(DealerConsentRow.id.desc())
        .limit(1)
    )
