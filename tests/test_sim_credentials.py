"""Per-vehicle broker identities for simulated units: the credentials file
(:mod:`device_sim.credentials`) and ``telematics sim --credentials`` / ``--tls-ca`` /
``--tls-cert-dir`` against a real Mosquitto that refuses anonymous clients and confines every
VIN to its own topics (password file + ACL, and a TLS listener that takes the client
certificate's CN as the user name), as the gateway's broker does.

What a gateway sees is checked with a service-account subscriber: telemetry from every VIN,
which can only arrive if each unit logged in as itself (the ACL lets a VIN publish only to its
own topics). Passwords are random per test and must never show up in the simulator's output
nor on its child processes' command lines.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gmqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gmqtt.mqtt.constants import MQTTv50

from device_sim.credentials import (
    FORMAT,
    UnitCredentials,
    VehicleCredential,
    dump_credentials,
    load_credentials,
    write_credentials,
)
from device_sim.fleet import (
    FleetSettings,
    _options,  # the resolution main() does before it starts --procs children
    build_parser,
    build_unit_settings,
    build_vehicles,
    fleet_vins,
    main,
    parse_broker_url,
)
from device_sim.procs import child_argv
from device_sim.stats import Shard
from device_sim.vehicle import make_vin
from schemas import Channel, parse_topic
from tests.support.sim_credentials import (
    SERVICE_USER,
    SecuredBroker,
    TlsFiles,
    _issue,
    credentials_for,
    secured_broker,
    sim,
)

#: VINs that are not the simulator's own (make_vin), as a real provisioning run would have
OTHER_VINS = ("WVWZZZ1JZXW000101", "WVWZZZ1JZXW000102", "WVWZZZ1JZXW000103")
TIMEOUT_S = 60.0  # a safety net for one simulator run; each takes a few seconds


def popen_sim(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "device_sim", *argv, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# --- a broker that knows every vehicle by name ---------------------------------------------------


# The broker here is set up with Mosquitto's own tools (mosquitto_passwd, a hand-written
# ACL, a CA made in the test) on purpose, not with gateway.broker: the simulator must work
# against any broker configured this way, and a bug shared by the gateway's renderers and
# the simulator would otherwise cancel out.


@dataclass
class Telemetry:
    """What the service account received: telemetry topics per VIN."""

    by_vin: dict[str, int] = field(default_factory=dict)

    def add(self, topic: str) -> None:
        parsed = parse_topic(topic)
        if parsed.channel is Channel.TELEMETRY:
            self.by_vin[parsed.vin] = self.by_vin.get(parsed.vin, 0) + 1


async def run_with_subscriber(
    broker: SecuredBroker, *runs: Sequence[str], during: Any = None
) -> tuple[Telemetry, list[subprocess.CompletedProcess[str]]]:
    """Subscribe as the service account, run the simulator command lines ``runs`` side by
    side, return what arrived and how each run ended. ``during(pids)`` runs while they do."""
    received = Telemetry()
    subscribed = asyncio.Event()
    client = gmqtt.Client(f"service-{secrets.token_hex(4)}")
    client.set_auth_credentials(SERVICE_USER, broker.passwords[SERVICE_USER])

    def on_message(_client: Any, topic: str, _payload: bytes, _qos: int, _props: Any) -> int:
        received.add(topic)
        return 0

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    await client.connect(broker.broker.host, broker.broker.port, version=MQTTv50)
    try:
        client.subscribe("v1/vehicles/+/telemetry", qos=1)
        await asyncio.wait_for(subscribed.wait(), 10)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "device_sim",
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for argv in runs
        ]
        if during is not None:
            await during([p.pid for p in procs])
        outputs = await asyncio.wait_for(
            asyncio.gather(*(p.communicate() for p in procs)), TIMEOUT_S
        )
        await asyncio.sleep(0.2)  # the last PUBLISHes on their way to the subscriber
    finally:
        await client.disconnect()
    done = [
        subprocess.CompletedProcess(list(argv), await p.wait(), out.decode(), err.decode())
        for argv, p, (out, err) in zip(runs, procs, outputs, strict=True)
    ]
    return received, done


# --- throwaway certificates ------------------------------------------------------------------


def make_tls(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _issue("test CA", directory / "ca.pem", directory / "ca.key")
    _issue(
        "127.0.0.1",
        directory / "server.pem",
        directory / "server.key",
        issuer=(ca_cert, ca_key),
    )
    return TlsFiles(
        directory / "ca.pem", directory / "server.pem", directory / "server.key", ca_key, ca_cert
    )


# --- the file format ---------------------------------------------------------------------------


def test_credentials_file_round_trips_private_and_atomic(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(16)
    original = UnitCredentials.of(
        [
            VehicleCredential(vin=make_vin(1), mqtt_username=make_vin(1), mqtt_password=password),
            VehicleCredential(
                vin=make_vin(2),
                mqtt_username=make_vin(2),
                client_cert=Path("certs/two.crt"),
                client_key=Path("certs/two.key"),
            ),
            VehicleCredential(
                vin=make_vin(3), mqtt_username="three", client_cert=tmp_path / "abs.pem"
            ),
        ],
        broker_url="mqtts://127.0.0.1:8883",
        gateway_public_key_pem=b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    path = tmp_path / "units.json"
    path.write_text("old")
    write_credentials(path, original)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    document = json.loads(path.read_bytes())
    assert document["format"] == FORMAT == "telematics-unit-credentials/1"
    assert document["vehicles"][1]["client_cert"] == "certs/two.crt"  # written as given
    assert path.read_bytes() == dump_credentials(original)

    loaded = load_credentials(path)
    assert list(loaded.vehicles) == [make_vin(1), make_vin(2), make_vin(3)]  # file order
    assert loaded.broker_url == original.broker_url
    assert loaded.gateway_public_key_pem == original.gateway_public_key_pem
    assert loaded.source == path
    assert loaded.vehicles[make_vin(1)] == original.vehicles[make_vin(1)]
    two = loaded.vehicles[make_vin(2)]
    assert two.client_cert == tmp_path / "certs/two.crt"  # relative to the file's directory
    assert two.client_key == tmp_path / "certs/two.key"
    assert two.mqtt_password is None
    assert loaded.vehicles[make_vin(3)].client_cert == tmp_path / "abs.pem"
    assert password not in repr(loaded)  # never in a log line or a traceback
    minimal = tmp_path / "minimal.json"
    minimal.write_text(json.dumps({"format": FORMAT, "vehicles": []}))
    empty = load_credentials(minimal)
    assert (dict(empty.vehicles), empty.broker_url, empty.gateway_public_key_pem) == (
        {},
        None,
        None,
    )


GOOD_ENTRY = {"vin": make_vin(1), "mqtt_username": make_vin(1), "mqtt_password": "s3cret-Pw"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", r"not valid JSON \(.* line 1 column 2\)"),
        (b'{"format": "\xff"}', "not UTF-8"),
        ("[]", "expected a JSON object"),
        ({"vehicles": []}, 'unknown credentials file format \\(no "format"\\)'),
        ({"format": "telematics-unit-credentials/2", "vehicles": []}, "format '.*/2'"),
        ({"format": FORMAT}, '"vehicles" must be a list'),
        ({"format": FORMAT, "vehicles": [], "extra": 1}, "unknown key\\(s\\) 'extra'"),
        ({"format": FORMAT, "vehicles": [], "broker": "mqtt://x"}, '"broker" must be an object'),
        ({"format": FORMAT, "vehicles": [], "broker": {"url": 5}}, "broker.url must be"),
        ({"format": FORMAT, "vehicles": [], "gateway_public_key": "abc"}, "must be PEM"),
        ({"format": FORMAT, "vehicles": [GOOD_ENTRY, "x"]}, r"vehicles\[1\]: expected an object"),
        (
            {"format": FORMAT, "vehicles": [{**GOOD_ENTRY, "vin": "WSMZZZ0000000000O"}]},
            r"vehicles\[0\] \(WSMZZZ0000000000O\): invalid VIN",
        ),
        (
            {"format": FORMAT, "vehicles": [{**GOOD_ENTRY, "vin": 17}]},
            r"vehicles\[0\]: invalid VIN 17",
        ),
        (
            {"format": FORMAT, "vehicles": [GOOD_ENTRY, GOOD_ENTRY]},
            rf"vehicles\[1\]: duplicate VIN {make_vin(1)} \(also vehicles\[0\]\)",
        ),
        (
            {"format": FORMAT, "vehicles": [{"vin": make_vin(1)}]},
            r"vehicles\[0\] \(WSMZZZ00000000001\): no \"mqtt_username\"",
        ),
        ({"format": FORMAT, "vehicles": [{"mqtt_username": "u"}]}, r"vehicles\[0\]: no \"vin\""),
        (
            {"format": FORMAT, "vehicles": [{**GOOD_ENTRY, "mqtt_password": 1234}]},
            r"vehicles\[0\] \(WSMZZZ00000000001\): mqtt_password must be a non-empty string",
        ),
        (
            {"format": FORMAT, "vehicles": [{**GOOD_ENTRY, "mqtt_pasword": "x"}]},
            r"vehicles\[0\] \(WSMZZZ00000000001\): unknown key\(s\) 'mqtt_pasword'",
        ),
        (
            {"format": FORMAT, "vehicles": [{**GOOD_ENTRY, "client_key": "k.pem"}]},
            "client_key needs client_cert",
        ),
        (
            {"format": FORMAT, "vehicles": [{**GOOD_ENTRY, "client_cert": ""}]},
            "client_cert must be a non-empty path",
        ),
    ],
)
def test_malformed_credentials_name_the_file_and_the_entry(
    tmp_path: Path, content: Any, expected: str
) -> None:
    path = tmp_path / "units.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=expected) as info:
        load_credentials(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "s3cret-Pw" not in str(info.value)


def test_fleet_vins_are_the_simulator_fleet_whatever_the_seed() -> None:
    vins = fleet_vins(4)
    assert vins == [make_vin(i) for i in range(1, 5)]
    for seed in (1, 99):
        built = build_vehicles(FleetSettings(count=4, seed=seed), start_ms=0)
        assert [v.vin for v in built] == vins
    provisioned = build_vehicles(FleetSettings(count=3, vins=OTHER_VINS), start_ms=0)
    assert [v.vin for v in provisioned] == list(OTHER_VINS)
    with pytest.raises(ValueError, match="3 VINs for 2 vehicles"):
        FleetSettings(count=2, vins=OTHER_VINS)


def test_mqtts_urls_default_to_port_8883() -> None:
    assert parse_broker_url("mqtts://broker.example") == ("broker.example", 8883, True)
    assert parse_broker_url("mqtt://broker.example") == ("broker.example", 1883, False)
    assert parse_broker_url("MQTTS://[::1]:9883").url == "mqtts://[::1]:9883"


# --- the command line ----------------------------------------------------------------------


def _usage_error(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        asyncio.run(main(list(argv)))
    assert info.value.code == 2
    return capsys.readouterr().err


def test_help_explains_the_credential_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for needle in (
        "--credentials FILE",
        "--vins-from-credentials",
        "--tls-ca FILE",
        "--tls-cert-dir DIR",
        "mqtts://",
        FORMAT,
        "telematics vehicle add VIN",
    ):
        assert needle in text, needle


def test_a_fleet_vehicle_missing_from_the_file_is_a_clear_startup_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "units.json"
    write_credentials(
        path,
        UnitCredentials.of(
            (
                VehicleCredential(vin=v, mqtt_username=v, mqtt_password="pw-" + v)
                for v in fleet_vins(3)
            ),
            broker_url="mqtt://127.0.0.1:1884",
        ),
    )
    err = _usage_error(["--credentials", str(path), "--vehicles", "5"], capsys)
    assert f"2 vehicle(s) of the fleet (--vehicles 5) are not in {path}" in err
    assert f"{make_vin(4)}, {make_vin(5)}" in err
    assert "telematics vehicle add VIN" in err
    assert "POST /v1/vehicles" in err
    assert "pw-" not in err

    err = _usage_error(
        ["--credentials", str(path), "--vins-from-credentials", "--vehicles", "4"], capsys
    )
    assert "has only 3 vehicle(s)" in err
    err = _usage_error(["--credentials", str(path), "--username", "u"], capsys)
    assert "--credentials and --username cannot be combined" in err
    err = _usage_error(["--vins-from-credentials"], capsys)
    assert "--vins-from-credentials needs --credentials" in err
    err = _usage_error(["--mqtt-url", "mqtts://127.0.0.1"], capsys)
    assert "needs --tls-ca" in err
    err = _usage_error(["--tls-ca", str(path), "--mqtt-url", "mqtt://127.0.0.1"], capsys)
    assert "plain TCP" in err
    err = _usage_error(["--tls-cert-dir", str(tmp_path)], capsys)
    assert "--tls-cert-dir needs --tls-ca" in err
    path.write_text("{}")
    err = _usage_error(["--credentials", str(path)], capsys)
    assert f"{path}: unknown credentials file format" in err


def test_child_processes_get_the_file_path_never_a_password(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(16)
    path = tmp_path / "units.json"
    write_credentials(
        path,
        UnitCredentials.of(
            [VehicleCredential(vin=v, mqtt_username=v, mqtt_password=password) for v in OTHER_VINS],
            broker_url="mqtt://127.0.0.1:1884",
        ),
    )
    parser = build_parser()
    args = parser.parse_args(["--credentials", str(path), "--procs", "2"])
    opts = _options(parser, args)
    assert (opts.fleet.all_vins(), opts.port) == (list(OTHER_VINS), 1884)
    argv = child_argv(args, Shard(1, 2))
    assert password not in " ".join(argv)
    assert argv[argv.index("--credentials") + 1] == str(path.absolute())
    assert "--vins-from-credentials" in argv
    assert argv[argv.index("--vehicles") + 1] == "3"
    child = parser.parse_args(argv)
    assert _options(parser, child).fleet == opts.fleet


def test_the_files_key_and_broker_serve_unless_the_command_line_says_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def public_pem() -> bytes:
        return (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    in_file, given = public_pem(), tmp_path / "given.pub"
    given.write_bytes(public_pem())
    path = tmp_path / "units.json"
    entries = [
        VehicleCredential(vin=v, mqtt_username=v, mqtt_password=f"pw-{i}")
        for i, v in enumerate(OTHER_VINS)
    ]
    write_credentials(
        path,
        UnitCredentials.of(
            entries, broker_url="mqtt://127.0.0.1:1884", gateway_public_key_pem=in_file
        ),
    )
    parser = build_parser()
    opts = _options(parser, parser.parse_args(["--credentials", str(path)]))
    assert (opts.host, opts.port, opts.tls) == ("127.0.0.1", 1884, False)
    assert opts.unit_settings.gateway_public_key == in_file
    per_unit = build_unit_settings(opts.fleet, opts.unit_settings, per_vin=opts.per_vin)
    assert [(u.username, u.password) for u in per_unit] == [
        (v, f"pw-{i}") for i, v in enumerate(OTHER_VINS)
    ]
    assert "pw-0" not in repr(per_unit[0])

    argv = ["--credentials", str(path), "--gateway-public-key", str(given)]
    opts = _options(parser, parser.parse_args([*argv, "--mqtt-url", "mqtt://localhost:1999"]))
    assert (opts.host, opts.port) == ("localhost", 1999)
    assert opts.unit_settings.gateway_public_key == given.read_bytes()

    write_credentials(
        path,
        UnitCredentials.of(
            entries,
            gateway_public_key_pem=b"-----BEGIN PUBLIC KEY-----\n",
            broker_url="mqtt://127.0.0.1:1884",
        ),
    )
    err = _usage_error(["--credentials", str(path)], capsys)
    assert f"{path}: gateway_public_key:" in err


def test_a_file_without_a_broker_needs_mqtt_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Provisioned vehicles belong to some installation's broker: a file that does not say
    which is an error, not a guess at port 1883 (telematics up's broker is on 1884)."""
    path = tmp_path / "units.json"
    entries = [VehicleCredential(vin=v, mqtt_username=v, mqtt_password="pw") for v in OTHER_VINS]
    write_credentials(path, UnitCredentials.of(entries))
    err = _usage_error(["--credentials", str(path)], capsys)
    assert f"{path} does not say which broker its vehicles belong to" in err
    assert "--mqtt-url" in err
    parser = build_parser()
    argv = ["--credentials", str(path), "--mqtt-url", "mqtt://127.0.0.1:1999"]
    opts = _options(parser, parser.parse_args(argv))
    assert (opts.host, opts.port) == ("127.0.0.1", 1999)


@pytest.mark.parametrize(
    "argv",
    [
        [],  # `telematics sim` as a newcomer types it next to `telematics up`
        ["--vehicles", "2", "--duration", "1"],
        ["--username", "sim"],
        ["--tls-ca", "CA", "--tls-cert-dir", "DIR"],
    ],
)
def test_without_credentials_or_mqtt_url_there_is_no_default_broker(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Decision 0046: without --credentials (whose file names its broker) and without
    --mqtt-url the simulator stops before connecting anywhere and names both options.
    It used to report to mqtt://127.0.0.1:1883, where telematics up's broker is not (1884,
    and it admits only provisioned vehicles): on a machine with another, open broker on
    1883 every message was acknowledged and none reached the gateway."""
    (tmp_path / "CA").write_text("not read before the broker is known")
    (tmp_path / "DIR").mkdir()
    argv = [str(tmp_path / a) if a in ("CA", "DIR") else a for a in argv]
    parser = build_parser()
    with pytest.raises(SystemExit) as info:  # resolving the options, before any connection
        _options(parser, parser.parse_args(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "which broker?" in err
    assert "--credentials FILE" in err
    assert "telematics vehicle add" in err
    assert "--mqtt-url mqtt://host:port" in err
    assert _usage_error(argv, capsys).count("which broker?") == 1  # the command says the same


def test_list_vins_needs_no_broker(capsys: pytest.CaptureFixture[str]) -> None:
    """Listing the VINs to provision happens before there is any broker to name."""
    assert asyncio.run(main(["--vehicles", "2", "--vin-prefix", "WSMNEW", "--list-vins"])) == 0
    assert capsys.readouterr().out.split() == [
        "WSMNEW00000000001",
        "WSMNEW00000000002",
    ]


# --- against the broker ------------------------------------------------------------------------


def _child_cmdlines(pid: int, *, expected: int) -> list[str]:
    """The command lines (NUL-separated, from /proc: Linux) of the processes whose parent is
    ``pid``, once there are ``expected`` of them; [] before."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    found.append((entry / "cmdline").read_bytes().decode())
            except (OSError, IndexError, ValueError):
                continue
    return found if len(found) == expected else []


def test_every_unit_logs_in_as_itself_over_two_processes(tmp_path: Path) -> None:
    vins = fleet_vins(5)
    with secured_broker(tmp_path, vins) as broker:
        path = tmp_path / "units.json"
        write_credentials(path, credentials_for(broker, vins))
        cmdlines: list[str] = []

        async def inspect_children(pids: list[int]) -> None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not cmdlines and loop.time() < deadline:
                cmdlines.extend(_child_cmdlines(pids[0], expected=2))
                await asyncio.sleep(0.05)

        # 4 of the 5 provisioned vehicles (the file may have more), the URL from the file
        argv = ["--credentials", str(path), "--vehicles", "4", "--procs", "2"]
        argv += ["--rate", "5", "--duration", "3", "--json", "--log-level", "DEBUG"]
        received, [done] = asyncio.run(run_with_subscriber(broker, argv, during=inspect_children))

    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["procs"] == 2
    assert summary["rejected_by_broker"] == 0
    assert sorted(summary["units"]) == vins[:4]
    assert sorted(received.by_vin) == vins[:4]
    assert all(n >= 5 for n in received.by_vin.values()), received.by_vin
    assert len(cmdlines) == 2
    for cmdline in cmdlines:
        assert f"--credentials\0{path}" in cmdline
    for password in broker.passwords.values():
        assert password not in done.stdout + done.stderr
        assert all(password not in cmdline for cmdline in cmdlines)


def test_a_wrong_password_is_reported_as_the_brokers_refusal(tmp_path: Path) -> None:
    vins = fleet_vins(2)
    with secured_broker(tmp_path, vins) as broker:
        path = tmp_path / "units.json"
        wrong = secrets.token_urlsafe(16)
        credentials = credentials_for(broker, vins)
        write_credentials(
            path,
            UnitCredentials.of(
                [
                    credentials.vehicles[vins[0]],
                    VehicleCredential(vin=vins[1], mqtt_username=vins[1], mqtt_password=wrong),
                ],
                broker_url=broker.url,
            ),
        )
        done = sim("--credentials", str(path), "--duration", "10", "--json")
    assert done.returncode == 1
    assert f"refused unit {vins[1]}" in done.stderr
    assert f"check the credentials in {path}" in done.stderr
    assert json.loads(done.stdout)["rejected_by_broker"] >= 1
    assert wrong not in done.stdout + done.stderr
    assert broker.passwords[vins[0]] not in done.stdout + done.stderr


def test_units_log_in_with_client_certificates_over_tls(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "pki")
    certs = tmp_path / "certs"
    certs.mkdir()
    vins = list(OTHER_VINS)
    for vin in vins:
        tls.client(vin, certs / f"{vin}.crt", certs / f"{vin}.key")
    with secured_broker(tmp_path, vins, tls=tls) as broker:
        url = f"mqtts://127.0.0.1:{broker.tls_port}"
        # one fleet names its certificates in the file (relative to it), one uses a directory
        by_file, by_dir = tmp_path / "by_file.json", tmp_path / "by_dir.json"
        write_credentials(
            by_file,
            credentials_for(broker, vins[:2], passwords=False, certs="certs"),
        )
        write_credentials(by_dir, credentials_for(broker, vins[2:], passwords=False))
        common = ["--mqtt-url", url, "--tls-ca", str(tls.ca), "--rate", "5", "--duration", "3"]
        received, runs = asyncio.run(
            run_with_subscriber(
                broker,
                ["--credentials", str(by_file), *common, "--json"],
                ["--credentials", str(by_dir), "--tls-cert-dir", str(certs), *common, "--json"],
            )
        )
        for done in runs:
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["rejected_by_broker"] == 0
        assert sorted(received.by_vin) == sorted(vins)
        assert all(n >= 5 for n in received.by_vin.values()), received.by_vin

        # exit 1, not a unit retrying forever: a --tls-ca that did not sign the broker's
        # certificate, and client certificates from a CA the broker does not know
        other = make_tls(tmp_path / "other")
        strangers = tmp_path / "strangers"
        strangers.mkdir()
        for vin in vins[2:]:
            other.client(vin, strangers / f"{vin}.crt", strangers / f"{vin}.key")
        common = ["--credentials", str(by_dir), "--mqtt-url", url, "--duration", "20"]
        wrong_ca = popen_sim(*common, "--tls-ca", str(other.ca), "--tls-cert-dir", str(certs))
        wrong_certs = popen_sim(*common, "--tls-ca", str(tls.ca), "--tls-cert-dir", str(strangers))
        _, wrong_ca_err = wrong_ca.communicate(timeout=TIMEOUT_S)
        _, wrong_certs_err = wrong_certs.communicate(timeout=TIMEOUT_S)
    assert wrong_ca.returncode == 1
    assert "TLS certificate does not verify against --tls-ca" in wrong_ca_err
    assert wrong_certs.returncode == 1
    assert "does not accept the unit's client certificate" in wrong_certs_err


def test_missing_client_certificates_are_a_startup_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = make_tls(tmp_path / "pki")
    path = tmp_path / "units.json"
    write_credentials(
        path,
        UnitCredentials.of(
            (
                VehicleCredential(vin=v, mqtt_username=v, client_cert=Path(f"{v}.crt"))
                for v in OTHER_VINS
            ),
            broker_url="mqtts://127.0.0.1:8883",
        ),
    )
    argv = ["--credentials", str(path), "--tls-ca", str(tls.ca)]
    err = _usage_error(argv, capsys)
    assert f"3 client certificate or key file(s) named by {path} do not exist" in err
    assert str(tmp_path / f"{OTHER_VINS[0]}.crt") in err
    err = _usage_error([*argv, "--tls-cert-dir", str(tmp_path)], capsys)
    assert f"6 client certificate or key file(s) named by --tls-cert-dir {tmp_path}" in err
