"""Alerts and trips as notifications (issue 13 section 8, decision 0017): the rules worker
publishes ``alert.*`` and ``trip.*`` events in the transaction that stores the alert or
trip, scoped to the account that held the vehicle.

* over a real store and state database (SQLite and PostgreSQL): every stored alert has
  exactly one ``alert.raised``, every ended one one ``alert.ended``, every trip one
  ``trip.finished``; a late upload that changes a stored trip gives ``trip.updated``
  naming the trip it replaces;
* end to end: a van's unit publishes a drive through a real Mosquitto to a real gateway
  process; the overspeed alert and the trip arrive live on ``/v1/stream`` and at a real
  local HTTP webhook receiver with a valid signature; an acknowledgement follows; another
  organization's stream and webhook get nothing of it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from gateway.api import ApiSettings
from gateway.broker import MosquittoProcess
from gateway.core.notify import verify_signature
from gateway.fleet.worker import RulesWorker, WorkerSettings
from gateway.notify import NotifySettings
from gateway.statedb import AccountRepository, StateDatabase
from gateway.statedb.events import EventLog, EventRecord
from gateway.statedb.fleet_log import AlertFilter, FleetLog, TripFilter
from gateway.statedb.fleets import FleetRepository
from gateway.store import IngestBatch, Tenure, open_store
from schemas import Sample
from tests.support.api import admin_client
from tests.support.gateway_process import GatewayProcess
from tests.support.ingest import publish
from tests.support.notify import Receiver, read_events
from tests.support.waiting import wait_until

VAN = "WFLEETNTF00000001"  # organization A's
TRUCK = "WFLEETNTF00000002"  # organization B's
T0 = 1_800_000_000_000
SPEED, IGNITION = "Vehicle.Speed", "Vehicle.LowVoltageSystemState"
LAT, LON = "Vehicle.CurrentLocation.Latitude", "Vehicle.CurrentLocation.Longitude"
ODO = "Vehicle.TraveledDistance"
PASSWORD = "fleet-notify-password-1"


def drive(vin: str, t0: int, step_ms: int = 5_000) -> list[Sample]:
    """Ignition on, a minute over 100 km/h, slowing, standing 4 min with the ignition on
    (the trip ends: parked), ignition off."""
    speeds = [0, 60, 90, 130, 130, 130, 130, 130, 130, 130, 130, 130, 90, 60, 60, 60, 20, 0]
    out, odo, t = [], 0.0, t0
    for i, v in enumerate(speeds):
        values: dict[str, Any] = {SPEED: float(v), ODO: odo, LAT: 48.0 + i * 0.001, LON: 11.5}
        if i == 0:
            values[IGNITION] = "ON"
        out.append(Sample(vin, i + 1, t, values))
        t, odo = t + step_ms, odo + v / 3.6 * step_ms / 1000
    for _ in range(24):
        out.append(Sample(vin, len(out) + 1, t, {SPEED: 0.0}))
        t += 10_000
    out.append(Sample(vin, len(out) + 1, t, {IGNITION: "OFF", SPEED: 0.0}))
    return out


# --- the worker's events, over the real databases --------------------------------------------


@pytest.fixture
def world(state_db_url: str, tmp_path: Path) -> Iterator[tuple[StateDatabase, Path, int]]:
    db = StateDatabase(state_db_url)
    db.upgrade()
    accounts = AccountRepository(db)
    org = accounts.create_account("organization", "vans", now=1)
    accounts.provision_vehicle(
        vin=VAN, account_id=org.id, label=None, mqtt_password_hash=None, provisioned_by=None, now=1
    )
    FleetRepository(db).set_rule_settings(
        org.id, {"rules": {"speed_limit_kmh": 100.0}, "trips": {}}, now=1
    )
    try:
        yield db, tmp_path / "telemetry.db", org.id
    finally:
        db.dispose()


def _worker(db: StateDatabase, path: Path, clock: Callable[[], int]) -> RulesWorker:
    settings = WorkerSettings(partitions=4, settle_ms=0, tick_ms=10**12)
    return RulesWorker(
        FleetLog(db), FleetRepository(db), lambda: open_store(path, readonly=True), settings, clock
    )


def _commit(path: Path, samples: list[Sample], at: int) -> None:
    store = open_store(path)
    try:
        tenures = {s.vin: Tenure(1, 0) for s in samples}
        store.commit(IngestBatch(received_at=at, samples=samples, tenures=tenures))
    finally:
        store.close()


def _events(db: StateDatabase, prefix: str) -> list[EventRecord]:
    return [e for e in EventLog(db).after(0, limit=10_000) if e.type.startswith(prefix)]


def test_every_stored_alert_and_trip_is_published_once_in_its_account(
    world: tuple[StateDatabase, Path, int],
) -> None:
    db, path, org = world
    now = [T0 + 3_600_000]
    _commit(path, drive(VAN, T0), now[0])
    w = _worker(db, path, lambda: now[0])
    assert w.step() > 0
    log = FleetLog(db)
    alerts = log.alerts(AlertFilter(), before=None, limit=100)
    trips = log.trips(TripFilter(), before=None, limit=100)
    assert {a.kind for a in alerts} >= {"overspeed", "ignition", "harsh_acceleration"}
    assert len(trips) == 1
    events = _events(db, "alert.")
    raised = Counter(e.data["alert_id"] for e in events if e.type == "alert.raised")
    ended = Counter(e.data["alert_id"] for e in events if e.type == "alert.ended")
    assert raised == Counter({a.id: 1 for a in alerts})
    assert ended == Counter({a.id: 1 for a in alerts if a.end_at is not None})
    assert {e.account_id for e in events} == {org}
    overspeed = next(a for a in alerts if a.kind == "overspeed")
    (event,) = [e for e in events if e.type == "alert.raised" and e.data["kind"] == "overspeed"]
    assert event.data["vin"] == VAN
    assert event.data["start_at"] == overspeed.start_at
    (finished,) = _events(db, "trip.")
    assert finished.type == "trip.finished"
    assert finished.account_id == org
    assert finished.data["trip_id"] == trips[0].id
    assert finished.data["distance_m"] == pytest.approx(trips[0].distance_m)
    # a person's actions are events too, once
    log.acknowledge(overspeed.id, user_id=1, now=now[0])
    log.acknowledge(overspeed.id, user_id=1, now=now[0] + 1)
    log.clear(overspeed.id, user_id=1, now=now[0] + 2)
    actions = [(e.type, e.actor_user_id) for e in _events(db, "alert.") if e.data.get("by")]
    assert actions == [("alert.acknowledged", 1), ("alert.cleared", 1)]


def test_a_late_upload_that_changes_a_trip_publishes_trip_updated(
    world: tuple[StateDatabase, Path, int],
) -> None:
    """The first samples in motion arrive after the trip was stored (store-and-forward):
    the recompute stores a longer trip, published as ``trip.updated`` naming the one it
    replaces."""
    db, path, _ = world
    samples = drive(VAN, T0)
    held_back = samples[1:3]
    now = [T0 + 3_600_000]
    w = _worker(db, path, lambda: now[0])
    _commit(path, [s for s in samples if s not in held_back], now[0])
    w.step()
    (first,) = FleetLog(db).trips(TripFilter(), before=None, limit=10)
    now[0] += 1_000
    _commit(path, held_back, now[0])
    w.step()
    (second,) = FleetLog(db).trips(TripFilter(), before=None, limit=10)
    assert second.start_at < first.start_at
    assert second.distance_m > first.distance_m
    events = _events(db, "trip.")
    assert [e.type for e in events] == ["trip.finished", "trip.updated"]
    assert events[1].data["trip_id"] == second.id
    assert events[1].data["replaces"] == first.id
    assert events[1].data["distance_m"] == pytest.approx(second.distance_m)


# --- end to end: broker, gateway, API, stream, webhook -----------------------------------------


class Org:
    def __init__(self, api: TestClient, admin: dict[str, str], name: str) -> None:
        self.api = api
        r = api.post("/v1/accounts", json={"kind": "organization", "name": name}, headers=admin)
        self.id: int = r.json()["id"]
        email = f"manager-{name}@example.com"
        user = {"email": email, "name": "m", "role": "fleet_manager", "account_id": self.id,
                "password": PASSWORD}  # fmt: skip
        assert api.post("/v1/users", json=user, headers=admin).status_code == 201
        form = {"grant_type": "password", "username": email, "password": PASSWORD}
        token = api.post("/v1/auth/token", data=form).json()["access_token"]
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, url: str, **kw: Any) -> Any:
        return self.api.request(method, url, headers=self.headers, **kw)


@pytest.fixture(params=["thread", "process"])
def live(
    mosquitto: MosquittoProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[TestClient, Org, Org]]:
    """The API with the rules as its thread, or beside a ``telematics fleet-worker``
    process as ``telematics up`` runs it (decision 0029: the alerts then reach the stream
    and the webhooks from another process)."""
    data = tmp_path / "data"
    data.mkdir()
    gateway = GatewayProcess(mosquitto, data, "gateway-notify")
    worker = WorkerSettings(partitions=4, settle_ms=500, tick_ms=300, poll_s=0.05)
    notify = NotifySettings(webhook_allow_private_targets=True, webhook_poll_s=0.05)
    in_api = worker if request.param == "thread" else None
    settings = ApiSettings(db_path=data / "telemetry.db", fleet_worker=in_api, notify=notify)
    with contextlib.ExitStack() as stack:
        api = stack.enter_context(admin_client(settings))
        if request.param == "process":
            argv = [sys.executable, "-m", "gateway", "fleet-worker", "--data-dir", str(data)]
            process = subprocess.Popen([*argv, "--nice", "0", "--log-level", "WARNING"])
            stack.callback(process.wait, 30)
            stack.callback(process.terminate)
        admin = {"Authorization": api.headers.pop("Authorization")}
        a, b = Org(api, admin, "a"), Org(api, admin, "b")
        for org, vin in ((a, VAN), (b, TRUCK)):
            assert org.call("POST", "/v1/vehicles", json={"vin": vin}).status_code == 201
            rules = {"rules": {"speed_limit_kmh": 100.0, "overspeed_min_ms": 1_000},
                     "trips": {"min_duration_ms": 1_000, "min_distance_m": 10.0,
                               "parking_ms": 3_000}}  # fmt: skip
            r = org.call("PUT", f"/v1/accounts/{org.id}/rule-settings", json=rules)
            assert r.status_code == 200, r.text
        gateway.start()
        try:
            yield api, a, b
        finally:
            gateway.stop()


def _publish_drive(broker: MosquittoProcess, vin: str, t0: int) -> None:
    for s in drive(vin, t0, step_ms=1_000)[:24]:  # through 4 s standing: the trip ends
        body = orjson.dumps({"vin": s.vin, "seq": s.seq, "ts": s.ts, "signals": s.signals})
        publish(broker, f"v1/vehicles/{vin}/telemetry", body)


def _kind(kind: str, type_: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == type_ and e["data"]["data"].get("kind", kind) == kind


def test_an_alert_reaches_the_stream_and_a_signed_webhook_and_no_other_organization(
    live: tuple[TestClient, Org, Org], mosquitto: MosquittoProcess
) -> None:
    api, a, b = live
    t0 = time.time_ns() // 1_000_000 - 60_000
    with Receiver() as hook_a, Receiver() as hook_b:
        events = ["alert.*", "trip.finished"]
        made = a.call("POST", "/v1/webhooks", json={"url": hook_a.url, "events": events})
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        assert b.call("POST", "/v1/webhooks", json={"url": hook_b.url}).status_code == 201
        with api.stream("GET", "/v1/stream", headers=a.headers) as stream:
            _publish_drive(mosquitto, VAN, t0)
            seen = read_events(stream, lambda e: e["event"] == "trip.finished")
        raised = next(e for e in seen if _kind("overspeed", "alert.raised")(e))
        alert = raised["data"]["data"]
        assert alert["vin"] == VAN
        assert alert["severity"] in ("warning", "critical")
        assert {e["data"]["data"]["vin"] for e in seen} == {VAN}
        r = a.call("POST", f"/v1/alerts/{alert['alert_id']}/acknowledge")
        assert r.status_code == 200, r.text

        def delivered(type_: str) -> list[tuple[dict[str, str], bytes]]:
            return [(h, body) for h, body in hook_a.requests
                    if h["telematics-event-type"] == type_]  # fmt: skip

        wait_until(lambda: delivered("alert.acknowledged") and delivered("trip.finished"),
                   timeout=20, what="the webhook deliveries")  # fmt: skip
        bodies = [orjson.loads(body) for _, body in delivered("alert.raised")]
        assert raised["data"] in bodies  # the same JSON as on the stream
        for headers, body in hook_a.requests:
            assert verify_signature(
                headers["telematics-signature"], body, secret, now_s=int(time.time())
            )
            assert not verify_signature(
                headers["telematics-signature"], body + b" ", secret, now_s=int(time.time())
            )
        assert {h["telematics-event-type"].split(".")[0] for h, _ in hook_a.requests} <= {
            "alert", "trip",
        }  # fmt: skip
        # organization B: its own truck's alert, and nothing of A's, on its stream (all
        # of the log replayed) and at its webhook
        ignition = {"vin": TRUCK, "seq": 1, "ts": t0, "signals": {IGNITION: "ON", SPEED: 0.0}}
        publish(mosquitto, f"v1/vehicles/{TRUCK}/telemetry", orjson.dumps(ignition))
        headers = {**b.headers, "Last-Event-ID": "0"}
        with api.stream("GET", "/v1/stream", headers=headers) as stream:
            theirs = read_events(stream, _kind("ignition", "alert.raised"))
        assert {e["data"]["data"]["vin"] for e in theirs} == {TRUCK}
        wait_until(lambda: hook_b.requests, timeout=20, what="B's own delivery")
        assert all(orjson.loads(body)["data"]["vin"] == TRUCK for _, body in hook_b.requests)
