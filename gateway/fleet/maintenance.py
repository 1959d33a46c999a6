"""The maintenance check (issue 16 item 4; docs/decisions/0026-lifecycle-owner-services.md):
for every held vehicle whose model has a service plan, what is due now
(:func:`gateway.core.maintenance.due_items`, from the latest odometer and fault codes in
the telemetry store and the car's age), recorded once per holding period and item, with a
``maintenance.due`` event to the holder's account and to the dealer the holder consented to
(their webhooks: a signed delivery through the existing webhook worker, with its address
checks).

:class:`MaintenanceThread` (:func:`start_maintenance`) runs :func:`check_maintenance` every
few minutes where the rules run: in ``telematics fleet-worker`` (decision 0029), or in the
API process when it runs the rules itself; a second such process finds the items recorded
already (one notice per item: the unique key in ``maintenance_notices``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.core.clock import wall_clock_ms
from gateway.core.maintenance import due_items, plan_for
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.database import StateDatabase
from gateway.statedb.lifecycle import LifecycleRepository
from gateway.statedb.service_partners import ServicePartnerRepository
from gateway.store import open_store
from gateway.store.base import TelemetryReader
from schemas import SignalValue

__all__ = [
    "DTC_LIST",
    "ODOMETER",
    "CheckResult",
    "MaintenanceThread",
    "check_maintenance",
    "readings",
    "start_maintenance",
]

log = logging.getLogger(__name__)

ODOMETER = "Vehicle.TraveledDistance"
DTC_LIST = "Vehicle.Diagnostics.DTCList"


@dataclass(frozen=True, slots=True)
class CheckResult:
    vehicles: int
    notices: int


def check_maintenance(
    accounts: AccountRepository,
    lifecycle: LifecycleRepository,
    partners: ServicePartnerRepository,
    reader: TelemetryReader,
    *,
    now: int,
) -> CheckResult:
    """One pass over the held vehicles with a plan; how many were looked at and how many
    new notices were raised."""
    plans = partners.plans()
    if not plans:
        return CheckResult(0, 0)
    looked = raised = 0
    for vin, (tenure, started_at) in sorted(accounts.active_tenures().items()):
        plan = plan_for(vin, plans)
        if plan is None:
            continue
        vehicle = accounts.get_vehicle(vin)
        if vehicle is None or vehicle.tenure != tenure:
            continue
        looked += 1
        state = reader.vehicle_state(vin, tenure=tenure)
        latest = {} if state is None else state.latest
        registered = lifecycle.view(vin).registered_at
        odometer_m, codes = readings(latest)
        items = due_items(
            plan,
            odometer_m=odometer_m,
            now_ms=now,
            since_ms=registered if registered is not None else started_at,
            fault_codes=codes,
        )
        if items:
            raised += len(
                partners.raise_notices(
                    vin=vin, tenure=tenure, account_id=vehicle.account_id, items=items, now=now
                )
            )
    return CheckResult(looked, raised)


def readings(latest: Mapping[str, tuple[SignalValue, int]]) -> tuple[int | None, list[str]]:
    """The odometer (m) and active fault codes in a vehicle's latest signals."""
    odometer = latest.get(ODOMETER)
    codes = latest.get(DTC_LIST)
    odometer_m = (
        int(odometer[0])
        if odometer is not None
        and isinstance(odometer[0], int | float)
        and not isinstance(odometer[0], bool)
        else None
    )
    listed = [str(c) for c in codes[0]] if codes is not None and isinstance(codes[0], list) else []
    return odometer_m, listed


class MaintenanceThread:
    """Runs :func:`check_maintenance` every ``interval_s`` in a daemon thread."""

    def __init__(self, check: Callable[[int], CheckResult], *, interval_s: float = 300.0) -> None:
        self._check = check
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="maintenance", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._check(wall_clock_ms())
            except Exception:
                log.warning("the maintenance check failed; trying again later", exc_info=True)


def start_maintenance(state_db: StateDatabase, store: str | Path) -> MaintenanceThread:
    """The maintenance check's thread over ``state_db`` and the telemetry store at
    ``store`` (each check opens its own reader and closes it), started."""
    accounts = AccountRepository(state_db)
    partners = ServicePartnerRepository(state_db)
    lifecycle = LifecycleRepository(state_db)

    def check(now: int) -> CheckResult:
        reader = open_store(store, readonly=True)
        try:
            return check_maintenance(accounts, lifecycle, partners, reader, now=now)
        finally:
            reader.close()

    thread = MaintenanceThread(check)
    thread.start()
    return thread
