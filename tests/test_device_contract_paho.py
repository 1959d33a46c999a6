"""The device contract, tried by an independent unit: paho-mqtt, written from
``docs/device-contract.md`` alone (this module imports nothing from ``schemas`` or the
gateway's code), against a real ``telematics up``: its closed Mosquitto, gateway and API.

The unit is provisioned through the API like a customer's car, logs in with its own
credentials, publishes samples, batches, events, status and bad input, reads its feedback
topic, receives signed commands and checks their signatures with its own implementation of
the spec's algorithm (``cryptography`` directly), answers them, and every outcome is checked
through the HTTP API, as the firmware team's integration test would.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.broker import free_port
from tests.support.canonical import canonical_float
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

ADMIN_PASSWORD = "paho-admin-password-1"
OWNER = ("owner@paho.test", "paho-owner-password-1")
#: the installation's silence limit in this test (the spec's default is 600 s)
OFFLINE_AFTER_S = 4
REPO = Path(__file__).resolve().parents[1]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- the spec's signature algorithm, implemented again from section 11 -------------------------

DOMAIN_TAG = b"telematics-command-v1\x00"
SIGNED_MEMBERS = ("command_id", "counter", "expires_at", "issued_at", "params", "type", "vin")


def canonical_json(value: Any) -> str:
    """Section 11: compact JSON, names sorted at every level, UTF-8 as is."""
    if isinstance(value, dict):
        members = (f"{canonical_json(k)}:{canonical_json(value[k])}" for k in sorted(value))
        return "{" + ",".join(members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    if isinstance(value, float):
        return canonical_float(value)
    return json.dumps(value, ensure_ascii=False)


def canonical_bytes(command: dict[str, Any]) -> bytes:
    """Section 11: the tag, then the seven members as canonical JSON."""
    signed = {name: command[name] for name in SIGNED_MEMBERS}
    return DOMAIN_TAG + canonical_json(signed).encode("utf-8")


def signature_valid(command: dict[str, Any], public_key: Ed25519PublicKey) -> bool:
    text = command.get("signature")
    if not isinstance(text, str) or "counter" not in command:
        return False
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return False
    if len(raw) != 64:
        return False
    try:
        public_key.verify(raw, canonical_bytes(command))
    except InvalidSignature:
        return False
    return True


def test_our_verifier_agrees_with_the_published_test_vectors() -> None:
    vectors = json.loads((REPO / "docs/device-contract/signing-vectors.json").read_text())
    key = serialization.load_pem_public_key(vectors["key"]["public_key_pem"].encode())
    assert isinstance(key, Ed25519PublicKey)
    for vector in vectors["vectors"]:
        command = json.loads(vector["message"])
        assert canonical_bytes(command).hex() == vector["canonical_hex"], vector["name"]
        assert signature_valid(command, key) is vector["valid"], vector["name"]


# --- the installation -----------------------------------------------------------------------------


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    output: Path
    api: str
    mqtt_port: int
    admin: dict[str, str] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)

    def login(self, email: str, password: str) -> dict[str, str]:
        r = httpx.post(
            f"{self.api}/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        r = httpx.get(f"{self.api}{path}", headers=headers or self.owner, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def provision(self) -> tuple[str, str, str]:
        """A new car for the owner: (VIN, MQTT password, gateway public key PEM)."""
        vin = "WPAHX" + uuid.uuid4().hex[:12].upper()  # hex digits: no I, O or Q
        r = httpx.post(f"{self.api}/v1/vehicles", json={"vin": vin}, headers=self.owner)
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["mqtt"]["username"] == vin
        return vin, body["mqtt"]["password"], body["gateway_public_key"]

    def quarantine(self, vin: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.get(
            "/v1/quarantine", headers=self.admin, vin=vin, limit=100
        )["items"]
        return entries


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("paho-up")
    mqtt_port, api_port = free_port(), free_port()
    output = tmp / "up.log"
    env = {
        **os.environ,
        "TELEMATICS_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "TELEMATICS_OFFLINE_AFTER": str(OFFLINE_AFTER_S),
    }
    with output.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "up",
                "--data-dir",
                str(tmp / "data"),
                "--mqtt-port",
                str(mqtt_port),
                "--api-port",
                str(api_port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    running = Stack(process, output, f"http://127.0.0.1:{api_port}", mqtt_port)

    def api_answers() -> bool:
        if process.poll() is not None:
            pytest.fail(f"telematics up exited: {output.read_text(errors='replace')}")
        try:
            return httpx.get(f"{running.api}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(api_answers, timeout=60, what="telematics up")
        running.admin = running.login("admin@localhost", ADMIN_PASSWORD)
        email, password = OWNER
        registered = httpx.post(
            f"{running.api}/v1/auth/register",
            json={"email": email, "password": password, "name": "Paho Owner"},
        )
        assert registered.status_code == 202, registered.text
        running.owner = running.login(email, password)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(60)


# --- the unit -------------------------------------------------------------------------------------


class PacketTooLarge(Exception):
    """Section 8.3: the unit refuses to send what the broker announced it will not take."""


class Unit:
    """A telematics unit on paho-mqtt, following docs/device-contract.md."""

    def __init__(self, stack: Stack, vin: str, password: str, public_key_pem: str) -> None:
        self.vin = vin
        self.stack = stack
        key = serialization.load_pem_public_key(public_key_pem.encode())
        assert isinstance(key, Ed25519PublicKey)
        self.public_key = key
        self.prefix = f"v1/vehicles/{vin}/"
        self.max_packet_size: int | None = None
        self.connects = 0
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.commands: queue.Queue[tuple[dict[str, Any], Any]] = queue.Queue()
        self.feedback: list[dict[str, Any]] = []
        self.acks: dict[int, int] = {}
        self.seq = 0
        self.event_seq = 0
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=vin, protocol=mqtt.MQTTv5
        )  # section 1: client id = VIN, MQTT 5
        client.username_pw_set(vin, password)
        client.will_set(self.prefix + "status", b'{"state": "offline"}', qos=1, retain=True)
        client.reconnect_delay_set(1, 8)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *a: self.subscribed.set()
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = lambda *a: self.connected.clear()
        self.client = client

    # section 1: clean start off, a session expiry, then subscribe and say online
    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600

        def attempt() -> bool:
            self.client.connect("127.0.0.1", self.stack.mqtt_port, 30, clean_start=False,
                                properties=properties)  # fmt: skip
            self.client.loop_start()
            if self.connected.wait(3):
                return True
            self.client.loop_stop()
            self.client.disconnect()
            return False  # provisioning reaches the broker within a second or so

        wait_until(attempt, timeout=30, what=f"{self.vin} to be let in")
        wait_until(self.subscribed.is_set, what="the subscriptions")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            return
        self.connects += 1
        self.max_packet_size = getattr(props, "MaximumPacketSize", None)
        client.subscribe([(self.prefix + "commands", 1), (self.prefix + "feedback", 0)])
        client.publish(self.prefix + "status", b'{"state": "online"}', qos=1, retain=True)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        body = json.loads(message.payload)
        if message.topic == self.prefix + "feedback":
            self.feedback.append(body)
        elif message.topic == self.prefix + "commands":
            self.commands.put((body, message.properties))

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self.acks[mid] = rc.value

    def publish(self, channel: str, payload: bytes | dict[str, Any], **kw: Any) -> int:
        """Publish with QoS 1 and wait for the PUBACK; returns its reason code."""
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        topic = self.prefix + channel
        # section 8.3: check the announced Maximum Packet Size before sending (paho does
        # not); a generous allowance for the fixed header, topic, packet id and properties
        if self.max_packet_size is not None and len(data) + len(topic) + 64 > self.max_packet_size:
            raise PacketTooLarge(f"{len(data)} bytes; the broker takes {self.max_packet_size}")
        info = self.client.publish(topic, data, qos=1, **kw)
        info.wait_for_publish(15)
        wait_until(lambda: info.mid in self.acks, what="the PUBACK")
        return self.acks[info.mid]

    def sample(
        self, signals: dict[str, Any], *, seq: int | None = None, ts: int | None = None
    ) -> int:
        if seq is None:
            self.seq += 1
            seq = self.seq
        body = {
            "vin": self.vin,
            "seq": seq,
            "ts": now_ms() if ts is None else ts,
            "signals": signals,
        }
        return self.publish("telemetry", body)

    def answer(self, command_id: str, status: str, correlation: bytes | None = None,
               **extra: Any) -> int:  # fmt: skip
        properties = Properties(PacketTypes.PUBLISH)
        properties.CorrelationData = correlation or command_id.encode()
        body = {"command_id": command_id, "vin": self.vin, "status": status, "ts": now_ms(),
                **extra}  # fmt: skip
        return self.publish("commands/result", body, properties=properties)

    def next_command(self) -> tuple[dict[str, Any], Any]:
        return self.commands.get(timeout=15)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def unit(stack: Stack) -> Iterator[Unit]:
    vin, password, public_key = stack.provision()
    car = Unit(stack, vin, password, public_key)
    car.connect()
    yield car
    car.stop()


def vehicle(stack: Stack, vin: str) -> dict[str, Any]:
    body: dict[str, Any] = stack.get(f"/v1/vehicles/{vin}")
    return body


def known(stack: Stack, vin: str) -> bool:
    return httpx.get(f"{stack.api}/v1/vehicles/{vin}", headers=stack.owner).status_code == 200


# --- telemetry, events, status ------------------------------------------------------------------

SPEED = "Vehicle.Speed"
LIMIT = "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"
LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked"


def test_samples_batches_events_and_status_reach_the_api(stack: Stack, unit: Unit) -> None:
    assert unit.max_packet_size == 1_048_576  # announced in CONNACK (section 8.3)
    # one sample; an integer signal written as an integral float (section 3)
    t = now_ms()
    assert unit.sample({SPEED: 48.5, LIMIT: 80.0}, ts=t - 3000) == 0
    batch = {
        "vin": unit.vin,
        "samples": [
            {"seq": 2, "ts": t - 2000, "signals": {SPEED: 50.0}},
            {"seq": 3, "ts": t - 1000, "signals": {SPEED: 51.0}},
        ],
    }
    assert unit.publish("telemetry", batch) == 0
    unit.seq = 3
    event = {"vin": unit.vin, "seq": 0, "ts": t, "type": "dtc_set", "code": "P0301"}
    assert unit.publish("events", event) == 0
    wait_until(lambda: known(stack, unit.vin), what="the vehicle in the API")
    wait_until(
        lambda: vehicle(stack, unit.vin)["state"].get(SPEED, {}).get("value") == 51.0,
        what="the batch's newest sample as the latest state",
    )
    state = vehicle(stack, unit.vin)
    assert state["online"] is True
    assert state["state"][LIMIT]["value"] == 80
    assert isinstance(state["state"][LIMIT]["value"], int)
    assert (state["missing_samples"], state["missing_events"]) == (0, 0)
    history = stack.get(
        f"/v1/vehicles/{unit.vin}/history", signals=SPEED, start=t - 60_000, end=now_ms() + 1
    )
    assert [p["seq"] for p in history["items"]] == [1, 2, 3]
    assert unit.feedback == []


def test_bad_input_is_quarantined_and_the_unit_is_told(stack: Stack, unit: Unit) -> None:
    # a PUBACK is the broker's receipt (section 8.1): every one of these is acknowledged
    assert unit.publish("telemetry", b'{"vin": "' + unit.vin.encode() + b'", "seq": 1,') == 0
    assert unit.sample({SPEED: 10.0}, ts=0) == 0  # an unset clock
    assert unit.sample({SPEED: 10.0}, ts=now_ms() // 1000) == 0  # seconds, not ms
    assert unit.sample({SPEED: "fast", LIMIT: 70}) == 0  # one bad signal of two
    assert unit.publish("telemetry", {"vin": unit.vin, "samples": []}) == 0
    expected = {
        "malformed_json",
        "implausible_timestamp",
        "wrong_type",
        "invalid_envelope",
    }
    wait_until(
        lambda: {e["reason"] for e in stack.quarantine(unit.vin)} == expected,
        what="the quarantine",
    )
    wait_until(
        lambda: len(unit.feedback) == 5, what=f"a feedback notice per refusal: {unit.feedback}"
    )
    assert sorted(n["reason"] for n in unit.feedback) == sorted(
        [*expected, "implausible_timestamp"]
    )
    wrong = next(n for n in unit.feedback if n["reason"] == "wrong_type")
    assert (wrong["seq"], wrong["signal"], wrong["topic"]) == (
        3,
        SPEED,
        f"v1/vehicles/{unit.vin}/telemetry",
    )
    # the good signal of that sample was kept
    wait_until(lambda: known(stack, unit.vin), what="the vehicle")
    assert vehicle(stack, unit.vin)["state"][LIMIT]["value"] == 70


def test_oversized_payloads_never_drive_the_unit_into_a_loop(stack: Stack, unit: Unit) -> None:
    """Issue 11: a payload over the broker's limit got a PUBACK reason paho-mqtt cannot
    parse, and it reconnected and resent forever."""
    # over the gateway's 256 KiB, under the broker's packet limit: acknowledged, refused once
    big = {"vin": unit.vin, "seq": 1, "ts": now_ms(), "signals": {}, "pad": "x" * 600_000}
    assert unit.publish("telemetry", big) == 0
    # over the packet limit: the unit refuses it itself, as section 8.3 requires
    huge = {"vin": unit.vin, "seq": 1, "ts": now_ms(), "signals": {}, "pad": "x" * 1_100_000}
    with pytest.raises(PacketTooLarge):
        unit.publish("telemetry", huge)
    unit.seq = 1
    assert unit.sample({SPEED: 12.0}) == 0  # and the connection carries on
    wait_until(lambda: known(stack, unit.vin), what="the next sample")
    wait_until(
        lambda: [e["reason"] for e in stack.quarantine(unit.vin)] == ["payload_too_large"],
        what="the big payload in the quarantine",
    )
    time.sleep(2)  # a loop would reconnect and resend within this time
    assert unit.connects == 1
    assert [e["reason"] for e in stack.quarantine(unit.vin)] == ["payload_too_large"]


def test_missing_seq_numbers_are_visible_until_a_late_upload_brings_them(
    stack: Stack, unit: Unit
) -> None:
    for seq in (1, 2, 5):
        assert unit.sample({SPEED: 1.0}, seq=seq) == 0
    wait_until(lambda: known(stack, unit.vin), what="the vehicle")
    wait_until(lambda: vehicle(stack, unit.vin)["missing_samples"] == 2, what="a gap of two")
    t = now_ms()
    late = {
        "vin": unit.vin,
        "samples": [{"seq": s, "ts": t - 10_000 + s, "signals": {SPEED: 2.0}} for s in (3, 4)],
    }
    assert unit.publish("telemetry", late) == 0
    wait_until(lambda: vehicle(stack, unit.vin)["missing_samples"] == 0, what="the gap filled")


def test_a_plain_disconnect_shows_the_vehicle_offline_once_silent(stack: Stack) -> None:
    vin, password, public_key = stack.provision()
    car = Unit(stack, vin, password, public_key)
    car.connect()
    car.sample({SPEED: 0.0})
    wait_until(lambda: known(stack, vin) and vehicle(stack, vin)["online"], what="online")
    car.stop()  # DISCONNECT 0x00 without publishing offline: no Will (section 7)
    assert vehicle(stack, vin)["online"] is True  # its retained status still says online
    wait_until(
        lambda: vehicle(stack, vin)["offline_reason"] == "silent",
        timeout=OFFLINE_AFTER_S + 10,
        what="the silent vehicle shown offline",
    )
    assert vehicle(stack, vin)["online"] is False


def test_a_revoked_unit_is_cut_off_and_refused_as_the_contract_says(stack: Stack) -> None:
    """Section 1: ``DELETE /v1/vehicles/{vin}`` answers once the broker has dropped the unit's
    login (``Broker-Applied: true``), the unit is disconnected at once, and each CONNECT it
    tries after that is refused with 0x87. The section names what paho-mqtt reports for the
    cut-off, so a firmware engineer recognises it: it said "a protocol error", but the broker
    closes the socket without a DISCONNECT, which paho 2.2 reports as "Unspecified error"."""
    vin, password, public_key = stack.provision()
    car = Unit(stack, vin, password, public_key)
    dropped: list[Any] = []
    connacks: list[int] = []

    def connected(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        connacks.append(rc.value)
        car._on_connect(client, userdata, flags, rc, props)

    def disconnected(client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        dropped.append(rc)
        car.connected.clear()

    car.client.on_connect = connected
    car.client.on_disconnect = disconnected
    car.connect()
    try:
        assert car.sample({SPEED: 0.0}) == 0
        revoked = httpx.delete(f"{stack.api}/v1/vehicles/{vin}", headers=stack.owner)
        assert revoked.status_code == 200, revoked.text
        assert revoked.headers["Broker-Applied"] == "true"
        wait_until(lambda: dropped, timeout=5, what="the revoked unit cut off")
        # paho reconnects by itself (1 s backoff here): refused, not let in
        wait_until(lambda: connacks[-1] == 0x87, timeout=15, what="a refused reconnect")
        assert set(connacks[1:]) == {0x87}, connacks
    finally:
        car.stop()
    cut_off = dropped[0]
    contract = " ".join((REPO / "docs/device-contract.md").read_text(encoding="utf-8").split())
    assert f'reports as a lost connection (reason "{cut_off}", 0x{cut_off.value:02X})' in contract


# --- commands -------------------------------------------------------------------------------------


def command(stack: Stack, vin: str, type_: str, **params: Any) -> str:
    r = httpx.post(
        f"{stack.api}/v1/vehicles/{vin}/commands",
        json={"type": type_, "params": params},
        headers=stack.owner,
    )
    assert r.status_code == 201, r.text
    command_id: str = r.json()["id"]
    return command_id


def command_state(stack: Stack, command_id: str) -> dict[str, Any]:
    body: dict[str, Any] = stack.get(f"/v1/commands/{command_id}")
    return body


def test_signed_commands_are_verified_answered_and_confirmed(stack: Stack, unit: Unit) -> None:
    unit.sample({SPEED: 0.0, LOCKED: False})
    wait_until(lambda: known(stack, unit.vin), what="the vehicle")

    lock_id = command(stack, unit.vin, "lock")
    body, properties = unit.next_command()
    # section 10.1: the envelope and its MQTT 5 properties
    assert body["command_id"] == lock_id
    assert body["vin"] == unit.vin
    assert body["type"] == "lock"
    assert body["params"] == {}
    assert properties.CorrelationData == lock_id.encode()
    assert properties.ResponseTopic == f"v1/vehicles/{unit.vin}/commands/result"
    assert 0 < properties.MessageExpiryInterval <= 300
    assert body["expires_at"] > now_ms()
    # section 11, implemented here independently: the signature verifies, a change breaks it
    assert signature_valid(body, unit.public_key)
    assert not signature_valid({**body, "type": "unlock"}, unit.public_key)
    assert not signature_valid({**body, "counter": body["counter"] + 1}, unit.public_key)

    assert unit.answer(lock_id, "accepted") == 0
    unit.sample({LOCKED: True})  # the car shows its new state (section 10.6)
    assert unit.answer(lock_id, "succeeded", detail="doors locked") == 0
    wait_until(
        lambda: command_state(stack, lock_id)["confirmation"] == "confirmed",
        what="the lock confirmed by telemetry",
    )
    done = command_state(stack, lock_id)
    assert done["status"] == "succeeded"
    assert [t["status"] for t in done["transitions"]] == ["queued", "sent", "accepted", "succeeded"]

    # a failure with the unit's own reason ends failed, with it (section 10.5)
    limit_id = command(stack, unit.vin, "charge_limit", percent=90)
    body, _ = unit.next_command()
    assert body["params"] == {"percent": 90}
    assert signature_valid(body, unit.public_key)
    assert body["counter"] > done["transitions"][0]["at"] - 1  # counters only grow
    unit.answer(limit_id, "accepted")
    unit.answer(limit_id, "failed", reason="hardware_fault", detail="charger not responding")
    wait_until(lambda: command_state(stack, limit_id)["status"] == "failed", what="failed")
    failed = command_state(stack, limit_id)
    assert (failed["reason"], failed["detail"]) == ("hardware_fault", "charger not responding")

    # an answer whose correlation data is another command's is refused
    horn_id = command(stack, unit.vin, "horn_and_lights")
    unit.next_command()
    assert unit.answer(horn_id, "accepted", correlation=lock_id.encode()) == 0
    wait_until(
        lambda: "correlation_mismatch" in {e["reason"] for e in stack.quarantine(unit.vin)},
        what="the mismatched answer in the quarantine",
    )
    wait_until(
        lambda: any(n["reason"] == "correlation_mismatch" for n in unit.feedback),
        what="feedback about it",
    )
    assert command_state(stack, horn_id)["status"] == "sent"
    unit.answer(horn_id, "rejected", reason="busy", detail="charging session running")
    wait_until(lambda: command_state(stack, horn_id)["status"] == "rejected", what="rejected")
    assert command_state(stack, horn_id)["reason"] == "busy"
