"""Vehicle identities on the broker (gateway.broker.auth, gateway.broker.control) against the
real ``mosquitto``.

Every broker test starts its own Mosquitto on a free port with ``allow_anonymous false``, a
password file and the Dynamic Security plugin, set up by the code under test (the
``closed_broker`` machinery of ``tests/conftest.py``: the real
:class:`~gateway.broker.auth.BrokerAuthSync` over an in-memory identity source). Nothing
about the broker is mocked. The clients are :class:`~tests.support.mqtt_raw.Mqtt5Client`, raw MQTT
5 over a socket, because these tests need the exact CONNACK, SUBACK and PUBACK reason codes.

Waiting never uses fixed sleeps: "nothing was delivered" is proven by ordering instead. The
broker handles one connection's packets in order and delivers to a subscriber in order, so
when a publisher sends a denied message and then an allowed one, a subscriber that receives
the allowed one has already been sent everything it would ever get of the first.

What Mosquitto 2.0.11 does, as these tests pin down (see gateway/broker/auth.py and decision
0008; the attacker's view is ``tests/test_abuse_broker.py``):

* wrong, unknown or missing credentials, or a vehicle's own credentials with another client
  id: CONNACK 0x87 (not authorized);
* publish outside a client's rights: PUBACK 0x87, message dropped;
* subscribe outside its rights: SUBACK 0x87 (the plugin checks SUBSCRIBE, which the plain
  ACL file never did);
* a change to the plugin through ``$CONTROL`` applies at once, without a restart; deleting
  a vehicle's client disconnects it; a SIGHUP reload re-reads the password file and
  disconnects a password client whose line went or changed; everyone else stays connected.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.broker import (
    BrokerConfig,
    BrokerError,
    DynsecControl,
    MosquittoProcess,
    TlsListener,
    free_port,
    render_config,
)
from gateway.broker import auth as auth_module
from gateway.broker import control as control_module
from gateway.broker.auth import (
    BrokerAuthFiles,
    BrokerAuthSync,
    ServiceIdentity,
    VehicleIdentity,
    commands_per_message,
    estimate_control_s,
    generate_password,
    hash_password,
    plan_dynsec_changes,
    render_dynsec,
    render_password_file,
    verify_mqtt_password,
)
from gateway.broker.control import DynsecCommandError
from gateway.broker.vehicle_auth import ensure_vehicle_auth_plugin
from schemas.commands import command_result_topic, command_topic
from schemas.feedback import feedback_topic
from schemas.topics import Channel, topic_for
from schemas.vin import VIN_PATTERN
from tests.support.broker import VIN_A, VIN_B, VIN_C, ClosedBroker, start_closed_broker
from tests.support.mqtt_raw import NOT_AUTHORIZED, TIMEOUT, Mqtt5Client
from tests.support.waiting import wait_until

__all__ = ["NOT_AUTHORIZED", "TIMEOUT", "VIN_A", "VIN_B", "VIN_C", "Mqtt5Client"]

SERVICE = "telematics-gateway"
CONTROL = "telematics-broker-admin"
SHARE_FILTER = "$share/telematics-gateway/v1/vehicles/+/telemetry"

_HASH_RE = re.compile(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


# --- fixtures ---------------------------------------------------------------------------------


class Fleet:
    """A running closed broker with two provisioned vehicles (A, B) and the service account."""

    def __init__(self, closed: ClosedBroker) -> None:
        self.closed = closed
        self.broker = closed.broker
        self.clients: list[Mqtt5Client] = []

    def password(self, username: str) -> str:
        if username == SERVICE:
            return self.closed.service[1]
        return self.closed.vehicles.get(username) or "no-such-password"

    def connect(self, username: str | None, client_id: str | None = None) -> Mqtt5Client:
        """Connect with ``username``'s password; fail the test unless it is accepted."""
        client, code = self.try_connect(username, client_id)
        assert code == 0, f"{username} was refused with {code:#x}"
        return client

    def try_connect(
        self, username: str | None, client_id: str | None = None, password: str | None = None
    ) -> tuple[Mqtt5Client, int]:
        if password is None and username is not None:
            password = self.password(username)
        client, code = Mqtt5Client.connect(
            self.broker.host,
            self.broker.port,
            client_id or username or "anonymous",
            username=username,
            password=password,
        )
        self.clients.append(client)
        return client, code

    def service_subscriber(self, topic_filter: str = "v1/#", name: str = "svc-sub") -> Mqtt5Client:
        client = self.connect(SERVICE, name)
        assert client.subscribe(topic_filter) < 0x80
        return client


@pytest.fixture(scope="session")
def vehicle_auth_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vehicle password plugin (decision 0055), compiled once for the session."""
    return ensure_vehicle_auth_plugin(tmp_path_factory.mktemp("vehicle-auth-plugin"))


@pytest.fixture(params=["password_file", "vehicle_auth"])
def fleet(
    request: pytest.FixtureRequest, tmp_path: Path, vehicle_auth_plugin: Path
) -> Iterator[Fleet]:
    """Every test of the running broker twice: vehicle passwords in the password file
    (without a compiler), and in the vehicle password plugin's table (decision 0055)."""
    closed = start_closed_broker(
        tmp_path,
        vehicles={VIN_A: generate_password(), VIN_B: generate_password()},
        persistence=False,
        vehicle_auth=vehicle_auth_plugin if request.param == "vehicle_auth" else None,
    )
    fleet = Fleet(closed)
    try:
        yield fleet
    finally:
        for client in fleet.clients:
            client.close()
        closed.sync.stop()
        closed.broker.stop()


def _delivered_in_order(subscriber: Mqtt5Client, expected: list[tuple[str, bytes]]) -> None:
    """The subscriber receives exactly ``expected``, in order, and nothing in between."""
    got = [subscriber.receive() for _ in expected]
    assert got == expected


# --- password hashes --------------------------------------------------------------------------


def test_hash_password_uses_mosquittos_pbkdf2_format() -> None:
    hashed = hash_password("s3cret")
    match = _HASH_RE.fullmatch(hashed)
    assert match is not None, hashed
    iterations, salt, digest = int(match[1]), base64.b64decode(match[2]), base64.b64decode(match[3])
    assert iterations == 101
    assert len(salt) == 12  # Mosquitto drops entries with any other salt length
    assert digest == hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, 101)
    assert hash_password("s3cret") != hashed  # a new salt every time
    assert hash_password("s3cret", salt=salt) == hashed
    assert hash_password("s3cret", salt=salt, iterations=1000).startswith("$7$1000$")


def test_hash_password_is_what_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    # part of the mosquitto package scripts/setup.sh installs: missing is a setup failure
    assert tool is not None, "mosquitto_passwd is not installed (package mosquitto)"
    path = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(path), VIN_A, "pässword"], check=True, timeout=10)
    username, reference = path.read_text().strip().split(":", 1)
    assert username == VIN_A
    match = _HASH_RE.fullmatch(reference)
    assert match is not None, reference
    salt = base64.b64decode(match[2])
    assert hash_password("pässword", salt=salt, iterations=int(match[1])) == reference
    assert verify_mqtt_password(password="pässword", password_hash=reference)
    assert not verify_mqtt_password(password="password", password_hash=reference)


def test_verify_mqtt_password() -> None:
    hashed = hash_password("correct horse")
    assert verify_mqtt_password(password="correct horse", password_hash=hashed)
    assert not verify_mqtt_password(password="correct horsE", password_hash=hashed)
    assert not verify_mqtt_password(password="", password_hash=hashed)
    for malformed in ("", "plain", "$7$101$AAAA$BBBB", "$7$0$" + hashed[7:], hashed + "\n"):
        assert not verify_mqtt_password(password="correct horse", password_hash=malformed)
    # the older $6$ (one SHA-512 round) that Mosquitto 2.0 still reads
    salt = bytes(range(12))
    legacy_digest = hashlib.sha512(b"old" + salt).digest()
    legacy = f"$6${base64.b64encode(salt).decode()}${base64.b64encode(legacy_digest).decode()}"
    assert verify_mqtt_password(password="old", password_hash=legacy)
    assert not verify_mqtt_password(password="new", password_hash=legacy)


@pytest.mark.parametrize(
    ("password", "kwargs", "message"),
    [
        ("", {}, "empty"),
        ("a\x00b", {}, "NUL"),
        ("pw", {"salt": b"short"}, "12 bytes"),
        ("pw", {"iterations": 0}, "iterations"),
    ],
)
def test_hash_password_rejects(password: str, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hash_password(password, **kwargs)  # type: ignore[arg-type]


def test_generate_password_is_long_random_and_url_safe() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    for pw in passwords:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", pw)
        assert len(pw) * 6 >= 128  # bits of entropy: 6 per URL-safe base64 character


# --- identities and rendering -----------------------------------------------------------------


def test_vin_alphabet_is_the_device_contracts() -> None:
    assert f"^{auth_module._VIN_RE.pattern}$" == VIN_PATTERN


def test_vehicle_topics_are_the_device_contracts() -> None:
    write, read = auth_module.vehicle_topics(VIN_A)
    assert set(write) == {
        topic_for(VIN_A, Channel.TELEMETRY),
        topic_for(VIN_A, Channel.EVENTS),
        topic_for(VIN_A, Channel.STATUS),
        command_result_topic(VIN_A),
    }
    assert read == (command_topic(VIN_A), feedback_topic(VIN_A))


@pytest.mark.parametrize(
    "vin",
    [
        "1HGCM82633A00435",  # 16 characters
        "1hgcm82633a004352",  # lower case
        "1HGCM82633A00435I",  # I is not in the VIN alphabet
        "1HGCM82633A00435\n",
        f"{VIN_A}\ntopic readwrite #",
        "",
    ],
)
def test_vehicle_identity_rejects_invalid_vins(vin: str) -> None:
    with pytest.raises(ValueError, match="invalid VIN"):
        VehicleIdentity(vin, None)


def test_render_password_file_lists_password_identities_sorted() -> None:
    h = {n: hash_password(n) for n in ("a", "b", "s")}
    text = render_password_file(
        [
            VehicleIdentity(VIN_B, h["b"]),
            VehicleIdentity(VIN_C, None),
            VehicleIdentity(VIN_A, h["a"]),
        ],
        [ServiceIdentity("svc", h["s"])],
    )
    entries = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert entries == [f"svc:{h['s']}", f"{VIN_A}:{h['a']}", f"{VIN_B}:{h['b']}"]
    # the certificate-only vehicle has no line: it cannot log in with any password
    assert VIN_C not in text
    # comments must not look like entries to Mosquitto, which splits at the first ':'
    assert all(":" not in ln for ln in text.splitlines() if ln.startswith("#"))


@pytest.mark.parametrize(
    "name",
    [
        "",
        "with space",
        "a:b",
        "gw\ntopic readwrite #",
        "#comment",
        "x" * 65,
        "caf\u00e9",
        VIN_A,  # a service account must never shadow a vehicle
    ],
)
def test_service_identity_rejects_names_that_could_inject(name: str) -> None:
    with pytest.raises(ValueError, match="invalid service account name"):
        ServiceIdentity(name, hash_password("pw"))


@pytest.mark.parametrize(
    "bad_hash",
    [
        "plain-text",
        "$7$101$AAAA$BBBB",  # decodes, but wrong salt and hash lengths
        hash_password("pw") + "\nintruder:$7$101$x$y",
        hash_password("pw") + ":extra",
    ],
)
def test_identities_reject_malformed_hashes(bad_hash: str) -> None:
    with pytest.raises(ValueError, match="hash"):
        VehicleIdentity(VIN_A, bad_hash)
    with pytest.raises(ValueError, match="hash"):
        ServiceIdentity(SERVICE, bad_hash)


def _acls(document: Mapping[str, Any], role: str) -> set[tuple[str, str, bool]]:
    [found] = [r for r in document["roles"] if r["rolename"] == role]
    return {(a["acltype"], a["topic"], a["allow"]) for a in found["acls"]}


def test_render_dynsec_gives_each_vehicle_only_its_own_topics() -> None:
    document = json.loads(
        render_dynsec(
            [VehicleIdentity(VIN_B, None), VehicleIdentity(VIN_A, hash_password("a"))],
            [
                ServiceIdentity(SERVICE, hash_password("s")),
                ServiceIdentity(CONTROL, hash_password("c"), kind="control"),
            ],
        )
    )
    # nothing but unsubscribing is allowed by default: an unknown user name has no right
    assert document["defaultACLAccess"] == {
        "publishClientSend": False,
        "publishClientReceive": False,
        "subscribe": False,
        "unsubscribe": True,
    }
    clients = {c["username"]: c for c in document["clients"]}
    assert list(clients) == [CONTROL, SERVICE, VIN_A, VIN_B]  # sorted
    for vin in (VIN_A, VIN_B):
        # the client id is bound to the VIN, and no password: the password file decides
        assert clients[vin] == {
            "username": vin,
            "clientid": vin,
            "roles": [{"rolename": f"vehicle-{vin}"}],
        }
        assert _acls(document, f"vehicle-{vin}") == {
            ("publishClientSend", topic_for(vin, Channel.TELEMETRY), True),
            ("publishClientSend", topic_for(vin, Channel.EVENTS), True),
            ("publishClientSend", topic_for(vin, Channel.STATUS), True),
            ("publishClientSend", command_result_topic(vin), True),
            ("subscribeLiteral", command_topic(vin), True),
            ("publishClientReceive", command_topic(vin), True),
            ("subscribeLiteral", feedback_topic(vin), True),
            ("publishClientReceive", feedback_topic(vin), True),
        }
    assert "clientid" not in clients[SERVICE]  # several gateway processes, distinct ids
    assert clients[CONTROL]["clientid"] == CONTROL
    assert _acls(document, "telematics-broker-admin") == {
        ("publishClientSend", "$CONTROL/dynamic-security/v1", True),
        ("subscribeLiteral", "$CONTROL/dynamic-security/v1/response", True),
        ("publishClientReceive", "$CONTROL/dynamic-security/v1/response", True),
        # to delete a VIN's retained status when it changes hands or leaves (issue 16)
        ("publishClientSend", "v1/vehicles/+/status", True),
    }
    assert all("password" not in c for c in document["clients"])
    # the same identities always render the same bytes
    again = render_dynsec(
        [VehicleIdentity(VIN_A, hash_password("x")), VehicleIdentity(VIN_B, None)],
        [
            ServiceIdentity(CONTROL, hash_password("y"), kind="control"),
            ServiceIdentity(SERVICE, hash_password("z")),
        ],
    )
    assert json.loads(again) == document


def test_render_refuses_duplicate_usernames() -> None:
    h = hash_password("pw")
    with pytest.raises(ValueError, match="twice"):
        render_dynsec([VehicleIdentity(VIN_A, h), VehicleIdentity(VIN_A, None)], [])
    with pytest.raises(ValueError, match="twice"):
        render_password_file(
            [], [ServiceIdentity(SERVICE, h), ServiceIdentity(SERVICE, h, kind="control")]
        )


def test_plan_dynsec_changes_and_its_commands() -> None:
    changes = plan_dynsec_changes([SERVICE, CONTROL, VIN_A, VIN_B], [VIN_C, VIN_A])
    assert changes.add == (VIN_C,)
    assert changes.remove == (VIN_B,)
    assert len(changes) == 2
    commands = changes.add_commands() + changes.remove_commands()
    assert [(c["command"], c.get("username") or c.get("rolename")) for c in commands] == [
        ("createRole", f"vehicle-{VIN_C}"),
        ("createClient", VIN_C),
        ("deleteClient", VIN_B),
        ("deleteRole", f"vehicle-{VIN_B}"),
    ]
    assert not plan_dynsec_changes([SERVICE, VIN_A], [VIN_A])


def test_control_cost_model_keeps_messages_short_and_bulk_changes_offline() -> None:
    # the measured cost: ~30 us per vehicle the plugin holds, per command, two per vehicle
    assert estimate_control_s(1, 10_000) == pytest.approx(0.6, rel=0.01)
    assert commands_per_message(10_000) == 2  # one vehicle per message at 10,000
    assert commands_per_message(100) == 166
    assert commands_per_message(0, 1000) == 16  # priced at the size it grows to
    assert commands_per_message(0) % 2 == 0
    # at 10,000 vehicles, a change of 10 is applied live, one of 20 is not
    assert estimate_control_s(10, 10_000) < auth_module.LIVE_CHANGES_BUDGET_S
    assert estimate_control_s(20, 10_000) > auth_module.LIVE_CHANGES_BUDGET_S
    assert estimate_control_s(1000, 0) > auth_module.LIVE_CHANGES_BUDGET_S


# --- files ------------------------------------------------------------------------------------


def test_auth_files_ensure_write_and_change_detection(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    files.ensure()
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    for path in (files.password_file, files.dynsec_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert files.password_file.read_text() == render_password_file([], [])
    assert json.loads(files.dynsec_file.read_text())["clients"] == []
    vehicles = [VehicleIdentity(VIN_A, hash_password("a"))]
    services = [ServiceIdentity(SERVICE, hash_password("s"))]
    assert files.write_password_file(vehicles, services) is True
    assert files.write_password_file(vehicles, services) is False  # same: nothing to reload
    files.ensure()  # keeps what is there
    assert VIN_A in files.password_file.read_text()
    files.write(vehicles, services)
    assert VIN_A in files.dynsec_file.read_text()
    files.write([], services)
    assert VIN_A not in files.password_file.read_text() + files.dynsec_file.read_text()
    for path in (files.password_file, files.dynsec_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in files.directory.iterdir()) == sorted(
        [files.password_file.name, files.dynsec_file.name]
    )  # no temporary files left behind
    before = files.dynsec_file.read_text()
    with pytest.raises(ValueError, match="twice"):
        files.write([VehicleIdentity(VIN_A, None)] * 2, services)
    assert files.dynsec_file.read_text() == before  # the failed write changed nothing


# --- configuration ----------------------------------------------------------------------------


def _directives(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_render_config_with_auth_files_and_tls_listener(tmp_path: Path) -> None:
    tls = TlsListener(
        8883,
        Path("pki/ca.crt"),
        tmp_path / "server.crt",
        tmp_path / "server.key",
        crlfile=tmp_path / "crl.pem",
    )
    assert tls.cafile.is_absolute()
    plugin = tmp_path / "dynsec.so"
    cfg = BrokerConfig(
        port=1884,
        data_dir=tmp_path,
        allow_anonymous=False,
        password_file=Path("auth/pw"),
        dynsec_config_file=tmp_path / "dynsec.json",
        dynsec_plugin=plugin,
        tls=tls,
    )
    assert cfg.password_file is not None
    assert cfg.password_file.is_absolute()
    text = render_config(cfg)
    directives = _directives(text)
    assert directives.index("listener 1884 127.0.0.1") < directives.index("listener 8883 127.0.0.1")
    tls_block = directives[directives.index("listener 8883 127.0.0.1") :]
    for expected in [
        "allow_anonymous false",
        f"password_file {cfg.password_file}",
        f"plugin {plugin}",
        f"plugin_opt_config_file {tmp_path / 'dynsec.json'}",
        "max_packet_size 1048576",  # 1 MiB (decisions 0008 and 0011)
        "persistent_client_expiration 168h",  # the gateway's 7-day sessions, nobody more
    ]:
        assert expected in directives
    assert not any(d.startswith(("acl_file", "message_size_limit")) for d in directives)
    assert tls_block[1:] == [
        f"cafile {tls.cafile}",
        f"certfile {tmp_path / 'server.crt'}",
        f"keyfile {tmp_path / 'server.key'}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"crlfile {tmp_path / 'crl.pem'}",
    ]
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line in directives and not line.startswith("log_type"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"
    assert "password_file" not in render_config(BrokerConfig(port=1884, data_dir=tmp_path))


def test_config_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="line break"):
        BrokerConfig(port=1884, data_dir=tmp_path, password_file=Path("a\nlistener 1 x"))
    with pytest.raises(ValueError, match="line break"):
        BrokerConfig(port=1884, data_dir=tmp_path, dynsec_config_file=Path("a\rb"))
    with pytest.raises(ValueError, match="whole hours"):
        BrokerConfig(port=1884, data_dir=tmp_path, session_expiry_cap_s=90)
    with pytest.raises(ValueError, match="max_packet_size"):
        BrokerConfig(port=1884, data_dir=tmp_path, max_packet_size=10)
    files = (tmp_path / "ca", tmp_path / "crt", tmp_path / "key")
    with pytest.raises(ValueError, match="port of its own"):
        BrokerConfig(port=1884, data_dir=tmp_path, tls=TlsListener(1884, *files))
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        TlsListener(0, *files)
    with pytest.raises(ValueError, match="line break"):
        TlsListener(8883, tmp_path / "ca\nx", *files[1:])
    with pytest.raises(ValueError, match="require_certificate"):
        TlsListener(8883, *files, require_certificate=False, use_username_as_clientid=False)
    with pytest.raises(ValueError, match="use_identity_as_username"):
        TlsListener(8883, *files, use_identity_as_username=False)
    with pytest.raises(ValueError, match="require_certificate"):
        TlsListener(
            8883,
            *files,
            require_certificate=False,
            use_identity_as_username=False,
            use_username_as_clientid=False,
            crlfile=tmp_path / "crl",
        )
    assert TlsListener(8883, *files).url == "mqtts://127.0.0.1:8883"


def test_dynsec_plugin_is_found_and_a_missing_one_explained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gateway.broker import mosquitto

    found = mosquitto.find_dynsec_plugin()  # scripts/setup.sh installs Debian's mosquitto
    assert found.name == "mosquitto_dynamic_security.so"
    assert found.is_file()
    monkeypatch.setattr(mosquitto, "DYNSEC_PLUGIN_GLOBS", (str(tmp_path / "*" / "x.so"),))
    with pytest.raises(mosquitto.MosquittoNotFoundError, match="Dynamic Security plugin"):
        mosquitto.find_dynsec_plugin()


# --- the real broker: authentication ----------------------------------------------------------


def test_broker_starts_with_empty_auth_files_and_refuses_everyone(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    files.ensure()
    config = BrokerConfig(
        port=free_port(),
        data_dir=tmp_path / "mosquitto",
        persistence=False,
        allow_anonymous=False,
        password_file=files.password_file,
        dynsec_config_file=files.dynsec_file,
    )
    with MosquittoProcess(config) as broker:
        client, code = Mqtt5Client.connect(
            broker.host, broker.port, "someone", username=SERVICE, password="x"
        )
        client.close()
        assert code == NOT_AUTHORIZED


def test_vehicle_logs_in_with_a_hash_made_by_hash_password(fleet: Fleet) -> None:
    fleet.connect(VIN_A)
    fleet.connect(SERVICE)


@pytest.mark.parametrize(
    ("username", "password", "client_id"),
    [
        (VIN_A, "wrong password", VIN_A),
        (VIN_A, None, VIN_A),  # username without password
        (None, None, "anonymous"),
        ("1HGCM82633A009999", "whatever", "1HGCM82633A009999"),  # nobody provisioned it
        (VIN_A, "right", "evil-1"),  # the right password, but not its own client id
        (VIN_A, "right", VIN_B),  # ... nor another vehicle's
    ],
)
def test_bad_or_missing_credentials_are_refused(
    fleet: Fleet, username: str | None, password: str | None, client_id: str
) -> None:
    if password == "right":
        password = fleet.password(VIN_A)
    client, code = Mqtt5Client.connect(
        fleet.broker.host, fleet.broker.port, client_id, username=username, password=password
    )
    fleet.clients.append(client)
    assert code == NOT_AUTHORIZED
    assert client.wait_closed()


def test_vehicle_publishes_to_its_own_topics_only(fleet: Fleet) -> None:
    service = fleet.service_subscriber()
    vehicle = fleet.connect(VIN_A)
    own = [
        topic_for(VIN_A, Channel.TELEMETRY),
        topic_for(VIN_A, Channel.EVENTS),
        topic_for(VIN_A, Channel.STATUS),
        command_result_topic(VIN_A),
    ]
    forbidden = [
        topic_for(VIN_B, Channel.TELEMETRY),  # another vehicle's telemetry
        command_topic(VIN_A),  # forging commands to itself
        command_result_topic(VIN_B),
        "v1/other",
        "$CONTROL/dynamic-security/v1",
    ]
    for topic in forbidden:
        assert vehicle.publish(topic, b"spoofed") == NOT_AUTHORIZED, topic
    for topic in own:
        assert vehicle.publish(topic, b"genuine") < 0x80, topic
    # in order, and none of the forbidden ones (they were sent first)
    _delivered_in_order(service, [(t, b"genuine") for t in own])
    assert service.receive(timeout=0.2) is None


def test_vehicle_subscribes_to_its_own_command_topic_and_nothing_else(fleet: Fleet) -> None:
    vehicle = fleet.connect(VIN_A)
    for refused in [
        command_topic(VIN_B),
        "v1/#",
        "v1/vehicles/+/commands",
        SHARE_FILTER,
        "#",
        "$SYS/#",
    ]:
        assert vehicle.subscribe(refused) == NOT_AUTHORIZED, refused
    assert vehicle.subscribe(command_topic(VIN_A)) == 1
    service = fleet.connect(SERVICE)
    assert service.publish(command_topic(VIN_B), b"unlock B") < 0x80
    assert service.publish(command_topic(VIN_A), b"lock A") < 0x80
    # A's own command arrives, and B's never did before it
    assert vehicle.receive() == (command_topic(VIN_A), b"lock A")
    assert vehicle.receive(timeout=0.2) is None


def test_service_account_reads_through_shared_subscriptions_and_sends_only_commands(
    fleet: Fleet,
) -> None:
    gateway_1 = fleet.service_subscriber(SHARE_FILTER, "gateway-1")
    commands = fleet.service_subscriber(
        "$share/telematics-commands/v1/vehicles/+/commands/result", "commands-1"
    )
    for vin in (VIN_A, VIN_B):
        vehicle = fleet.connect(vin)
        assert vehicle.publish(topic_for(vin, Channel.TELEMETRY), vin.encode()) < 0x80
        assert vehicle.publish(command_result_topic(vin), b"ok") < 0x80
    _delivered_in_order(
        gateway_1,
        [(topic_for(v, Channel.TELEMETRY), v.encode()) for v in (VIN_A, VIN_B)],
    )
    _delivered_in_order(commands, [(command_result_topic(v), b"ok") for v in (VIN_A, VIN_B)])
    # least privilege: the gateway's account cannot speak for a vehicle, nor administer
    assert gateway_1.publish(topic_for(VIN_A, Channel.TELEMETRY), b"forged") == NOT_AUTHORIZED
    assert gateway_1.publish("$CONTROL/dynamic-security/v1", b"{}") == NOT_AUTHORIZED
    assert gateway_1.subscribe("#") == NOT_AUTHORIZED
    assert gateway_1.subscribe("$CONTROL/#") == NOT_AUTHORIZED


# --- the real broker: changes while it runs ---------------------------------------------------


def test_a_new_vehicle_is_admitted_without_dropping_connected_clients(fleet: Fleet) -> None:
    service = fleet.service_subscriber()
    old = fleet.connect(VIN_A)
    assert fleet.try_connect(VIN_C, password="not yet")[1] == NOT_AUTHORIZED

    fleet.closed.add_vehicle(VIN_C)

    new = fleet.connect(VIN_C)
    assert new.subscribe(command_topic(VIN_C)) == 1
    assert new.publish(topic_for(VIN_C, Channel.STATUS), b"new") < 0x80
    # the connections made before the change still work, with their rights
    assert old.publish(topic_for(VIN_A, Channel.TELEMETRY), b"old") < 0x80
    assert old.publish(topic_for(VIN_C, Channel.TELEMETRY), b"spoof") == NOT_AUTHORIZED
    _delivered_in_order(
        service,
        [(topic_for(VIN_C, Channel.STATUS), b"new"), (topic_for(VIN_A, Channel.TELEMETRY), b"old")],
    )
    assert not old.closed
    assert not service.closed
    assert "Client 1HGCM82633A004352 disconnected" not in fleet.broker.log_path.read_text()


def test_a_revoked_vehicle_is_cut_off_at_once(fleet: Fleet) -> None:
    service = fleet.service_subscriber()
    password = fleet.password(VIN_A)
    revoked = fleet.connect(VIN_A)
    kept = fleet.connect(VIN_B)

    fleet.closed.remove_vehicle(VIN_A)

    # deleting its plugin client disconnects it; the password file refuses it from then on
    assert revoked.wait_closed(timeout=TIMEOUT)
    assert fleet.try_connect(VIN_A, password=password)[1] == NOT_AUTHORIZED
    assert kept.publish(topic_for(VIN_B, Channel.TELEMETRY), b"still here") < 0x80
    assert service.receive() == (topic_for(VIN_B, Channel.TELEMETRY), b"still here")


def test_a_new_password_disconnects_the_old_one(fleet: Fleet) -> None:
    old_password = fleet.password(VIN_A)
    unit = fleet.connect(VIN_A)
    fleet.closed.vehicles[VIN_A] = generate_password()
    fleet.closed.apply()
    assert unit.wait_closed(timeout=TIMEOUT)
    assert fleet.try_connect(VIN_A, password=old_password)[1] == NOT_AUTHORIZED
    fleet.connect(VIN_A)


def test_reload_reports_what_the_broker_rejected(fleet: Fleet) -> None:
    with fleet.closed.files.password_file.open("a") as f:
        f.write("BROKEN:$7$101$AAAA$BBBB\n")
    with pytest.raises(BrokerError, match="BROKEN, removing entry"):
        fleet.broker.reload()
    fleet.closed.files.write_password_file(fleet.closed.identities(), fleet.closed.sync.services)
    fleet.broker.reload()  # a good file reloads cleanly again
    fleet.connect(VIN_A)


def test_reload_needs_a_running_broker(tmp_path: Path) -> None:
    broker = MosquittoProcess(BrokerConfig(port=free_port(), data_dir=tmp_path))
    with pytest.raises(BrokerError, match="not running"):
        broker.reload()


def test_control_reports_refused_commands_and_a_refused_login(fleet: Fleet) -> None:
    user, password = fleet.closed.control
    control = DynsecControl(fleet.broker.host, fleet.broker.port, user, password)
    with pytest.raises(DynsecCommandError, match="Client not found") as refused:
        control.execute([{"command": "deleteClient", "username": VIN_C}])
    assert refused.value.failures[0][1] == "Client not found"
    # tolerated: the plugin already is where the command would take it
    [answer] = control.execute(
        [{"command": "deleteClient", "username": VIN_C}], tolerate=frozenset({"Client not found"})
    )
    assert answer["error"] == "Client not found"
    with pytest.raises(BrokerError, match="refused 'telematics-broker-admin' as"):
        DynsecControl(fleet.broker.host, fleet.broker.port, user, "wrong").execute([])
    # the gateway's service account may not administer the plugin
    with pytest.raises(BrokerError, match="refused"):
        DynsecControl(
            fleet.broker.host, fleet.broker.port, SERVICE, fleet.closed.service[1]
        ).execute([{"command": "listClients"}])


def test_control_splits_many_commands_into_several_messages(fleet: Fleet) -> None:
    user, password = fleet.closed.control
    control = DynsecControl(fleet.broker.host, fleet.broker.port, user, password)
    # the accounts Dynamic Security holds in both modes (with the vehicle_auth plugin the
    # vehicles are not its clients: decision 0060)
    names = (SERVICE, CONTROL, SERVICE)
    commands = [{"command": "getClient", "username": v} for v in names]
    answers = control.execute(commands, per_message=2)
    assert [a["data"]["client"]["username"] for a in answers] == list(names)
    assert [len(c) for c in control_module._chunks(list(commands), 2)] == [2, 1]
    big = [{"command": "getClient", "username": "x" * 50_000} for _ in range(9)]
    assert [len(c) for c in control_module._chunks(big, 1000)] == [4, 4, 1]  # 200 KiB each


# --- BrokerAuthSync ---------------------------------------------------------------------------


def test_auth_sync_applies_only_what_changed(tmp_path: Path) -> None:
    closed = start_closed_broker(tmp_path, persistence=False)
    sync, source = closed.sync, closed.source
    reloads: list[int] = []
    real_reload = closed.broker.reload

    def reload() -> None:
        real_reload()
        reloads.append(source.version)

    sync._reload = reload  # count the reloads of this test
    try:
        assert sync.synced_version == source.version  # render() recorded what it wrote
        assert sync.sync_once() is False  # same version: not even read
        source.set([])  # new version, same content: no change, no reload
        assert sync.sync_once() is False
        password = generate_password()
        closed.vehicles[VIN_A] = password
        source.set(closed.identities())
        assert sync.sync_once() is True
        assert reloads == [source.version]  # the password file changed: one reload
        client, code = Mqtt5Client.connect(
            closed.broker.host, closed.broker.port, VIN_A, username=VIN_A, password=password
        )
        client.disconnect()
        assert code == 0
        # a certificate-only vehicle needs no reload: it is in the plugin only
        closed.vehicles[VIN_B] = None
        source.set(closed.identities())
        assert sync.sync_once() is True
        assert len(reloads) == 1
        log = closed.broker.log_path.read_text()
        assert f"createClient | username={VIN_B}" in log
    finally:
        closed.broker.stop()


class _Control:
    """A control channel that answers like the plugin for an empty broker."""

    def __init__(self) -> None:
        self.sent: list[list[Mapping[str, Any]]] = []

    def execute(
        self,
        commands: Sequence[Mapping[str, Any]],
        *,
        per_message: int = 1000,
        tolerate: frozenset[str] = frozenset(),
    ) -> list[dict[str, Any]]:
        self.sent.append(list(commands))
        if commands and commands[0]["command"] == "listClients":
            return [{"command": "listClients", "data": {"clients": [SERVICE]}}]
        return [{"command": c["command"]} for c in commands]


def test_auth_sync_retries_a_failed_reload(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    attempts: list[str] = []

    def flaky_reload() -> None:
        attempts.append("reload")
        if len(attempts) == 1:
            raise BrokerError("broker restarting")

    sync = BrokerAuthSync(
        files,
        services=[ServiceIdentity(SERVICE, hash_password("s"))],
        version=lambda: 7,
        identities=list,
        control=_Control(),
        reload=flaky_reload,
    )
    with pytest.raises(BrokerError):
        sync.sync_once()
    assert sync.synced_version is None
    # the file is already written, so nothing "changes"; the reload is still owed
    assert sync.sync_once() is True
    assert attempts == ["reload", "reload"]
    assert sync.sync_once() is False


def test_auth_sync_restarts_the_broker_for_a_bulk_change(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth")
    control = _Control()
    restarts: list[str] = []
    many = [VehicleIdentity(f"1HGCM8263{i:08d}") for i in range(2000)]
    sync = BrokerAuthSync(
        files,
        services=[],
        version=lambda: 1,
        identities=lambda: many,
        control=control,
        reload=lambda: None,
        restart=lambda: restarts.append("restart"),
    )
    assert sync.sync_once() is True
    assert restarts == ["restart"]
    assert [c[0]["command"] for c in control.sent] == ["listClients"]  # nothing else sent
    # without a restart at hand, the change goes through the plugin after all
    sync = BrokerAuthSync(
        files,
        services=[],
        version=lambda: 1,
        identities=lambda: many[:3],
        control=control,
        reload=lambda: None,
    )
    assert sync.sync_once() is True
    assert [c["command"] for c in control.sent[-1]] == ["createRole", "createClient"] * 3


def test_auth_sync_thread_follows_the_source_and_survives_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    closed = start_closed_broker(tmp_path, persistence=False)
    sync, source, broker = closed.sync, closed.source, closed.broker
    passwords = {VIN_A: generate_password(), VIN_B: generate_password()}

    def code(vin: str) -> int:
        client, result = Mqtt5Client.connect(
            broker.host, broker.port, vin, username=vin, password=passwords[vin]
        )
        client.disconnect()
        return result

    caplog.set_level(logging.WARNING, logger="gateway.broker.auth")
    sync.start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            sync.start()
        source.fail_with = ConnectionError("state database unavailable")
        wait_until(
            lambda: "broker identity sync failed" in caplog.text, timeout=TIMEOUT, what="error log"
        )
        with source.lock:
            source.fail_with = None
            source.vehicles = [VehicleIdentity(VIN_A, hash_password(passwords[VIN_A]))]
            source.version += 1
        wait_until(
            lambda: sync.synced_version == source.version, timeout=TIMEOUT, what="sync after error"
        )
        assert code(VIN_A) == 0

        source.set([VehicleIdentity(VIN_B, hash_password(passwords[VIN_B]))])  # A out, B in
        wait_until(
            lambda: sync.synced_version == source.version, timeout=TIMEOUT, what="second sync"
        )
        assert code(VIN_A) == NOT_AUTHORIZED
        assert code(VIN_B) == 0
    finally:
        sync.stop()
        broker.stop()


def test_the_plugin_file_is_rendered_again_before_a_restart(tmp_path: Path) -> None:
    """At run time the plugin owns its file; what the broker starts with is the identity
    source's rendering, not whatever the plugin saved last."""
    closed = start_closed_broker(tmp_path, persistence=False)
    try:
        closed.add_vehicle(VIN_A)
        saved = json.loads(closed.files.dynsec_file.read_text())  # the plugin's own save
        assert VIN_A in {c["username"] for c in saved["clients"]}
        closed.vehicles.pop(VIN_A)
        closed.source.set(closed.identities())  # revoked while the sync was not looking
        closed.broker.stop()
        closed.sync.render()
        closed.broker.start()
        rendered = json.loads(closed.files.dynsec_file.read_text())
        assert VIN_A not in {c["username"] for c in rendered["clients"]}
        assert closed.sync.sync_once() is False  # nothing left to do
    finally:
        closed.broker.stop()


def test_at_fleet_scale_a_vehicle_still_reaches_only_its_own_topics(tmp_path: Path) -> None:
    """2,000 vehicles rendered into the files a broker (re)start reads, the path a bulk
    provisioning takes (``telematics bench fleet-scale``, decision 0028): a vehicle still
    cannot take another's client id, read or write another's topics, nor join the
    gateway's shared subscription."""
    vins = [f"1HGCM8263{i:08d}" for i in range(2000)]
    passwords = {vin: generate_password() for vin in (vins[0], vins[-1])}
    closed = start_closed_broker(
        tmp_path, vehicles={vin: passwords.get(vin) for vin in vins}, persistence=False
    )
    scaled = Fleet(closed)
    try:
        first, last = vins[0], vins[-1]
        _, code = scaled.try_connect(first, client_id=last)
        assert code == NOT_AUTHORIZED  # another VIN's client id
        vehicle = scaled.connect(first)
        for refused in (command_topic(last), SHARE_FILTER, "v1/vehicles/+/commands", "#"):
            assert vehicle.subscribe(refused) == NOT_AUTHORIZED, refused
        for topic in (topic_for(last, Channel.TELEMETRY), command_result_topic(last)):
            assert vehicle.publish(topic, b"spoofed") == NOT_AUTHORIZED, topic
        assert vehicle.publish(topic_for(first, Channel.TELEMETRY), b"genuine") < 0x80
        assert vehicle.subscribe(command_topic(first)) == 1
        other = scaled.connect(last)
        assert other.subscribe(command_topic(last)) == 1
    finally:
        for client in scaled.clients:
            client.close()
        closed.sync.stop()
        closed.broker.stop()
