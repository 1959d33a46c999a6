"""Vehicle passwords without a broker-wide reload (gateway/broker/plugin/vehicle_auth.c,
decision 0055), against the real ``mosquitto`` with the plugin compiled here.

Without the plugin every vehicle change rewrote the password file and reloaded the broker,
which then checked every connected client's password again while all waited (decision
0049). With it: a change replaces the plugin's table, the plugin loads it on its next
check (MOSQ_EVT_TICK), disconnects exactly the units whose entry went or changed, and no
reload happens. The tests of the running broker in ``tests/test_broker_auth.py`` run in
both modes (its ``fleet`` fixture); these are what only the plugin does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.broker import BrokerConfig, render_config
from gateway.broker import budget as budget_module
from gateway.broker.auth import (
    BrokerAuthFiles,
    ServiceIdentity,
    VehicleIdentity,
    VehicleTableError,
    generate_password,
    hash_password,
    render_vehicle_table,
    vehicle_topics,
)
from gateway.broker.control import DynsecControl
from gateway.broker.vehicle_auth import (
    VehicleAuthPluginUnavailableError,
    ensure_vehicle_auth_plugin,
)
from schemas.commands import command_topic
from schemas.topics import Channel, topic_for
from tests.support.broker import VIN_A, VIN_B, VIN_C, ClosedBroker, start_closed_broker
from tests.support.mqtt_raw import NOT_AUTHORIZED, TIMEOUT, Mqtt5Client
from tests.support.waiting import wait_until

RELOAD_LINE = "Reloading config."
OTHERS = [f"WAUTH{i:012d}" for i in range(40)]
ADMINISTRATIVE_ACTION = 0x98


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_vehicle_auth_plugin(tmp_path_factory.mktemp("vehicle-auth"))


class Units:
    """A closed broker with the plugin, and the units connected to it."""

    def __init__(self, closed: ClosedBroker) -> None:
        self.closed = closed
        self.broker = closed.broker
        self.clients: list[Mqtt5Client] = []

    def try_connect(
        self, vin: str, password: str | None = None, client_id: str | None = None
    ) -> tuple[Mqtt5Client, int]:
        client, code = Mqtt5Client.connect(
            self.broker.host,
            self.broker.port,
            client_id or vin,
            username=vin,
            password=self.closed.vehicles.get(vin) if password is None else password,
        )
        self.clients.append(client)
        return client, code

    def connect(self, vin: str, password: str | None = None) -> Mqtt5Client:
        client, code = self.try_connect(vin, password)
        assert code == 0, f"{vin} was refused with {code:#x}"
        return client

    def reloads(self) -> int:
        return self.broker.log_path.read_text().count(RELOAD_LINE)

    def log(self) -> str:
        return self.broker.log_path.read_text()


@pytest.fixture
def units(tmp_path: Path, plugin: Path) -> Iterator[Units]:
    vehicles: dict[str, str | None] = {VIN_A: generate_password(), VIN_B: generate_password()}
    vehicles.update({vin: generate_password() for vin in OTHERS})
    closed = start_closed_broker(
        tmp_path, vehicles=vehicles, persistence=False, vehicle_auth=plugin
    )
    units = Units(closed)
    try:
        yield units
    finally:
        for client in units.clients:
            client.close()
        closed.sync.stop()
        closed.broker.stop()


def _still_serving(units: Units, others: list[Mqtt5Client]) -> None:
    """Every unit of ``others`` is still connected and gets its PUBACK."""
    for vin, client in zip(OTHERS, others, strict=True):
        assert not client.closed, f"{vin} was disconnected"
        assert client.publish(topic_for(vin, Channel.STATUS), b"here") < 0x80, vin


# --- the real broker ----------------------------------------------------------------------


def test_vehicles_are_in_the_plugins_table_not_the_password_file(units: Units) -> None:
    files = units.closed.files
    assert VIN_A not in files.password_file.read_text()
    assert f"{VIN_A}:$7$" in files.vehicle_table_file.read_text()
    assert files.vehicle_table_applied.read_text().startswith("ok ")
    # the plugin comes after the Dynamic Security plugin (client id binding), before the
    # password file
    config = units.broker.config_path.read_text()
    assert config.index("mosquitto_dynamic_security") < config.index("telematics_vehicle_auth")


def test_a_provisioned_vehicle_connects_within_a_bounded_time_without_a_reload(
    units: Units,
) -> None:
    others = [units.connect(vin) for vin in OTHERS]
    assert units.try_connect(VIN_C, password="not yet")[1] == NOT_AUTHORIZED
    reloads = units.reloads()

    started = time.monotonic()
    password = units.closed.add_vehicle(VIN_C)
    assert password is not None
    units.connect(VIN_C, password)
    took = time.monotonic() - started

    assert took < 2.0, f"a provisioned vehicle waited {took:.2f} s"
    assert units.reloads() == reloads  # no SIGHUP: nobody was checked again
    _still_serving(units, others)


def test_a_revoked_vehicle_and_a_renewed_password_cut_off_exactly_those_units(
    units: Units,
) -> None:
    others = [units.connect(vin) for vin in OTHERS]
    revoked_password = units.closed.vehicles[VIN_A]
    old_password = units.closed.vehicles[VIN_B]
    revoked = units.connect(VIN_A)
    renewed = units.connect(VIN_B)
    reloads = units.reloads()

    units.closed.remove_vehicle(VIN_A)
    assert revoked.wait_closed(timeout=TIMEOUT)
    assert units.try_connect(VIN_A, revoked_password)[1] == NOT_AUTHORIZED

    units.closed.vehicles[VIN_B] = generate_password()
    units.closed.apply()
    # at once: the sync returned only once the plugin had the table, and kicked it then
    assert renewed.wait_closed(timeout=0.5)
    assert renewed.disconnect_reason == ADMINISTRATIVE_ACTION
    assert units.try_connect(VIN_B, old_password)[1] == NOT_AUTHORIZED
    units.connect(VIN_B)

    assert units.reloads() == reloads
    _still_serving(units, others)
    assert not any(f"Client {vin} disconnected" in units.log() for vin in OTHERS)


def test_the_client_id_binding_holds_and_a_reload_keeps_plugin_vehicles(units: Units) -> None:
    unit = units.connect(VIN_A)
    # another client id with the right password: the Dynamic Security plugin refuses it
    # before this plugin is asked
    assert units.try_connect(VIN_A, client_id="evil-1")[1] == NOT_AUTHORIZED
    assert units.try_connect(VIN_A, client_id=VIN_B)[1] == NOT_AUTHORIZED
    # a reload (a service account or integration changed) re-checks everyone through the
    # plugin: an unchanged vehicle stays connected
    units.broker.reload()
    assert not unit.wait_closed(timeout=0.3)
    assert unit.publish(topic_for(VIN_A, Channel.STATUS), b"after reload") < 0x80
    assert units.try_connect(VIN_A, client_id="evil-2")[1] == NOT_AUTHORIZED


def _table_text(units: Units) -> str:
    return units.closed.files.vehicle_table_file.read_text()


def _replace_table(units: Units, text: str | bytes) -> None:
    """Replace the table as the gateway does (a new file renamed over it), wait for the
    plugin's answer and return it."""
    files = units.closed.files
    before = files.vehicle_table_applied.stat().st_mtime_ns
    tmp = files.vehicle_table_file.with_name("t.tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text)
    tmp.replace(files.vehicle_table_file)
    wait_until(
        lambda: files.vehicle_table_applied.stat().st_mtime_ns != before,
        timeout=5,
        what="the plugin's answer",
    )


@pytest.mark.parametrize(
    "damage",
    ["partial", "no end line", "wrong count", "binary", "long line", "empty"],
)
def test_an_unusable_table_lets_nobody_in_and_the_broker_lives(units: Units, damage: str) -> None:
    good = _table_text(units)
    password = units.closed.vehicles[VIN_A]
    unit = units.connect(VIN_A)
    body, end = good[: good.rindex("# end ")], good[good.rindex("# end ") :]
    damages: dict[str, str | bytes] = {
        "partial": good[: len(good) // 2],
        "no end line": body,
        "wrong count": body + end.replace("# end ", "# end 1"),
        "binary": b"\x00\xff" * 4096 + end.encode(),
        "long line": f"{VIN_A}:{'A' * 5000}\n{end}",
        "empty": "",
    }
    damaged = damages[damage]

    _replace_table(units, damaged)

    assert units.closed.files.vehicle_table_applied.read_text().startswith("invalid ")
    assert unit.wait_closed(timeout=TIMEOUT)  # its entry went with the table
    assert units.try_connect(VIN_A, password)[1] == NOT_AUTHORIZED
    # the broker still serves: the service account logs in, and a good table works again
    service, code = Mqtt5Client.connect(
        units.broker.host,
        units.broker.port,
        "svc-check",
        username=units.closed.service[0],
        password=units.closed.service[1],
    )
    units.clients.append(service)
    assert code == 0
    _replace_table(units, good)
    units.connect(VIN_A, password)


def test_an_end_line_token_the_answer_cannot_hold_is_refused_not_cut(units: Units) -> None:
    good = _table_text(units)
    body, end = good[: good.rindex("# end ")], good[good.rindex("# end ") :]
    token = "T" * 65

    _replace_table(units, f"{body}# end {end.split()[2]} {token}\n")

    answer = units.closed.files.vehicle_table_applied.read_text().split()
    assert answer[0] == "invalid" or answer[1] == token, answer


def test_a_malformed_line_refuses_that_name_only(units: Units) -> None:
    good = _table_text(units)
    entry_b = next(line for line in good.splitlines() if line.startswith(VIN_B))
    entry_other = next(line for line in good.splitlines() if line.startswith(OTHERS[0]))
    # B: a salt of 9 bytes (Mosquitto drops such entries too); the other: no salt nor hash
    text = good.replace(entry_b, entry_b.replace(entry_b.split("$")[3], "AAAAAAAAAAAA", 1))
    text = text.replace(entry_other, f"{OTHERS[0]}:$7$101$$")
    unit_a = units.connect(VIN_A)
    unit_b = units.connect(VIN_B)

    _replace_table(units, text)

    answer = units.closed.files.vehicle_table_applied.read_text().split()
    assert answer[0] == "ok"
    assert answer[-1] == "2"  # two lines skipped
    assert unit_b.wait_closed(timeout=TIMEOUT)
    assert units.try_connect(VIN_B)[1] == NOT_AUTHORIZED
    assert units.try_connect(OTHERS[0])[1] == NOT_AUTHORIZED
    assert not unit_a.closed
    assert unit_a.publish(topic_for(VIN_A, Channel.STATUS), b"fine") < 0x80
    assert 'is not "VIN:hash"' in units.log()


def test_the_sync_fails_loudly_when_the_plugin_refuses_or_is_missing(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth", vehicle_table=True)
    files.ensure()
    token = files.write_vehicle_table([VehicleIdentity(VIN_A, hash_password("pw"))])
    assert token is not None
    with pytest.raises(VehicleTableError, match="vehicle_auth plugin loaded"):
        files.wait_vehicle_table(token, timeout_s=0.05)
    files.vehicle_table_applied.write_text("invalid no end line\n")
    with pytest.raises(VehicleTableError, match="refused the vehicle table: invalid"):
        files.wait_vehicle_table(token, timeout_s=1)


# --- files and configuration --------------------------------------------------------------


def test_the_table_and_what_changes_it(tmp_path: Path) -> None:
    a = VehicleIdentity(VIN_A, hash_password("pw-a"))
    b = VehicleIdentity(VIN_B, hash_password("pw-b"))
    certificate_only = VehicleIdentity(VIN_C)
    text = render_vehicle_table([b, a, certificate_only], "t0")
    lines = text.splitlines()
    # a certificate-only vehicle is in the table for its rights, without a password
    # (decision 0060; before it, such a vehicle was only a Dynamic Security client)
    assert lines[-4:] == [
        f"{VIN_A}:{a.password_hash}",
        f"{VIN_B}:{b.password_hash}",
        f"{VIN_C}:-",
        "# end 3 t0",
    ]
    with pytest.raises(ValueError, match="token"):
        render_vehicle_table([a], "a b")

    files = BrokerAuthFiles(tmp_path / "auth", vehicle_table=True)
    service = ServiceIdentity("telematics-gateway", hash_password("s"))
    files.write([a], [service])
    assert VIN_A not in files.password_file.read_text()
    assert "telematics-gateway:" in files.password_file.read_text()
    # the same vehicles: nothing written (no token); a change: a new token
    assert files.write_vehicle_table([a]) is None
    assert files.write_vehicle_table([a, b]) is not None
    assert files.write_vehicle_table([a, b]) is None
    # the password file no longer changes with the vehicles: no reload for them
    assert files.write_password_file([a, b, certificate_only], [service]) is False
    # without the table, everything as before
    plain = BrokerAuthFiles(tmp_path / "plain")
    plain.write([a], [service])
    assert VIN_A in plain.password_file.read_text()
    with pytest.raises(RuntimeError, match="password file"):
        plain.write_vehicle_table([a])


def test_the_config_needs_plugin_table_and_dynamic_security(tmp_path: Path, plugin: Path) -> None:
    with pytest.raises(ValueError, match="both vehicle_auth_plugin and vehicle_table_file"):
        BrokerConfig(port=1884, data_dir=tmp_path, vehicle_auth_plugin=plugin)
    with pytest.raises(ValueError, match="Dynamic Security plugin"):
        BrokerConfig(
            port=1884,
            data_dir=tmp_path,
            vehicle_auth_plugin=plugin,
            vehicle_table_file=tmp_path / "t",
        )
    text = render_config(
        BrokerConfig(
            port=1884,
            data_dir=tmp_path,
            allow_anonymous=False,
            password_file=tmp_path / "p",
            dynsec_config_file=tmp_path / "d.json",
            dynsec_plugin=tmp_path / "dynsec.so",
            vehicle_auth_plugin=plugin,
            vehicle_table_file=tmp_path / "t",
        )
    )
    assert text.index(f"plugin {tmp_path / 'dynsec.so'}") < text.index(f"plugin {plugin}")
    assert f"plugin_opt_table_file {tmp_path / 't'}" in text


def test_up_keeps_vehicles_in_the_password_file_without_the_plugins_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.cli import up as up_module
    from gateway.cli.up_plan import BrokerMode

    monkeypatch.setattr(budget_module, "INCLUDE_DIRS", (tmp_path / "nothing",))
    with pytest.raises(VehicleAuthPluginUnavailableError, match="libssl-dev"):
        ensure_vehicle_auth_plugin(tmp_path / "p")

    class Broker:
        mode = BrokerMode.CLOSED

    class Plan:
        broker = Broker()
        data_dir = tmp_path

    with caplog.at_level(logging.WARNING, logger=up_module.log.name):
        assert up_module._vehicle_auth_plugin(Plan()) is None  # type: ignore[arg-type]
    assert "vehicle passwords stay in the broker's password file" in caplog.text
    assert up_module._vehicle_auth_settings(BrokerAuthFiles(tmp_path), None) == {}


def test_a_change_for_a_unit_offline_with_a_session_leaves_the_broker_running(
    units: Units,
) -> None:
    """Decision 0034: Mosquitto 2.0.11 corrupts its session-expiry list when it disconnects
    a client that is already offline with a session (the reload did). The plugin's kick
    walks only connected clients, so even without the sync's session purge (this fixture
    has none) the broker survives new passwords and a revocation of offline units."""
    offline = {}
    for vin in (VIN_A, VIN_B):
        client, code = Mqtt5Client.connect(
            units.broker.host,
            units.broker.port,
            vin,
            username=vin,
            password=units.closed.vehicles[vin],
            clean_start=False,
            session_expiry=3600,
        )
        assert code == 0
        client.disconnect()  # offline, its session kept
        offline[vin] = client
    for _ in range(5):
        units.closed.vehicles[VIN_A] = generate_password()
        units.closed.apply()
    units.closed.remove_vehicle(VIN_B)
    assert units.broker.is_running()
    unit = units.connect(VIN_A)  # the newest password
    assert unit.publish(topic_for(VIN_A, Channel.STATUS), b"alive") < 0x80
    assert units.try_connect(VIN_B, password="whatever")[1] == NOT_AUTHORIZED
    assert units.broker.is_running()


# --- a vehicle's rights from the table, not Dynamic Security (decision 0060) ---------------


def _dynsec_clients(closed: ClosedBroker) -> list[str]:
    control = DynsecControl(closed.broker.host, closed.broker.port, *closed.control)
    [answer] = control.execute([{"command": "listClients"}])
    return [name for name in answer["data"]["clients"] if isinstance(name, str)]


def _service(units: Units) -> Mqtt5Client:
    client, code = Mqtt5Client.connect(
        units.broker.host,
        units.broker.port,
        "svc-rights",
        username=units.closed.service[0],
        password=units.closed.service[1],
    )
    units.clients.append(client)
    assert code == 0
    return client


def test_vehicles_are_no_dynamic_security_clients_and_keep_their_rights(units: Units) -> None:
    """The plugin answers a vehicle's ACL checks: Dynamic Security holds no vehicle (its
    file and its client list), and the vehicle still writes its four topics and is sent its
    commands and feedback."""
    names = _dynsec_clients(units.closed)
    assert units.closed.service[0] in names
    assert not [n for n in names if n in (VIN_A, VIN_B, *OTHERS)]
    saved = json.loads(units.closed.files.dynsec_file.read_text())
    assert not [r for r in saved["roles"] if r["rolename"].startswith("vehicle-")]

    service = _service(units)
    assert service.subscribe("v1/#") < 0x80
    unit = units.connect(VIN_A)
    write, read = vehicle_topics(VIN_A)
    for topic in write:
        assert unit.publish(topic, b"mine") < 0x80, topic
        assert service.receive() == (topic, b"mine")
    for topic in read:
        assert unit.subscribe(topic) == 1, topic
        assert service.publish(topic, b"for A") < 0x80
        assert unit.receive() == (topic, b"for A")
    # another VIN's command: not delivered to A (it cannot subscribe to it either)
    assert service.publish(command_topic(VIN_B), b"for B") < 0x80
    assert unit.receive(timeout=0.3) is None


ATTACK_PUBLISH = [
    topic_for(VIN_B, Channel.TELEMETRY),  # another VIN
    f"v1/vehicles/{VIN_A}X/telemetry",  # a longer "VIN" with A's as prefix
    f"v1/vehicles/{VIN_A[:-1]}/telemetry",  # a shorter one
    f"v1/vehicles/{VIN_A}/telemetry/",  # trailing slash
    f"v1/vehicles/{VIN_A}/telemetry/x",
    f"v1/vehicles/{VIN_A}/telemetryx",
    f"v1/vehicles/{VIN_A}//telemetry",
    f"v1/vehicles/{VIN_A}/commands",  # its read topic is not a write topic
    f"v1/vehicles/{VIN_A}/feedback",
    f"v1/vehicles/{VIN_A}/commands/result/x",
    f"V1/vehicles/{VIN_A}/telemetry",
    f"/v1/vehicles/{VIN_A}/telemetry",
    f"v1/vehicles/{VIN_A.lower()}/telemetry",
    "$CONTROL/dynamic-security/v1",
    "$SYS/broker/connection/x/state",
    "$SYS/broker/uptime",
    "integrations/1/alerts",
    f"edges/e1/v1/vehicles/{VIN_A}/telemetry",
    f"v1/vehicles/{VIN_A}/telemetry/" + "a" * 40_000,  # a long topic (40 kB)
    f"v1/vehicles/{VIN_A}/telemetry" + "/a" * 150,  # many levels (under the limit of 200)
]

ATTACK_SUBSCRIBE = [
    "#",
    "+",
    "+/+/+/+",
    "v1/#",
    "v1/vehicles/+/commands",
    f"v1/vehicles/{VIN_A}/+",
    f"v1/vehicles/{VIN_A}/#",
    f"v1/vehicles/{VIN_A}/commands/#",
    f"v1/vehicles/{VIN_A}/commands/",
    f"v1/vehicles/{VIN_A}/commands/+",
    f"v1/vehicles/{VIN_A}/+/result",
    f"v1/vehicles/{VIN_A}X/commands",
    f"v1/vehicles/{VIN_A}/telemetry",  # its write topics are not read topics
    f"v1/vehicles/{VIN_A}/commands/result",
    command_topic(VIN_B),
    f"$share/g/v1/vehicles/{VIN_A}/commands",
    "$share/telematics-gateway/v1/vehicles/+/telemetry",
    "$share/telematics-gateway/#",
    "$CONTROL/#",
    "$CONTROL/dynamic-security/v1/response",
    "$SYS/#",
    "$SYS/broker/uptime",
    f"v1/vehicles/{VIN_A}/commands/" + "a" * 40_000,
    f"v1/vehicles/{VIN_A}/commands" + "/a" * 150,
]


def test_an_attacker_with_a_vehicle_credential_gets_nothing_else(units: Units) -> None:
    """A's password used for everything a vehicle must not do: each refused by the
    plugin (Dynamic Security holds no vehicle to answer), the unit still connected."""
    assert not [n for n in _dynsec_clients(units.closed) if n == VIN_A]
    for client_id in ("evil", VIN_B, f"{VIN_A}X", VIN_A[:-1], VIN_A.lower(), f"{VIN_A} "):
        assert units.try_connect(VIN_A, client_id=client_id)[1] == NOT_AUTHORIZED, client_id
    # B's name with A's password, and A's with none
    assert units.try_connect(VIN_B, units.closed.vehicles[VIN_A])[1] == NOT_AUTHORIZED
    assert units.try_connect(VIN_A, password="")[1] == NOT_AUTHORIZED

    service = _service(units)
    assert service.subscribe("v1/#") < 0x80
    unit = units.connect(VIN_A)
    for topic in ATTACK_PUBLISH:
        assert unit.publish(topic, b"x") == NOT_AUTHORIZED, topic[:80]
    for topic in ATTACK_SUBSCRIBE:
        assert unit.subscribe(topic) == NOT_AUTHORIZED, topic[:80]
    assert service.receive(timeout=0.3) is None  # nothing of it reached anyone
    # still connected, its own rights intact
    assert not unit.closed
    assert unit.publish(topic_for(VIN_A, Channel.TELEMETRY), b"ok") < 0x80
    assert service.receive() == (topic_for(VIN_A, Channel.TELEMETRY), b"ok")
    # a revoked VIN's credential: no right at all, even connected before
    units.closed.remove_vehicle(VIN_A)
    assert unit.wait_closed(timeout=TIMEOUT)
    assert units.try_connect(VIN_A)[1] == NOT_AUTHORIZED


BULK = [f"WBULK{i:012d}" for i in range(600)]


def test_a_bulk_provisioning_is_a_table_swap_without_a_restart(
    tmp_path: Path, plugin: Path
) -> None:
    """600 vehicles in one sync, 40 units connected, the sync able to restart the broker
    (as under ``telematics up``): Dynamic Security would have cost 2 x 600 commands, each
    rewriting its file, so the sync restarted the broker (LIVE_CHANGES_BUDGET_S) and every
    unit reconnected. With the rights in the table: no command, no restart, no unit
    disconnected; the new vehicles connect at once; then a bulk revocation cuts exactly
    those off."""
    vehicles: dict[str, str | None] = {vin: generate_password() for vin in OTHERS}
    closed = start_closed_broker(
        tmp_path, vehicles=vehicles, persistence=False, vehicle_auth=plugin, keeper=True
    )
    assert closed.keeper is not None
    units = Units(closed)
    try:
        assert closed.keeper.sync is not None
        closed.keeper.sync.stop()  # this test syncs itself
        others = [units.connect(vin) for vin in OTHERS]
        pid = closed.keeper.process.pid
        reloads = units.reloads()
        for vin in BULK:
            closed.vehicles[vin] = generate_password()

        started = time.monotonic()
        closed.apply()
        took = time.monotonic() - started

        assert closed.keeper.process.pid == pid, "the broker was restarted"
        assert units.reloads() == reloads
        _still_serving(units, others)
        bulk = [units.connect(vin) for vin in BULK[::60]]
        for vin, client in zip(BULK[::60], bulk, strict=True):
            assert client.publish(topic_for(vin, Channel.TELEMETRY), b"new") < 0x80
        assert not [n for n in _dynsec_clients(closed) if n in BULK]
        assert took < 5.0, f"the bulk sync took {took:.1f} s"

        for vin in BULK:
            closed.vehicles.pop(vin)
        closed.apply()
        assert closed.keeper.process.pid == pid
        for client in bulk:
            assert client.wait_closed(timeout=TIMEOUT)
        assert units.try_connect(BULK[0], units.closed.vehicles.get(OTHERS[0]))[1] == (
            NOT_AUTHORIZED
        )
        _still_serving(units, others)
    finally:
        for client in units.clients:
            client.close()
        closed.keeper.stop()


def test_vehicle_clients_left_in_dynamic_security_are_removed(tmp_path: Path, plugin: Path) -> None:
    """A data directory from before: its dynamic-security.json has a client and role per
    vehicle. Rendering it for a start (what ``telematics up`` does first) writes it
    without them; and a broker that started with them anyway (the identity source could
    not be read at the start) loses them at the first sync, the vehicles keeping their
    rights from the table."""
    vehicles = [VehicleIdentity(VIN_A, hash_password("a")), VehicleIdentity(VIN_B)]
    service = ServiceIdentity("telematics-gateway", hash_password("s"))
    before = BrokerAuthFiles(tmp_path / "old", vehicle_table=False)
    before.write(vehicles, [service])
    old = json.loads(before.dynsec_file.read_text())
    assert VIN_A in {c["username"] for c in old["clients"]}
    now = BrokerAuthFiles(tmp_path / "old", vehicle_table=True)
    now.write(vehicles, [service])
    rendered = json.loads(now.dynsec_file.read_text())
    assert {c["username"] for c in rendered["clients"]} == {"telematics-gateway"}
    assert not [r for r in rendered["roles"] if r["rolename"].startswith("vehicle-")]
    assert f"{VIN_B}:-" in now.vehicle_table_file.read_text()

    closed = start_closed_broker(
        tmp_path / "run",
        vehicles={VIN_A: generate_password()},
        persistence=False,
        vehicle_auth=plugin,
    )
    units = Units(closed)
    try:
        closed.broker.stop()
        stale = BrokerAuthFiles(tmp_path / "stale", vehicle_table=False)
        stale.write(closed.identities(), closed.sync.services)
        closed.files.dynsec_file.write_text(stale.dynsec_file.read_text())
        closed.broker.start()
        assert VIN_A in _dynsec_clients(closed)
        closed.source.set(closed.identities())  # a new version, the same vehicles
        assert closed.sync.sync_once() is True
        assert VIN_A not in _dynsec_clients(closed)
        unit = units.connect(VIN_A)
        assert unit.publish(topic_for(VIN_A, Channel.TELEMETRY), b"x") < 0x80
        assert unit.publish(topic_for(VIN_B, Channel.TELEMETRY), b"x") == NOT_AUTHORIZED
    finally:
        for client in units.clients:
            client.close()
        closed.broker.stop()
