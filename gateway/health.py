"""Health of an installation: what each process reports about itself, and the verdict.

Every long-running part writes a small status file into ``DATA_DIR/health/`` (replaced
atomically, so a reader sees the old or the new one, never half):

* each gateway, ``gateway-<client id>.json`` every :data:`HEARTBEAT_INTERVAL_S`: whether its
  MQTT session is connected and when it last committed;
* the supervisor of ``telematics up``, ``supervisor.json``: every part (running, waiting to
  be restarted, crash-looping) and the private broker.

The API reads them, adds what it sees itself (the telemetry store, the state database, its
command service's broker connection) and :func:`evaluate` turns it all into one answer, a
pure function of those observations so the rules are tested without processes. Files live
next to the telemetry database because the gateways and the API already share that
directory (SQLite is single-host anyway).

Rules (decision 0008): a *required* component that fails makes the installation
``unavailable`` (HTTP 503): the telemetry store, the state database, the broker as the
command service sees it, and ingest (at least one gateway connected with a fresh heartbeat
when gateways report at all; a gateway part crash-looping under the supervisor). An
*optional* part that fails (the demo simulator) makes it ``degraded`` (still 200). A file
older than :data:`STALE_AFTER_S` is a process that stopped reporting: dead or hung.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread

from gateway.files import write_private_file

__all__ = [
    "HEALTH_DIR_NAME",
    "HEARTBEAT_INTERVAL_S",
    "STALE_AFTER_S",
    "SUPERVISOR_FILE_NAME",
    "Applied",
    "Component",
    "GatewayHeartbeat",
    "HealthReport",
    "broker_applied",
    "broker_has_identities",
    "broker_wait",
    "broker_wait_async",
    "evaluate",
    "gateway_heartbeat_path",
    "read_gateway_heartbeats",
    "read_supervisor_status",
    "write_status_file",
]

HEALTH_DIR_NAME = "health"
SUPERVISOR_FILE_NAME = "supervisor.json"
HEARTBEAT_INTERVAL_S = 2.0
STALE_AFTER_S = 10.0
"""A status file older than this (five missed heartbeats) is from a process that stopped."""

Status = Literal["ok", "degraded", "unavailable", "unknown"]


@dataclass(frozen=True, slots=True)
class Component:
    """One line of the report: ``required`` components decide between ok and unavailable,
    optional ones between ok and degraded; ``unknown`` (nothing reports it) decides nothing."""

    status: Status
    detail: str
    required: bool = True


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: Literal["ok", "degraded", "unavailable"]
    components: dict[str, Component]

    @property
    def http_status(self) -> int:
        return 503 if self.status == "unavailable" else 200


@dataclass(frozen=True, slots=True)
class GatewayHeartbeat:
    client_id: str
    pid: int
    connected: bool
    updated_at_ms: int
    broker: str = ""

    def age_s(self, now_ms: int) -> float:
        return max(0, now_ms - self.updated_at_ms) / 1000


# --------------------------------------------------------------------------- files


def write_status_file(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically (no fsync: a status lost in a
    power cut is rewritten within seconds)."""
    write_private_file(path, json.dumps(data), fsync=False)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gateway_heartbeat_path(directory: Path, client_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in client_id)
    return directory / f"gateway-{safe}.json"


def read_gateway_heartbeats(directory: Path) -> list[GatewayHeartbeat]:
    """Every readable gateway heartbeat in ``directory``, sorted by client id."""
    beats = []
    for path in sorted(directory.glob("gateway-*.json")):
        data = _read_json(path)
        if data is None:
            continue
        try:
            beats.append(
                GatewayHeartbeat(
                    client_id=str(data["client_id"]),
                    pid=int(data["pid"]),
                    connected=bool(data["connected"]),
                    updated_at_ms=int(data["updated_at_ms"]),
                    broker=str(data.get("broker", "")),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return sorted(beats, key=lambda b: b.client_id)


def read_supervisor_status(directory: Path) -> dict[str, Any] | None:
    return _read_json(directory / SUPERVISOR_FILE_NAME)


Applied = Literal["applied", "pending", "not_responding"]
"""Where a broker stands with an identity version: loaded it; not yet; or its process is
stopped (SIGSTOP), so waiting for it is pointless until it runs again."""


def broker_applied(
    directory: Path, version: int, *, now_ms: Callable[[], int], edge: int | None = None
) -> Applied | None:
    """Has the private broker of the installation whose health directory this is loaded the
    state database's identities up to ``version``? With edge brokers, ``edge`` None asks
    for every broker (the supervisor reports the lowest version all have loaded), ``edge``
    i for the core and edge i only (what one VIN's login depends on, decision 0038).
    ``not_responding`` as soon as one of them is stopped and has not loaded it. None when
    no running ``telematics up`` with a private closed broker reports here (nothing to wait
    for: another broker, or none)."""
    status = read_supervisor_status(directory)
    broker = None if status is None else status.get("broker")
    fresh = status is not None and now_ms() - int(status.get("updated_at_ms", 0)) < 5_000
    if not fresh or not isinstance(broker, dict):
        return None
    edges = [e for e in (status or {}).get("edges", []) if isinstance(e, dict)]
    if edge is not None and 1 <= edge <= len(edges):
        core = {**broker, "identities_version": broker.get("own_identities_version")}
        asked = [core, edges[edge - 1]]
    else:
        asked = [broker, *edges]
    if not isinstance(broker.get("identities_version"), int):
        return None
    state: Applied = "applied"
    for one in asked:
        loaded = one.get("identities_version")
        if isinstance(loaded, int) and loaded >= version:
            continue
        if one.get("responding") is False:
            return "not_responding"
        state = "pending"
    return state


def broker_has_identities(
    directory: Path,
    version: int,
    *,
    timeout_s: float,
    now_ms: Callable[[], int],
    edge: int | None = None,
) -> bool | None:
    """Wait until ``broker_applied`` (what provisioning or a revocation just produced): True
    once it has, False after ``timeout_s`` or at once when a broker it needs is stopped,
    None when there is nothing to wait for."""
    state = broker_wait(directory, version, timeout_s=timeout_s, now_ms=now_ms, edge=edge)
    return None if state is None else state == "applied"


def broker_wait(
    directory: Path,
    version: int,
    *,
    timeout_s: float,
    now_ms: Callable[[], int],
    edge: int | None = None,
) -> Applied | None:
    """``broker_has_identities`` with the reason when not applied (``pending`` after
    ``timeout_s``, ``not_responding`` at once)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = broker_applied(directory, version, now_ms=now_ms, edge=edge)
        if state != "pending" or time.monotonic() >= deadline:
            return state
        time.sleep(0.1)


async def broker_wait_async(
    directory: Path,
    version: int,
    *,
    timeout_s: float,
    now_ms: Callable[[], int],
    edge: int | None = None,
) -> Applied | None:
    """``broker_wait`` for the API, with the reason when not applied (``pending``
    after ``timeout_s``, ``not_responding`` at once): polls without blocking the event
    loop (the status file is a few hundred bytes, read in a worker thread)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = await anyio.to_thread.run_sync(
            functools.partial(broker_applied, directory, version, now_ms=now_ms, edge=edge)
        )
        if state != "pending" or time.monotonic() >= deadline:
            return state
        await anyio.sleep(0.1)


# --------------------------------------------------------------------------- verdict


def _ingest(beats: Iterable[GatewayHeartbeat], now_ms: int) -> Component:
    beats = list(beats)
    if not beats:
        return Component("unknown", "no gateway reports here", required=False)
    fresh = [b for b in beats if b.age_s(now_ms) <= STALE_AFTER_S]
    live = [b for b in fresh if b.connected]
    parts = []
    for b in beats:
        if b.age_s(now_ms) > STALE_AFTER_S:
            parts.append(f"{b.client_id}: silent for {b.age_s(now_ms):.0f} s")
        else:
            parts.append(f"{b.client_id}: {'connected' if b.connected else 'not connected'}")
    detail = "; ".join(parts)
    if not live:
        return Component("unavailable", f"no gateway is ingesting ({detail})")
    if len(live) < len(beats):
        return Component("degraded", detail)
    return Component("ok", detail)


def _supervised(supervisor: Mapping[str, Any] | None, now_ms: int) -> dict[str, Component]:
    """The supervisor's parts and broker, if a supervisor reports (and recently)."""
    if supervisor is None:
        return {}
    age = (now_ms - int(supervisor.get("updated_at_ms", 0))) / 1000
    if age > STALE_AFTER_S:
        return {"supervisor": Component("unavailable", f"silent for {age:.0f} s")}
    out: dict[str, Component] = {}
    broker = supervisor.get("broker")
    if isinstance(broker, dict):
        out["broker_process"] = _broker_component("private broker", broker)
    for i, edge in enumerate(supervisor.get("edges", []), start=1):
        if isinstance(edge, dict):  # the units' brokers (decision 0038): required as well
            out[f"edge_broker:{i}"] = _broker_component(f"edge broker {i}", edge)
    for part in supervisor.get("parts", []):
        if not isinstance(part, dict):
            continue
        optional = bool(part.get("optional"))
        state = str(part.get("state"))
        detail = f"{state}, {part.get('restarts', 0)} restarts"
        if part.get("last_exit") is not None:
            detail += f", last exit code {part.get('last_exit')}"
        if state == "running" and not part.get("crash_looping"):
            status: Status = "ok"
        else:
            status = "degraded" if optional or state == "running" else "unavailable"
            if part.get("crash_looping"):
                detail += ", crash-looping"
        out[f"part:{part.get('name')}"] = Component(status, detail, required=not optional)
    return out


def _broker_component(name: str, broker: Mapping[str, Any]) -> Component:
    running = broker.get("state") == "running"
    detail = f"{name} {broker.get('state')}, {broker.get('restarts', 0)} restarts"
    if running and broker.get("responding") is False:
        detail += (
            f", not responding: its process {broker.get('pid')} is stopped (SIGSTOP?); "
            "its units and provisioning for them wait until it runs again"
        )
        return Component("unavailable", detail)
    return Component("ok" if running else "unavailable", detail)


def evaluate(
    *,
    telemetry_store: str | None,
    state_database: str | None,
    command_broker: bool | None,
    gateways: Iterable[GatewayHeartbeat],
    supervisor: Mapping[str, Any] | None,
    now_ms: int,
) -> HealthReport:
    """The verdict. ``telemetry_store``/``state_database``: None when readable, else why
    not. ``command_broker``: whether this API's command service is connected to the
    broker (None: commands are off here)."""
    components = {
        "telemetry_store": Component(
            "ok" if telemetry_store is None else "unavailable",
            "readable" if telemetry_store is None else telemetry_store,
        ),
        "state_database": Component(
            "ok" if state_database is None else "unavailable",
            "reachable" if state_database is None else state_database,
        ),
    }
    if command_broker is None:
        components["broker"] = Component("unknown", "remote commands are off", required=False)
    else:
        components["broker"] = Component(
            "ok" if command_broker else "unavailable",
            "the command service is connected"
            if command_broker
            else "the command service cannot reach the broker",
        )
    components["ingest"] = _ingest(gateways, now_ms)
    components.update(_supervised(supervisor, now_ms))
    required = [c for c in components.values() if c.required]
    if any(c.status == "unavailable" for c in required):
        status: Literal["ok", "degraded", "unavailable"] = "unavailable"
    elif any(c.status in ("unavailable", "degraded") for c in components.values()):
        status = "degraded"
    else:
        status = "ok"
    return HealthReport(status, components)
