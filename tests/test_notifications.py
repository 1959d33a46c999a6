"""Bulk commands and notifications end to end (issue 13, sections 7 and 8): the API with
its command service on a real Mosquitto, the state database on SQLite and PostgreSQL,
units answering over MQTT (paho), a real HTTP server receiving webhooks.

* a job to a set with online units, an offline unit that comes online within the time to
  live, one that never does and one that never reported ends with the right counts;
* cancelling a job cancels exactly what was not sent;
* the live stream shows the job's updates as they happen and resumes with Last-Event-ID;
* a webhook receiver gets signed deliveries (checked with the function in
  docs/webhooks.md), a failing one gets retries, a tampered delivery fails the check;
* another organization sees none of it: its job and vehicles are 404, its stream empty.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from gateway.api import ApiSettings
from gateway.broker import MosquittoProcess
from gateway.commands.service import CommandSettings
from gateway.core.batching import StatusChange
from gateway.core.notify import UnacceptableUrl, check_webhook_url, verify_signature
from gateway.notify import NotifySettings
from gateway.settings import MqttSettings
from gateway.store import IngestBatch, open_store
from schemas import Sample, StatusState
from schemas.commands import command_result_topic
from tests.support.api import admin_client, bearer
from tests.support.notify import Receiver, read_events
from tests.support.waiting import wait_until

PASSWORD = "notify-password-1"
ONLINE = [f"WNTFYJB{n:010d}" for n in range(1, 4)]
LATE = "WNTFYJB0000000004"  # offline, comes online within the time to live
GONE = "WNTFYJB0000000005"  # offline for good
SILENT = "WNTFYJB0000000006"  # provisioned, never reported
FOREIGN = "WNTFYJB0000000007"  # organization B's


# --- the world -------------------------------------------------------------------------------


class Units:
    """Units that answer every command to an online VIN: accepted, then succeeded."""

    def __init__(self, broker: MosquittoProcess, online: set[str]) -> None:
        self.online = online
        self.received: list[str] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="notify-units", protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("v1/vehicles/+/commands", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        command = orjson.loads(message.payload)
        vin = command["vin"]
        self.received.append(vin)
        if vin not in self.online:
            return
        for status in ("accepted", "succeeded"):
            body = {"command_id": command["command_id"], "vin": vin, "status": status,
                    "ts": int(time.time() * 1000)}  # fmt: skip
            client.publish(command_result_topic(vin), orjson.dumps(body), qos=1)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class World:
    client: TestClient
    db_path: Path
    broker: MosquittoProcess
    headers: dict[str, dict[str, str]]
    accounts: dict[str, int]

    def as_(self, who: str, method: str, url: str, **kw: Any) -> Any:
        headers = {**self.headers[who], **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)

    def report(self, vin: str, state: StatusState) -> None:
        store = open_store(self.db_path)
        now = int(time.time() * 1000)
        try:
            store.commit(
                IngestBatch(
                    received_at=now,
                    samples=[Sample(vin, 1, now, {"Vehicle.Speed": 0.0})],
                    statuses=[StatusChange(vin, state, now)],
                )
            )
        finally:
            store.close()


@pytest.fixture
def world(mosquitto: MosquittoProcess, state_db_url: str, tmp_path: Path) -> Iterator[World]:
    commands = CommandSettings(
        state_db_url=state_db_url, mqtt=MqttSettings(host=mosquitto.host, port=mosquitto.port)
    )
    notify = NotifySettings(
        webhook_allow_private_targets=True,  # the receiver is on 127.0.0.1
        webhook_retry_base_s=0.2,
        webhook_poll_s=0.05,
    )
    settings = ApiSettings(db_path=tmp_path / "telemetry.db", commands=commands, notify=notify)
    with admin_client(settings) as client:
        service = client.app.state.commands  # type: ignore[attr-defined]
        wait_until(service.connected.is_set, what="the command service to connect")
        w = World(client, settings.db_path, mosquitto, {"admin": dict(client.headers)}, {})
        _populate(w)
        yield w


def _populate(w: World) -> None:
    for name in ("A", "B"):
        r = w.as_("admin", "POST", "/v1/accounts", json={"kind": "organization", "name": name})
        w.accounts[name] = r.json()["id"]
        r = w.as_("admin", "POST", "/v1/users", json={
            "email": f"manager-{name.lower()}@example.com", "name": name,
            "role": "fleet_manager", "account_id": w.accounts[name], "password": PASSWORD,
        })  # fmt: skip
        assert r.status_code == 201, r.text
        w.headers[name] = bearer(r.json()["id"], "fleet_manager", w.accounts[name])
    for vin in [*ONLINE, LATE, GONE, SILENT, FOREIGN]:
        account = w.accounts["B" if vin == FOREIGN else "A"]
        r = w.as_("admin", "POST", "/v1/vehicles", json={"vin": vin, "account_id": account})
        assert r.status_code == 201, r.text
    for vin in [*ONLINE, FOREIGN]:
        w.report(vin, StatusState.ONLINE)
    for vin in (LATE, GONE):
        w.report(vin, StatusState.OFFLINE)


# --- reading the stream ----------------------------------------------------------------------


def finished(job_id: int) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "command_job.finished" and e["data"]["data"]["job_id"] == job_id


# --- the tests -------------------------------------------------------------------------------


def test_a_bulk_command_with_offline_units_ends_with_the_right_counts(world: World) -> None:
    units = Units(world.broker, {*ONLINE, LATE})
    try:
        with Receiver() as receiver:
            hook = world.as_("A", "POST", "/v1/webhooks",
                             json={"url": receiver.url, "events": ["command_job.*"]})  # fmt: skip
            assert hook.status_code == 201, hook.text
            with world.client.stream("GET", "/v1/stream", headers=world.headers["A"]) as stream:
                job, events = _run_job(world, units, stream)
            # the webhook got the job's two events, signed
            wait_until(lambda: len(receiver.requests) >= 2, what="two deliveries")
            check = documented_check()
            secret = hook.json()["secret"]
            for headers, body in receiver.requests:
                assert check(headers["telematics-signature"], body, secret, int(time.time()))
            types = sorted(orjson.loads(body)["type"] for _, body in receiver.requests)
            assert types == ["command_job.created", "command_job.finished"]
    finally:
        units.stop()
    final = world.as_("A", "GET", f"/v1/command-jobs/{job['id']}").json()
    assert final["status"] == "finished"
    counts = {k: v for k, v in final["counts"].items() if v}
    assert counts == {"succeeded": 4, "expired": 1, "refused": 1}
    assert sorted(units.received) == sorted([*ONLINE, LATE])  # never the offline one
    updates = [e for e in events if e["event"] == "command.updated"]
    assert {e["data"]["data"]["job_id"] for e in updates} == {job["id"]}
    assert {e["data"]["data"]["vin"] for e in updates} == {*ONLINE, LATE, GONE}
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    assert events[-1]["data"]["data"]["counts"]["succeeded"] == 4


def _run_job(world: World, units: Units, stream: Any) -> tuple[dict[str, Any], list[Any]]:
    """Send the job, bring the late unit online, read the stream until the job ends."""
    r = world.as_("A", "POST", "/v1/command-jobs", json={
        "type": "lock", "vins": [*ONLINE, LATE, GONE, SILENT], "ttl_s": 4,
    })  # fmt: skip
    assert r.status_code == 201, r.text
    job: dict[str, Any] = r.json()
    assert job["total"] == 6
    assert job["counts"]["refused"] == 1
    assert job["refusals"] == [
        {"vin": SILENT, "reason": "never_reported", "detail": "no data from it yet"}
    ]
    assert job["status"] == "running"
    wait_until(lambda: len(units.received) >= 3, what="the online units' commands")
    # the offline unit comes online: its queued command goes out then
    world.report(LATE, StatusState.ONLINE)
    publish_status(world, LATE)
    return job, read_events(stream, finished(job["id"]))


def publish_status(world: World, vin: str) -> None:
    """What the unit sends when it connects: the command service acts on it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"unit-{vin}")
    client.connect(world.broker.host, world.broker.port)
    client.loop_start()
    client.publish(f"v1/vehicles/{vin}/status", b'{"state": "online"}', qos=1).wait_for_publish()
    client.loop_stop()
    client.disconnect()


def test_cancel_stops_what_was_not_sent(world: World) -> None:
    r = world.as_("A", "POST", "/v1/command-jobs",
                  json={"type": "lock", "vins": [LATE, GONE, ONLINE[0]], "ttl_s": 60})  # fmt: skip
    assert r.status_code == 201, r.text
    job = r.json()
    wait_until(
        lambda: (
            world.as_("A", "GET", f"/v1/command-jobs/{job['id']}").json()["counts"]["sent"] == 1
        ),
        what="the online vehicle's command to be sent",
    )
    r = world.as_("A", "POST", f"/v1/command-jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["counts"]["cancelled"] == 2
    assert after["counts"]["sent"] == 1  # already out: it runs to its end
    assert after["cancelled_at"] is not None
    assert after["status"] == "running"
    # the list shows it, newest first, in the API's one list shape
    page = world.as_("A", "GET", "/v1/command-jobs?limit=1").json()
    assert set(page) == {"items", "next"}
    assert page["items"][0]["id"] == job["id"]


def test_a_job_to_a_fleet_takes_its_vehicles_and_only_for_its_organization(
    world: World,
) -> None:
    fleet = world.as_("A", "POST", "/v1/fleets", json={"name": "night vans"}).json()
    for vin in (LATE, GONE):
        added = world.as_("A", "PUT", f"/v1/fleets/{fleet['id']}/vehicles/{vin}")
        assert added.status_code < 300, added.text
    r = world.as_("A", "POST", "/v1/command-jobs",
                  json={"type": "lock", "fleet_id": fleet["id"], "ttl_s": 60})  # fmt: skip
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["total"], job["target"]) == (2, {"fleet_id": fleet["id"]})
    cancelled = world.as_("A", "POST", f"/v1/command-jobs/{job['id']}/cancel").json()
    assert cancelled["counts"]["cancelled"] == 2
    # another organization's fleet is as missing as one that does not exist
    foreign = world.as_("B", "POST", "/v1/command-jobs",
                        json={"type": "lock", "fleet_id": fleet["id"]})  # fmt: skip
    assert foreign.status_code == 404, foreign.text
    assert foreign.json()["error"]["code"] == "fleet_not_found"


def test_a_job_to_an_empty_fleet_is_refused_as_such(world: World) -> None:
    fleet = world.as_("A", "POST", "/v1/fleets", json={"name": "empty"}).json()
    r = world.as_("A", "POST", "/v1/command-jobs", json={"type": "lock", "fleet_id": fleet["id"]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "fleet_has_no_vehicles"
    assert r.json()["error"]["details"][0]["loc"] == ["body", "fleet_id"]
    # the hint names the route that adds a vehicle (it named a POST that does not exist)
    hint = f"PUT /v1/fleets/{fleet['id']}/vehicles/{{vin}}"
    assert hint in r.json()["error"]["message"], r.text
    route = world.client.app.openapi()["paths"]["/v1/fleets/{fleet_id}/vehicles/{vin}"]  # type: ignore[attr-defined]
    assert "put" in route
    assert world.as_("A", "GET", "/v1/command-jobs").json()["items"] == []


def test_the_fleet_list_counts_each_fleets_vehicles(world: World) -> None:
    """Found by a fleet manager's trial: GET /v1/fleets said vehicle_count 0 for a fleet
    of 3 (only GET /v1/fleets/{id} counted), and PATCH answered 0 too."""
    vans = world.as_("A", "POST", "/v1/fleets", json={"name": "vans"}).json()
    empty = world.as_("A", "POST", "/v1/fleets", json={"name": "empty", "kind": "group"}).json()
    for vin in ONLINE[:2]:
        r = world.as_("A", "PUT", f"/v1/fleets/{vans['id']}/vehicles/{vin}")
        assert r.status_code == 204, r.text
    listed = {
        f["name"]: f["vehicle_count"] for f in world.as_("A", "GET", "/v1/fleets").json()["items"]
    }
    assert listed == {"vans": 2, "empty": 0}
    assert world.as_("A", "GET", f"/v1/fleets/{vans['id']}").json()["vehicle_count"] == 2
    renamed = world.as_("A", "PATCH", f"/v1/fleets/{vans['id']}", json={"name": "vans 2"})
    assert renamed.json()["vehicle_count"] == 2, renamed.text
    assert world.as_("A", "GET", f"/v1/fleets/{empty['id']}").json()["vehicle_count"] == 0


def test_a_job_every_vehicle_refuses_is_finished_on_the_stream_too(world: World) -> None:
    """Found by a fleet manager's trial: a job whose every vehicle was refused (unlock to
    moving vans) was finished at birth but published only command_job.created, so a
    client waiting for command_job.finished waited for ever."""
    with world.client.stream("GET", "/v1/stream", headers=world.headers["A"]) as stream:
        r = world.as_("A", "POST", "/v1/command-jobs", json={"type": "lock", "vins": [SILENT]})
        assert r.status_code == 201, r.text
        job = r.json()
        assert (job["status"], job["counts"]["refused"]) == ("finished", 1)
        events = read_events(stream, finished(job["id"]), timeout_s=15)
    kinds = [e["event"] for e in events if e["data"]["data"].get("job_id") == job["id"]]
    assert kinds == ["command_job.created", "command_job.finished"]
    assert events[-1]["data"]["data"]["counts"]["refused"] == 1


def test_a_retried_job_with_its_idempotency_key_is_the_same_job(world: World) -> None:
    body = {"type": "lock", "vins": [GONE, LATE], "ttl_s": 60}
    key = {"Idempotency-Key": "nightly-lock-2026-12-06"}
    first = world.as_("A", "POST", "/v1/command-jobs", json=body, headers=key)
    assert first.status_code == 201, first.text
    # the same body in another key order and spelling of the same values: the same job
    again = world.as_("A", "POST", "/v1/command-jobs", headers=key,
                      json={"ttl_s": 60.0, "vins": [GONE, LATE], "type": "lock"})  # fmt: skip
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"]
    # another body under the key: refused, with the reason, nothing made
    other = world.as_("A", "POST", "/v1/command-jobs", json={**body, "vins": [GONE]}, headers=key)
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # the key is the organization's: another organization may use the same string
    theirs = world.as_("B", "POST", "/v1/command-jobs", headers=key,
                       json={"type": "lock", "vins": [FOREIGN], "ttl_s": 60})  # fmt: skip
    assert theirs.status_code == 201, theirs.text
    ids = [j["id"] for j in world.as_("A", "GET", "/v1/command-jobs").json()["items"]]
    assert ids == [first.json()["id"]]
    # without a key, a second job
    assert world.as_("A", "POST", "/v1/command-jobs", json=body).status_code == 201
    for job in (first.json(), theirs.json()):
        who = "A" if job is first.json() else "B"
        world.as_(who, "POST", f"/v1/command-jobs/{job['id']}/cancel")


def test_a_colleague_cannot_use_up_your_idempotency_key(world: World) -> None:
    """Security review 2 (decision 0023): keys were per organization, so a colleague (a
    second manager, or a driver of the account) who used your key first had your job
    refused. Keys are per user now."""
    r = world.as_("admin", "POST", "/v1/users", json={
        "email": "other-manager-a@example.com", "name": "A2", "role": "fleet_manager",
        "account_id": world.accounts["A"], "password": PASSWORD,
    })  # fmt: skip
    assert r.status_code == 201, r.text
    colleague = bearer(r.json()["id"], "fleet_manager", world.accounts["A"])
    key = {"Idempotency-Key": "nightly-lock"}
    theirs = world.client.post(
        "/v1/command-jobs", json={"type": "unlock", "vins": [GONE], "ttl_s": 60},
        headers={**colleague, **key},
    )  # fmt: skip
    assert theirs.status_code == 201, theirs.text
    mine = world.as_("A", "POST", "/v1/command-jobs", headers=key,
                     json={"type": "lock", "vins": [GONE, LATE], "ttl_s": 60})  # fmt: skip
    assert mine.status_code == 201, mine.text
    assert mine.json()["id"] != theirs.json()["id"]
    for job, headers in ((mine.json(), world.headers["A"]), (theirs.json(), colleague)):
        world.client.post(f"/v1/command-jobs/{job['id']}/cancel", headers=headers)


def test_the_same_key_at_the_same_moment_makes_one_job(world: World) -> None:
    body = {"type": "lock", "vins": [GONE], "ttl_s": 60}
    key = {"Idempotency-Key": "raced"}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(
            lambda _: world.as_("A", "POST", "/v1/command-jobs", json=body, headers=key),
            range(4)))  # fmt: skip
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 201]
    assert len({r.json()["id"] for r in answers}) == 1, [r.text for r in answers]


def test_the_stream_resumes_with_last_event_id(world: World) -> None:
    r = world.as_("A", "POST", "/v1/command-jobs",
                  json={"type": "lock", "vins": [LATE, GONE], "ttl_s": 60})  # fmt: skip
    job = r.json()
    world.as_("A", "POST", f"/v1/command-jobs/{job['id']}/cancel")
    headers = {**world.headers["A"], "Last-Event-ID": "0"}
    with world.client.stream("GET", "/v1/stream", headers=headers) as stream:
        everything = read_events(stream, finished(job["id"]))
    assert [e["event"] for e in everything] == [
        "command_job.created", "command.updated", "command.updated", "command_job.finished",
    ]  # fmt: skip
    middle = everything[1]["id"]
    headers = {**world.headers["A"], "Last-Event-ID": str(middle)}
    with world.client.stream("GET", "/v1/stream", headers=headers) as stream:
        resumed = read_events(stream, finished(job["id"]))
    assert [e["id"] for e in resumed] == [e["id"] for e in everything[2:]]
    # an id this log never issued: reset, then live
    headers = {**world.headers["A"], "Last-Event-ID": str(10**9)}
    with world.client.stream("GET", "/v1/stream", headers=headers) as stream:
        first = next(line for line in stream.iter_lines() if line.startswith("event: "))
    assert first == "event: reset"


def test_another_organization_sees_none_of_it(world: World) -> None:
    r = world.as_("A", "POST", "/v1/command-jobs",
                  json={"type": "lock", "vins": [GONE], "ttl_s": 60})  # fmt: skip
    job_a = r.json()
    # B: A's job is missing, A's vehicle in a job is missing (nothing created), A's webhooks
    assert world.as_("B", "GET", f"/v1/command-jobs/{job_a['id']}").status_code == 404
    assert world.as_("B", "POST", f"/v1/command-jobs/{job_a['id']}/cancel").status_code == 404
    r = world.as_("B", "POST", "/v1/command-jobs",
                  json={"type": "lock", "vins": [FOREIGN, GONE]})  # fmt: skip
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "vehicle_not_found"
    assert r.json()["error"]["details"][0]["loc"] == ["body", "vins", 1]
    missing = world.as_("B", "POST", "/v1/command-jobs",
                        json={"type": "lock", "vins": ["WNTFYJB0000000099"]})  # fmt: skip
    assert missing.json()["error"]["code"] == r.json()["error"]["code"]
    assert world.as_("B", "GET", "/v1/command-jobs").json()["items"] == []
    # B's own job, then B's stream from the start: only B's events
    job_b = world.as_("B", "POST", "/v1/command-jobs",
                      json={"type": "lock", "vins": [FOREIGN], "ttl_s": 60}).json()  # fmt: skip
    world.as_("B", "POST", f"/v1/command-jobs/{job_b['id']}/cancel")
    world.as_("A", "POST", f"/v1/command-jobs/{job_a['id']}/cancel")
    headers = {**world.headers["B"], "Last-Event-ID": "0"}
    with world.client.stream("GET", "/v1/stream", headers=headers) as stream:
        seen = read_events(stream, lambda e: e["event"] == "command_job.created"
                           and e["data"]["data"]["job_id"] == job_b["id"])  # fmt: skip
    assert {e["data"]["data"]["job_id"] for e in seen} == {job_b["id"]}


def test_a_failing_receiver_gets_retries(world: World) -> None:
    with Receiver(fail=2) as receiver:
        hook = world.as_("A", "POST", "/v1/webhooks", json={"url": receiver.url}).json()
        r = world.as_("A", "POST", f"/v1/webhooks/{hook['id']}/test")
        assert r.status_code == 202, r.text
        delivery = r.json()
        # one test at a time: the button cannot queue a flood at someone's URL
        again = world.as_("A", "POST", f"/v1/webhooks/{hook['id']}/test")
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "test_delivery_pending"

        def log() -> dict[str, Any]:
            page = world.as_("A", "GET", f"/v1/webhooks/{hook['id']}/deliveries").json()
            return next(d for d in page["items"] if d["id"] == delivery["id"])

        wait_until(lambda: log()["status"] == "delivered", what="the third attempt")
        assert log()["attempts"] == 3
        assert len(receiver.requests) == 3
        bodies = {body for _, body in receiver.requests}
        assert len(bodies) == 1  # every attempt the same bytes, each signed
        for headers, body in receiver.requests:
            signature = headers["telematics-signature"]
            assert verify_signature(signature, body, hook["secret"], now_s=int(time.time()))
            assert headers["telematics-event-type"] == "webhook.test"
        # once it ended, another test may go
        assert world.as_("A", "POST", f"/v1/webhooks/{hook['id']}/test").status_code == 202
    # the secret is not shown again
    assert "secret" not in world.as_("A", "GET", "/v1/webhooks").json()["items"][0]


# --- the documented check ----------------------------------------------------------------------


def documented_check() -> Callable[[str, bytes, str, int], bool]:
    """The receiver's check as docs/webhooks.md prints it, executed."""
    text = (Path(__file__).parents[1] / "docs" / "webhooks.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    check: Callable[[str, bytes, str, int], bool] = namespace["verify"]
    return check


def test_a_tampered_delivery_fails_the_documented_check() -> None:
    from gateway.core.notify import signature_header

    check = documented_check()
    body, secret, now = b'{"id": 7, "type": "command.updated"}', "whsec_x", 1_700_000_000
    header = signature_header(secret, now, body)
    assert check(header, body, secret, now)
    assert check(header, body, secret, now + 299)
    assert not check(header, body.replace(b"7", b"8"), secret, now)  # body changed
    assert not check(header, body, "whsec_y", now)  # another secret
    assert not check(header.replace(f"t={now}", f"t={now + 1}"), body, secret, now)
    assert not check(header, body, secret, now + 301)  # replayed too late
    assert not check("v1=" + header.split("v1=")[1], body, secret, now)  # no timestamp
    # the gateway's own verifier agrees
    assert verify_signature(header, body, secret, now_s=now)
    assert not verify_signature(header, body + b" ", secret, now_s=now)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x",
        "http://127.0.0.1:8080/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/x",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        # IPv6 forms that reach a private IPv4 address (found by an outside review): NAT64
        # of the cloud metadata address, IPv4-compatible, IPv4-translated, 6to4, site-local
        "http://[64:ff9b::a9fe:a9fe]/x",
        "http://[64:ff9b:1::a9fe:a9fe]/x",
        "http://[::7f00:1]/x",
        "http://[::ffff:0:a9fe:a9fe]/x",
        "http://[2002:a9fe:a9fe::1]/x",
        "http://[fec0::1]/x",
        "https://user:pw@example.com/x",
        "http:///x",
    ],
)
def test_unsafe_webhook_urls_are_refused_by_default(url: str) -> None:
    with pytest.raises(UnacceptableUrl):
        check_webhook_url(url, resolved=None, allow_private=False)
    if url.startswith("http://1") or "[" in url:
        check_webhook_url(url, resolved=None, allow_private=True)  # the operator's choice


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    with pytest.raises(UnacceptableUrl) as refused:
        check_webhook_url("https://hooks.example.com/x", resolved=["93.184.215.14", "10.1.2.3"],
                          allow_private=False)  # fmt: skip
    # the answer does not name the address: it would map the installation's internal DNS
    assert "10.1.2.3" not in str(refused.value)
    # public IPv6, and a NAT64 or 6to4 address of a public IPv4 address, are fine
    for address in ("2606:4700::6810:84e5", "64:ff9b::5db8:d70e", "2002:5db8:d70e::1"):
        check_webhook_url("https://hooks.example.com/x", resolved=[address], allow_private=False)
    check_webhook_url("https://hooks.example.com/x", resolved=["93.184.215.14"],
                      allow_private=False)  # fmt: skip


def test_the_api_refuses_a_private_webhook_url_by_default(tmp_path: Path) -> None:
    with admin_client(ApiSettings(db_path=tmp_path / "telemetry.db")) as client:
        account = client.post("/v1/accounts", json={"kind": "organization", "name": "o"}).json()
        for url in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/", "file:///etc/x"):
            r = client.post("/v1/webhooks", json={"url": url, "account_id": account["id"]})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"][0]["loc"] == ["body", "url"]
        r = client.post(
            "/v1/webhooks", json={"url": "https://hooks.example.com/x", "account_id": account["id"]}
        )
        assert r.status_code == 201, r.text
        assert r.json()["secret"].startswith("whsec_")
        assert r.headers["Cache-Control"] == "no-store"


def test_another_api_process_streams_the_updates_this_one_records(
    world: World, state_db_url: str
) -> None:
    """Two API processes share the state database: a job made and run by one is seen,
    live, on a stream of the other (which has no command service at all)."""
    other = ApiSettings(db_path=world.db_path, state_db_url=state_db_url)
    with (
        admin_client(other) as second,
        second.stream("GET", "/v1/stream", headers=world.headers["A"]) as stream,
    ):
        r = world.as_("A", "POST", "/v1/command-jobs",
                      json={"type": "lock", "vins": [GONE], "ttl_s": 60})  # fmt: skip
        job = r.json()
        world.as_("A", "POST", f"/v1/command-jobs/{job['id']}/cancel")
        events = read_events(stream, finished(job["id"]))
    assert [e["event"] for e in events] == [
        "command_job.created", "command.updated", "command_job.finished",
    ]  # fmt: skip
