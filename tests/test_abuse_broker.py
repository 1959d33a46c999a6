"""The broker attacked with a vehicle's own credential (issue 10), against ``telematics up``.

Any self-registered owner can get a vehicle credential (register, provision an unclaimed
VIN), so a vehicle credential is what an attacker holds. Everything here runs against one
real installation (``telematics up --demo``: the private Mosquitto with its generated
configuration, the gateway, the API with its command service, the demo simulator), started
once for the module because starting it takes seconds; every test provisions VINs of its
own. The attacker and the honest units speak raw MQTT 5
(:class:`tests.support.mqtt_raw.Mqtt5Client`) so every refusal is seen as the broker's own
reason code.

The reproducers of the issue, each refused:

* subscribing to the gateway's shared subscriptions (telemetry, events, status, command
  results), ``#``, ``$SYS/#``, ``$CONTROL/#``, another VIN's commands;
* publishing to another VIN's topics and to ``$CONTROL`` (and the control command it
  carried has no effect);
* connecting with another VIN's client id (which used to kick that vehicle off and fire its
  Last Will) or any id but its own;
* a persistent session asking never to expire (capped at the broker's 7 days);

and the end-to-end check that with the attacker trying all of it, every sample of the
other vehicles is stored and every command completes. On the code before issue 10 (an ACL
file that never checked SUBSCRIBE) that last test lost most samples and left commands in
``sent``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.broker import free_port
from tests.support.mqtt_raw import NOT_AUTHORIZED, Mqtt5Client
from tests.support.up import ADMIN_PASSWORD, Up, persisted_session_expiry, start
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

GATEWAY_GROUP = "$share/telematics-gateway/v1/vehicles/+/"
COMMANDS_GROUP = "$share/telematics-commands/v1/vehicles/+/"
SEVEN_DAYS_S = 7 * 24 * 3600


@dataclass
class Installation:
    up: Up
    admin: dict[str, str]
    account_id: int
    clients: list[Mqtt5Client]

    def provision(self, vin: str) -> str:
        r = httpx.post(
            f"{self.up.api}/v1/vehicles",
            json={"vin": vin, "account_id": self.account_id, "label": "abuse test"},
            headers=self.admin,
        )
        assert r.status_code == 201, r.text
        password: str = r.json()["mqtt"]["password"]
        return password

    def try_connect(
        self,
        username: str,
        password: str,
        client_id: str,
        **kwargs: Any,
    ) -> tuple[Mqtt5Client, int]:
        client, code = Mqtt5Client.connect(
            "127.0.0.1",
            self.up.mqtt_port,
            client_id,
            username=username,
            password=password,
            **kwargs,
        )
        self.clients.append(client)
        return client, code

    def unit(self, vin: str, password: str, **kwargs: Any) -> Mqtt5Client:
        """Connected as ``vin`` with its own client id, once the broker has loaded it."""
        found: list[Mqtt5Client] = []

        def attempt() -> bool:
            client, code = self.try_connect(vin, password, vin, **kwargs)
            if code == 0:
                found.append(client)
                return True
            client.close()
            return False

        wait_until(attempt, timeout=20, what=f"the broker to admit {vin}")
        return found[0]

    def command(self, vin: str, command_type: str = "horn_and_lights") -> str:
        r = httpx.post(
            f"{self.up.api}/v1/vehicles/{vin}/commands",
            json={"type": command_type},
            headers=self.admin,
        )
        assert r.status_code == 201, r.text
        command_id: str = r.json()["id"]
        return command_id

    def command_status(self, command_id: str) -> str:
        body = httpx.get(f"{self.up.api}/v1/commands/{command_id}", headers=self.admin).json()
        status: str = body["status"]
        return status

    def stored_seqs(self, vin: str) -> list[int]:
        r = httpx.get(
            f"{self.up.api}/v1/vehicles/{vin}/history",
            params={"signals": "Vehicle.Speed", "start": 0, "limit": 1000},
            headers=self.admin,
        )
        if r.status_code == 404:
            return []
        assert r.status_code == 200, r.text
        return sorted(p["seq"] for p in r.json()["items"])


_counter = iter(range(1, 1_000_000))


def new_vin() -> str:
    """A fresh, valid VIN per call (17 characters, no I, O or Q)."""
    return f"WABUSE{os.getpid() % 100000:05d}{next(_counter):06d}"


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installation]:
    ports = (free_port(), free_port(), free_port())
    up = start(tmp_path_factory.mktemp("abuse"), 1, ports)
    try:
        admin = up.login("admin@localhost", ADMIN_PASSWORD)
        account = httpx.post(
            f"{up.api}/v1/accounts",
            json={"kind": "organization", "name": "Abuse"},
            headers=admin,
        )
        assert account.status_code == 201, account.text
        inst = Installation(up, admin, account.json()["id"], [])
        yield inst
        for client in inst.clients:
            client.close()
    finally:
        if up.process.poll() is None:
            up.stop()


@pytest.fixture
def attacker(installation: Installation) -> tuple[str, str]:
    vin = new_vin()
    return vin, installation.provision(vin)


def sample(vin: str, seq: int, speed: float = 50.0) -> bytes:
    now = time.time_ns() // 1_000_000
    return json.dumps(
        {"vin": vin, "seq": seq, "ts": now, "signals": {"Vehicle.Speed": speed}}
    ).encode()


# --- subscriptions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter",
    [
        GATEWAY_GROUP + "telemetry",
        GATEWAY_GROUP + "events",
        GATEWAY_GROUP + "status",
        COMMANDS_GROUP + "commands/result",
        COMMANDS_GROUP + "status",
        "$share/evil/v1/vehicles/+/telemetry",
        "#",
        "v1/#",
        "v1/vehicles/+/commands",
        "$SYS/#",
        "$CONTROL/#",
        "$CONTROL/dynamic-security/v1/response",
    ],
)
def test_a_vehicle_cannot_subscribe_to_anything_but_its_own_commands(
    installation: Installation, attacker: tuple[str, str], topic_filter: str
) -> None:
    vin, password = attacker
    unit = installation.unit(vin, password)
    assert unit.subscribe(topic_filter) == NOT_AUTHORIZED, topic_filter
    assert unit.subscribe(f"v1/vehicles/{vin}/commands") == 1  # its own: granted


def test_a_vehicle_cannot_subscribe_to_another_vehicles_commands(
    installation: Installation, attacker: tuple[str, str]
) -> None:
    victim = new_vin()
    installation.provision(victim)
    vin, password = attacker
    unit = installation.unit(vin, password)
    assert unit.subscribe(f"v1/vehicles/{victim}/commands") == NOT_AUTHORIZED
    assert unit.subscribe(f"v1/vehicles/{victim}/commands/result") == NOT_AUTHORIZED


# --- publishing -------------------------------------------------------------------------------


def test_a_vehicle_cannot_publish_for_another_or_to_the_control_topic(
    installation: Installation, attacker: tuple[str, str]
) -> None:
    victim = new_vin()
    installation.provision(victim)
    vin, password = attacker
    unit = installation.unit(vin, password)
    for topic in [
        f"v1/vehicles/{victim}/telemetry",
        f"v1/vehicles/{victim}/events",
        f"v1/vehicles/{victim}/status",
        f"v1/vehicles/{victim}/commands/result",
        f"v1/vehicles/{victim}/commands",
        f"v1/vehicles/{vin}/commands",  # forging commands to itself
    ]:
        assert unit.publish(topic, sample(victim, 1)) == NOT_AUTHORIZED, topic
    # a Dynamic Security command that would create a client with every right
    evil = f"evil-{uuid.uuid4().hex[:8]}"
    takeover = {
        "commands": [
            {
                "command": "createRole",
                "rolename": evil,
                "acls": [
                    {"acltype": "subscribePattern", "topic": "#", "allow": True},
                    {"acltype": "publishClientReceive", "topic": "#", "allow": True},
                ],
            },
            {
                "command": "createClient",
                "username": evil,
                "password": "pw",
                "roles": [{"rolename": evil}],
            },
        ]
    }
    payload = json.dumps(takeover).encode()
    assert unit.publish("$CONTROL/dynamic-security/v1", payload) == NOT_AUTHORIZED
    _, code = installation.try_connect(evil, "pw", evil)
    assert code == NOT_AUTHORIZED  # the command never ran
    assert installation.stored_seqs(victim) == []


# --- identity ---------------------------------------------------------------------------------


def test_a_vehicle_cannot_take_another_vehicles_client_id(
    installation: Installation, attacker: tuple[str, str]
) -> None:
    victim = new_vin()
    victim_unit = installation.unit(victim, installation.provision(victim))
    assert victim_unit.publish(f"v1/vehicles/{victim}/status", b'{"state": "online"}') < 0x80
    vin, password = attacker
    for client_id in (victim, "evil-1", f"{vin}-2", "telematics-gateway-1"):
        _, code = installation.try_connect(vin, password, client_id)
        assert code == NOT_AUTHORIZED, client_id
    # the victim was not kicked off (its Last Will was not fired): it still works
    assert not victim_unit.closed
    assert victim_unit.publish(f"v1/vehicles/{victim}/telemetry", sample(victim, 1)) < 0x80
    wait_until(lambda: installation.stored_seqs(victim) == [1], what="the victim's sample")


def _broker_pid(data_dir: Path) -> int:
    """The private broker's pid, found by its configuration file on its command line."""
    config = str(data_dir / "broker" / "mosquitto.conf")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if config.encode() in argv:
            return int(entry.name)
    raise AssertionError(f"no mosquitto running with {config}")


@pytest.mark.parametrize("requested", [0xFFFFFFFE, 0xFFFFFFFF])
def test_a_persistent_session_cannot_outlive_the_cap(
    installation: Installation, attacker: tuple[str, str], requested: int
) -> None:
    """0xFFFFFFFF means "never expires" in MQTT 5. The broker saves a disconnected
    session's expiry time on SIGUSR1, which is how this test reads what it decided."""
    vin, password = attacker
    unit = installation.unit(vin, password, clean_start=False, session_expiry=requested)
    assert unit.subscribe(f"v1/vehicles/{vin}/commands") == 1
    log = installation.up.data / "broker" / "mosquitto.log"
    unit.disconnect()
    wait_until(
        lambda: f"Client {vin} disconnected." in log.read_text(errors="replace"),
        what="the broker to see the disconnect",
    )
    db = installation.up.data / "broker" / "mosquitto.db"
    before = db.stat().st_mtime_ns if db.exists() else 0
    disconnected_at = time.time()
    os.kill(_broker_pid(installation.up.data), signal.SIGUSR1)
    wait_until(
        lambda: db.exists() and db.stat().st_mtime_ns != before,
        what="the broker to save its sessions",
    )
    wait_until(
        lambda: persisted_session_expiry(db, vin) is not None,
        what=f"{vin}'s session in the saved file",
    )
    expiry = persisted_session_expiry(db, vin)
    assert expiry, "the broker keeps this session forever (no expiry time)"
    assert expiry - disconnected_at <= SEVEN_DAYS_S + 60, "the session expiry was not capped"
    assert expiry - disconnected_at >= SEVEN_DAYS_S - 60


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_vehicle_cannot_fill_the_brokers_memory_with_unreleased_qos2_messages(
    installation: Installation, attacker: tuple[str, str]
) -> None:
    """Security review 4: a QoS 2 message waits in the broker from PUBLISH until the
    sender's PUBREL. Mosquitto 2.0 bounds what a client has waiting this way only by
    ``max_inflight_bytes`` (0, no limit, before): one vehicle sending 1 MB messages to its
    own telemetry topic and never releasing them grew the broker by 1 MB a message (200 MB
    here; 24 GB would have taken the broker, and every vehicle with it, down)."""
    vin, password = attacker
    unit = installation.unit(vin, password)
    pid = _broker_pid(installation.up.data)
    before = _rss_bytes(pid)
    topic = f"v1/vehicles/{vin}/telemetry".encode()
    payload = b"x" * 1_000_000
    for packet_id in range(1, 201):
        # PUBLISH, QoS 2: topic, packet id, no properties, payload; the PUBREL never comes
        body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + b"\x00"
        try:
            unit._send(0x34, body + payload)
        except OSError:
            break  # the broker may end the connection of a client over its quota
    if not unit.closed:
        with contextlib.suppress(ConnectionError, TimeoutError):
            # answered after every PUBLISH before it was read: the broker has them all
            unit.subscribe(f"v1/vehicles/{vin}/commands")
    grown = _rss_bytes(pid) - before
    assert grown < 80_000_000, f"the broker grew by {grown / 1e6:.0f} MB for one vehicle"
    # and it still serves the others
    honest = new_vin()
    other = installation.unit(honest, installation.provision(honest))
    assert other.publish(f"v1/vehicles/{honest}/telemetry", sample(honest, 1)) < 0x80
    wait_until(lambda: installation.stored_seqs(honest) == [1], what="the honest sample")


def test_a_vehicle_cannot_fill_the_brokers_memory_faster_than_the_gateway_reads(
    installation: Installation, attacker: tuple[str, str]
) -> None:
    """Security review 5: the broker acknowledges a QoS 1 message once it is queued for its
    subscribers, and a queue was bounded only by ``max_queued_messages`` (a million),
    whatever their size. One vehicle writing 1 MB messages to its own telemetry topic
    (refused by the gateway as too large, but queued for it first) faster than the gateway
    reads them grew the broker by ~200 MB a second, live 4 GB in 18 s; the machine's memory
    would have gone next, and the broker with every vehicle. ``max_queued_bytes`` bounds
    each queue (256 MiB, which Mosquitto holds in about twice that: ~580 MB measured for
    a subscriber that reads nothing, however much more is sent); what a flood sends beyond
    it is dropped. Before: 1,458 MB for the first 1,000 messages, growing with each."""
    vin, password = attacker
    unit = installation.unit(vin, password)
    pid = _broker_pid(installation.up.data)
    before = peak = _rss_bytes(pid)
    topic = f"v1/vehicles/{vin}/telemetry".encode()
    payload = b"x" * 1_000_000
    for packet_id in range(1, 1201):
        # PUBLISH, QoS 1: topic, packet id, no properties, payload; its PUBACK is not read
        body = len(topic).to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big") + b"\x00"
        try:
            unit._send(0x32, body + payload)
        except OSError:
            break
        if packet_id % 25 == 0:
            peak = max(peak, _rss_bytes(pid))
    peak = max(peak, _rss_bytes(pid))
    grown = peak - before
    assert grown < 900_000_000, f"the broker grew by {grown / 1e6:.0f} MB for one vehicle"
    # and it still serves the others once the gateway has read what was queued
    honest = new_vin()
    other = installation.unit(honest, installation.provision(honest))
    assert other.publish(f"v1/vehicles/{honest}/telemetry", sample(honest, 1)) < 0x80
    wait_until(
        lambda: installation.stored_seqs(honest) == [1], timeout=60, what="the honest sample"
    )


def _gateway(data: Path) -> dict[str, Any]:
    status = json.loads((data / "health" / "supervisor.json").read_text())
    part: dict[str, Any] = next(p for p in status["parts"] if p["name"] == "gateway-1")
    return part


def test_a_units_retained_telemetry_never_reaches_the_next_holding_period(
    installation: Installation, attacker: tuple[str, str]
) -> None:
    """Security review 5: the broker keeps a retained message on any topic a unit may
    write, and replays it to the gateway's subscription each time the gateway (re)connects,
    which filed it again under the VIN's *current* holding period. A seller's unit
    published a retained sample dated 4 minutes ahead (within the 5 allowed) before the
    car changed hands; at the gateway's next reconnect, however much later, the buyer's
    car showed the seller's position and speed (live: 199.9 km/h at 1.234, 5.678). A
    message with the retain flag reaches a subscriber only as such a replay (a live one
    comes with the flag cleared, and was stored when it was sent): the gateway ignores
    replayed telemetry and events."""
    vin, password = attacker
    unit = installation.unit(vin, password)
    ahead = time.time_ns() // 1_000_000 + 240_000
    retained = {"vin": vin, "seq": 777, "ts": ahead, "signals": {"Vehicle.Speed": 199.9}}
    topic = f"v1/vehicles/{vin}/telemetry"
    assert unit.publish(topic, json.dumps(retained).encode(), retain=True) < 0x80
    unit.close()
    # the car leaves its holder and is provisioned again: a new holding period
    r = httpx.delete(f"{installation.up.api}/v1/vehicles/{vin}", headers=installation.admin)
    assert r.status_code == 200, r.text
    password = installation.provision(vin)
    # the gateway reconnects (a restart of it or of the broker): the broker replays
    data = installation.up.data
    before = _gateway(data)
    os.kill(before["pid"], signal.SIGTERM)
    wait_until(
        lambda: (
            _gateway(data)["restarts"] > before["restarts"] and _gateway(data)["state"] == "running"
        ),
        timeout=60,
        what="the gateway to start again",
    )
    # the new holder's unit reports; once that is stored, any replay was handled too
    buyer = installation.unit(vin, password)
    assert buyer.publish(topic, sample(vin, 1, speed=42.0)) < 0x80
    wait_until(lambda: 1 in installation.stored_seqs(vin), timeout=60, what="the buyer's sample")
    r = httpx.get(f"{installation.up.api}/v1/vehicles/{vin}", headers=installation.admin)
    assert r.status_code == 200, r.text
    assert r.json()["state"]["Vehicle.Speed"]["value"] == 42.0, r.text
    assert installation.stored_seqs(vin) == [1]


# --- the attack, end to end -------------------------------------------------------------------


def _answer_commands(unit: Mqtt5Client, vin: str, stop: threading.Event) -> None:
    """A unit that accepts and performs every command it receives, echoing its
    correlation data (as the device contract asks)."""
    while not stop.is_set():
        got = unit.receive_message(timeout=0.2)
        if got is None:
            if unit.closed:
                return
            continue
        _, payload, properties = got
        command = json.loads(payload)
        correlation = properties.get(0x09)
        for status in ("accepted", "succeeded"):
            result = {
                "command_id": command["command_id"],
                "vin": vin,
                "status": status,
                "ts": time.time_ns() // 1_000_000,
            }
            unit.publish(
                f"v1/vehicles/{vin}/commands/result",
                json.dumps(result).encode(),
                correlation=correlation if isinstance(correlation, bytes) else None,
            )


def _attack(installation: Installation, vin: str, password: str) -> list[tuple[str, int]]:
    """Everything the issue's reproducer did, and then some: persistent sessions in the
    gateway's and the command service's shared subscriptions under several client ids,
    left behind disconnected so the broker keeps dealing them messages. Returns what the
    broker answered (client id, reason code of the CONNACK or the worst SUBACK)."""
    installation.unit(vin, password).disconnect()  # the broker knows the credential now
    answers = []
    for client_id in [vin, *(f"evil-{n}" for n in range(1, 5))]:
        client, code = installation.try_connect(
            vin, password, client_id, clean_start=False, session_expiry=3600
        )
        if code == 0:
            codes = [
                client.subscribe(GATEWAY_GROUP + "telemetry"),
                client.subscribe(GATEWAY_GROUP + "events"),
                client.subscribe(COMMANDS_GROUP + "commands/result"),
                client.subscribe(COMMANDS_GROUP + "status"),
            ]
            code = max(codes)
            client.disconnect()
        answers.append((client_id, code))
    return answers


def test_with_the_attacker_at_work_every_sample_is_stored_and_every_command_completes(
    installation: Installation, attacker: tuple[str, str]
) -> None:
    vin, password = attacker
    answers = _attack(installation, vin, password)

    victims = [new_vin() for _ in range(3)]
    units = {v: installation.unit(v, installation.provision(v)) for v in victims}
    for victim, unit in units.items():
        assert unit.subscribe(f"v1/vehicles/{victim}/commands") == 1
        assert unit.publish(f"v1/vehicles/{victim}/status", b'{"state": "online"}') < 0x80
        for seq in range(1, 16):
            assert unit.publish(f"v1/vehicles/{victim}/telemetry", sample(victim, seq)) < 0x80

    expected = list(range(1, 16))

    def all_stored() -> bool:
        return all(installation.stored_seqs(v) == expected for v in victims)

    wait_until(all_stored, timeout=30, what="every victim's 15 samples to be stored")

    stop = threading.Event()
    threads = [
        threading.Thread(target=_answer_commands, args=(unit, victim, stop), daemon=True)
        for victim, unit in units.items()
    ]
    for thread in threads:
        thread.start()
    try:
        commands = [installation.command(victims[i % len(victims)]) for i in range(5)]
        wait_until(
            lambda: all(installation.command_status(c) == "succeeded" for c in commands),
            timeout=30,
            what="all 5 commands to succeed",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    # and the broker had refused every attempt, so there was nothing to repair
    assert all(code == NOT_AUTHORIZED for _, code in answers), answers


# --- a revoked VIN's broker session -------------------------------------------------------------


def test_a_command_waiting_in_a_revoked_vehicles_session_never_reaches_the_next_holder(
    installation: Installation,
) -> None:
    """A command the gateway had published to a unit that then went away waits in the
    unit's persistent session on the broker. Revoking the vehicle discards that session:
    a unit provisioned for the same VIN afterwards (the next holder's) finds no session and
    gets nothing, although the signed command names its VIN (issue 10 item 3)."""
    vin = new_vin()
    unit = installation.unit(
        vin, installation.provision(vin), clean_start=False, session_expiry=3600
    )
    assert unit.subscribe(f"v1/vehicles/{vin}/commands") == 1
    unit.close()  # gone without a word: its session stays, with its subscription
    service_password = (installation.up.data / "secrets" / "mqtt-service.password").read_text()
    service, code = installation.try_connect(
        "telematics-gateway", service_password.strip(), f"test-service-{uuid.uuid4().hex[:8]}"
    )
    assert code == 0
    assert service.publish(f"v1/vehicles/{vin}/commands", b'{"command_id": "left-behind"}') == 0
    revoked = httpx.delete(f"{installation.up.api}/v1/vehicles/{vin}", headers=installation.admin)
    assert revoked.status_code == 200, revoked.text
    next_holder = installation.unit(
        vin, installation.provision(vin), clean_start=False, session_expiry=3600
    )
    assert next_holder.session_present is False
    assert next_holder.receive(timeout=2) is None
