"""An organization's fleet rule configuration, resolved into the core's settings.

The stored overrides (``fleet_rule_settings``: ``{"rules": {...}, "trips": {...}}``), the
organization's geofences and, per vehicle, the lowest speed limit of its fleets become one
``RuleSettings`` and one ``TripSettings`` (``gateway.core.fleet.state`` does the parsing).
A :class:`ConfigCache` holds an account's resolution for a few seconds, so a worker step
over thousands of samples reads the fences once, and a changed fence applies within that
time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gateway.core.fleet.geo import GeoJSONError, shape_from_geojson
from gateway.core.fleet.geofence import Geofence
from gateway.core.fleet.rules import RuleSettings
from gateway.core.fleet.state import (
    rule_settings_from_json,
    trip_settings_from_json,
    window_from_json,
)
from gateway.core.fleet.trips import TripSettings
from gateway.statedb.fleets import FleetRepository, GeofenceRecord

__all__ = ["AccountConfig", "ConfigCache", "geofence_of"]

logger = logging.getLogger(__name__)

AccountConfig = tuple[RuleSettings, TripSettings]
#: VINs per read of their fleet limits
_LIMITS_CHUNK = 500
#: the most settings with a fleet's limit kept (then they are made again)
_LIMITED_KEPT = 10_000


def geofence_of(record: GeofenceRecord) -> Geofence:
    """The core's fence for a stored one (validated when it was stored)."""
    return Geofence(
        str(record.id),
        shape_from_geojson(record.geometry),
        record.name,
        record.speed_limit_kmh,
        window_from_json(record.active_window),
        record.alert_enter,
        record.alert_exit,
    )


def _fences(repo: FleetRepository, account_id: int) -> tuple[Geofence, ...]:
    fences = []
    after: int | None = None
    while True:
        page = repo.list_geofences(account_id=account_id, after=after, limit=500)
        for record in page:
            try:
                fences.append(geofence_of(record))
            except (GeoJSONError, ValueError, KeyError) as exc:  # stored before a rule change
                logger.warning("geofence %s is skipped: %s", record.id, exc)
        if len(page) < 500:
            return tuple(fences)
        after = page[-1].id


def resolve(repo: FleetRepository, account_id: int) -> AccountConfig:
    stored: dict[str, Any] = repo.rule_settings(account_id)
    fences = _fences(repo, account_id)
    try:
        rules = rule_settings_from_json(stored.get("rules", {}), geofences=fences)
        trips = trip_settings_from_json(stored.get("trips", {}))
    except (TypeError, ValueError) as exc:  # validated when stored; never stop the worker
        logger.warning("account %s: stored rule settings ignored: %s", account_id, exc)
        rules, trips = RuleSettings(geofences=fences), TripSettings()
    return rules, trips


def _same(a: AccountConfig, b: AccountConfig) -> bool:
    try:
        return bool(a == b)
    except Exception:  # a value that cannot be compared: taken as changed
        return False


class ConfigCache:
    """Per account its resolved settings, for ``ttl_ms``; per VIN with its fleet limit."""

    def __init__(
        self, repo: FleetRepository, clock: Callable[[], int], ttl_ms: int = 5_000
    ) -> None:
        self._repo, self._clock, self._ttl = repo, clock, ttl_ms
        self._accounts: dict[int, tuple[int, AccountConfig]] = {}
        #: per VIN, when its fleet limit was read and the limit (None: no fleet's)
        self._limits: dict[str, tuple[int, float | None]] = {}
        #: counts the changes seen when settings were read again: a worker that writes its
        #: states behind writes them when this moves, so a replay never evaluates a pass
        #: with settings other than its own (decision 0050)
        self.generation = 0
        #: the settings with a fleet's limit, by the account's settings and the limit
        self._limited: dict[tuple[int, float], tuple[RuleSettings, RuleSettings]] = {}

    def account(self, account_id: int) -> AccountConfig:
        now = self._clock()
        held = self._accounts.get(account_id)
        if held is None or now - held[0] >= self._ttl:
            fresh = resolve(self._repo, account_id)
            if held is not None:
                if _same(held[1], fresh):
                    # the same objects as before: what the rules derive from them and keep
                    # by identity (each vehicle's envelope, the fence index) stays valid,
                    # where a new equal object made every vehicle build its envelope again
                    # every ``ttl_ms`` (decision 0056)
                    fresh = held[1]
                else:
                    self.generation += 1
                    self._limited.clear()
            held = self._accounts[account_id] = (now, fresh)
        return held[1]

    def for_vins(self, account_id: int, vins: list[str]) -> dict[str, AccountConfig]:
        """Each VIN's settings: its account's, with the lowest limit of its fleets. The
        limits are held ``ttl_ms`` too (read for every partition of every pass, they were
        a twentieth of the worker's time: decision 0024)."""
        config = self.account(account_id)
        rules, trips = config
        now, ttl, limits = self._clock(), self._ttl, self._limits
        stale = [v for v in vins if (held := limits.get(v)) is None or now - held[0] >= ttl]
        if stale:
            # with the stale ones, every held VIN past half its time: the VINs' times then
            # stay together and one read serves every partition of a pass, where each pass
            # read a few stale VINs per partition (decision 0037)
            half = self._ttl // 2
            stale = list(
                dict.fromkeys(
                    [*stale, *(v for v, (at, _) in self._limits.items() if now - at >= half)]
                )
            )
            found: dict[str, float] = {}
            for chunk in range(0, len(stale), _LIMITS_CHUNK):
                found.update(self._repo.fleet_limits(stale[chunk : chunk + _LIMITS_CHUNK]))
            for vin in stale:
                before = self._limits.get(vin)
                if before is not None and before[1] != found.get(vin):
                    self.generation += 1
                self._limits[vin] = (now, found.get(vin))
        out: dict[str, AccountConfig] = {}
        for vin in vins:
            limit = limits[vin][1]
            # without a fleet's limit the account's own pair (no new tuple per VIN per pass)
            out[vin] = config if limit is None else (self._with_limit(rules, limit), trips)
        return out

    def _with_limit(self, rules: RuleSettings, limit: float) -> RuleSettings:
        """``rules`` with a fleet's limit: one object per settings and limit (kept by
        identity as the account's are, see :meth:`account`)."""
        key = (id(rules), limit)
        held = self._limited.get(key)
        if held is None or held[0] is not rules:
            if len(self._limited) > _LIMITED_KEPT:
                self._limited.clear()
            held = self._limited[key] = (rules, replace(rules, fleet_speed_limit_kmh=limit))
        return held[1]
