"""Which vehicles may send, and whose they are: the provisioned, unrevoked VINs of the state
database, each with its current tenure (the number of its holding period).

The broker's ACL already stops a unit from publishing on another vehicle's topics and a
revoked unit from publishing at all; the gateway checks again, so that a broker left open
by mistake (anonymous access, a stale ACL, a wildcard rule) still cannot get data into the
store for a VIN nobody provisioned. Refused messages go to the quarantine with reason
``unprovisioned_vehicle``.

The tenure is what the gateway stamps on everything it stores for the VIN, so that the data
belongs to the account that held the VIN when it was recorded and a later holder starts
with an empty vehicle (docs/decisions/0009-vehicle-ownership-periods.md). A period has an
end as well as a start: the registry also keeps every revoked VIN's last period with its
end, and each active one's previous period's end, so that a sample its unit stamped after
a revocation is refused rather than filed in the ended period
(``gateway.core.batching.refuse_after_revocation``).

The map is held in memory and reloaded when the state database's broker-identity version
changes (one integer read every ``interval_s``, and one before every commit; provisioning
and revocation, and so every change of tenure, bump that version), so the hot path is one
dict lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import ChainMap
from collections.abc import Mapping

from gateway.core.batching import Tenure
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.database import StateDatabase

__all__ = ["MISS_REFRESH_S", "VehicleRegistry"]

log = logging.getLogger(__name__)

#: the least time between two reloads caused by unknown VINs (one integer read each; a
#: flood from an unprovisioned unit costs at most ten reads a second)
MISS_REFRESH_S = 0.1


class VehicleRegistry:
    def __init__(self, state_db_url: str) -> None:
        self._db = StateDatabase(state_db_url)
        self._accounts = AccountRepository(self._db)
        self._version: int | None = None
        self._last_miss_refresh = 0.0
        #: vin -> current tenure of every active vehicle (replaced whole on reload)
        self.tenures: dict[str, Tenure] = {}
        #: vin -> last tenure, with its end, of every revoked vehicle (replaced likewise)
        self.ended: dict[str, Tenure] = {}
        self._both: Mapping[str, Tenure] = ChainMap(self.tenures, self.ended)

    @property
    def vins(self) -> frozenset[str]:
        return frozenset(self.tenures)

    def tenure_of(self, vin: str) -> Tenure | None:
        """The current tenure of ``vin``, or None if it may not send. A VIN not in the map
        triggers a reload first (at most every ``MISS_REFRESH_S``): a vehicle provisioned a
        moment ago is let in by the broker as soon as its reload is done, which can be
        before our next periodic refresh, and its first messages must not be refused for
        that."""
        tenure = self.tenures.get(vin)
        if tenure is not None:
            return tenure
        now = time.monotonic()
        if now - self._last_miss_refresh >= MISS_REFRESH_S:
            self._last_miss_refresh = now
            try:
                self.refresh()
            except Exception:
                log.exception("vehicle registry refresh failed; keeping the last known set")
        return self.tenures.get(vin)

    def admits(self, vin: str) -> bool:
        """Whether ``vin`` may send (see :meth:`tenure_of`)."""
        return self.tenure_of(vin) is not None

    def refresh(self) -> bool:
        """Reload the VINs and their tenures if they changed; True if they did."""
        version = self._accounts.broker_version()
        if version == self._version:
            return False
        active: dict[str, Tenure] = {}
        ended: dict[str, Tenure] = {}
        for vin, bounds in self._accounts.tenure_bounds().items():
            tenure = Tenure(*bounds)
            (active if tenure.ended_at is None else ended)[vin] = tenure
        self.tenures, self.ended, self._both = active, ended, ChainMap(active, ended)
        self._version = version
        log.info(
            "vehicle registry: %d provisioned vehicles (version %d)", len(self.tenures), version
        )
        return True

    def current_tenures(self) -> Mapping[str, Tenure]:
        """The map as the state database has it now: reloaded first if the version moved
        (one integer read), whether or not the periodic reload already took the change.
        Revoked VINs are in it too, each with its last period and that period's end: a
        message admitted before the gateway knew of the revocation is filed against it
        (``gateway.core.batching.refuse_after_revocation``).

        The ingest service calls this just before each commit: every message of the batch
        arrived before this read, so a claim committed before a message arrived is seen and
        the new holder's samples are filed under the new holding period, never under the
        previous holder's (where they were also swallowed as duplicates of its seq numbers).
        A database error keeps the last known map (logged)."""
        try:
            self.refresh()
        except Exception:
            log.exception("vehicle registry refresh failed; keeping the last known set")
        return self._both

    def open(self) -> None:
        """Migrate the state database if needed and load the VINs (blocking)."""
        self._db.upgrade()
        self.refresh()

    async def watch(self, stopping: asyncio.Event, interval_s: float = 0.5) -> None:
        """Refresh every ``interval_s`` until ``stopping``; a database error is logged and
        the last known set kept (better than refusing every vehicle)."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval_s)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception:
                log.exception("vehicle registry refresh failed; keeping the last known set")

    def close(self) -> None:
        self._db.dispose()
