"""The broker's PKI (gateway.broker.pki) and real TLS connections to a Mosquitto TLS listener.

The CA, server and client certificates are made by the code under test; the broker is a real
Mosquitto with ``require_certificate`` and ``use_identity_as_username``, its ACL rendered by
:mod:`gateway.broker.auth`, and the clients speak MQTT 5 over Python's ``ssl``. What
Mosquitto 2.0.11 does, as pinned down here:

* no client certificate, or one from another CA: the TLS handshake fails;
* the certificate's CN (the VIN) is the username, whatever username the client sends, so a
  vehicle has exactly its own ACL rights;
* the CRL works and is re-read on SIGHUP: a revoked certificate fails the handshake of every
  new connection; an established session is not re-verified, so it stays connected, and
  removing the vehicle's ACL block (same reload) is what takes its rights away.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shlex
import socket
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.broker import (
    MosquittoProcess,
    free_port,
)
from gateway.broker.pki import (
    Pki,
    PkiError,
    PkiExistsError,
    PkiNotInitialisedError,
    UnknownClientError,
)
from gateway.broker.vehicle_auth import ensure_vehicle_auth_plugin
from gateway.cli import main
from gateway.cli.pki import add_arguments, run_from_args
from gateway.errors import GatewayError
from schemas.topics import Channel, topic_for
from tests.support.broker import VIN_A, VIN_B, VIN_C, ClosedBroker, start_closed_broker
from tests.support.mqtt_raw import NOT_AUTHORIZED, TIMEOUT, Mqtt5Client

SERVICE = "telematics-gateway"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ca_key(pki: Pki) -> ec.EllipticCurvePublicKey:
    key = _cert(pki.ca_cert_path).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def _years(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365.25


# --- the files --------------------------------------------------------------------------------


def test_init_creates_ca_server_certificate_and_empty_crl(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    written = pki.init(server_hosts=("localhost", "127.0.0.1", "broker.example"))
    assert set(written) == {
        pki.ca_cert_path,
        pki.ca_key_path,
        pki.server_cert_path,
        pki.server_key_path,
        pki.crl_path,
    }
    assert _mode(pki.ca_key_path) == 0o600
    assert _mode(pki.server_key_path) == 0o600
    ca, server = _cert(pki.ca_cert_path), _cert(pki.server_cert_path)

    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "Telematics Gateway CA"
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert 9.9 < _years(ca) < 10.1

    server.verify_directly_issued_by(ca)
    assert 1.9 < _years(server) < 2.1
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "broker.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH
        in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )

    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.is_signature_valid(_ca_key(pki))
    assert len(crl) == 0
    # a CRL past its next update would make OpenSSL refuse every client
    assert crl.next_update_utc is not None
    assert crl.next_update_utc >= ca.not_valid_after_utc


def test_init_refuses_to_replace_a_ca_without_force(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.init()
    pki.client(VIN_A)
    first_ca = pki.ca_cert_path.read_bytes()
    with pytest.raises(PkiExistsError, match="--force"):
        pki.init()
    assert pki.ca_cert_path.read_bytes() == first_ca
    pki.init(force=True)
    assert pki.ca_cert_path.read_bytes() != first_ca
    # the old CA's client certificates and records went with it
    assert not pki.client_paths(VIN_A)[0].exists()
    assert pki.issued() == []


def test_client_certificate_names_the_vin(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    with pytest.raises(PkiNotInitialisedError, match="telematics pki init"):
        pki.client(VIN_A)
    pki.init()
    cert_path, key_path = pki.client(VIN_A)
    assert (cert_path, key_path) == pki.client_paths(VIN_A)
    assert _mode(key_path) == 0o600
    cert = _cert(cert_path)
    cert.verify_directly_issued_by(_cert(pki.ca_cert_path))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == VIN_A
    assert 1.9 < _years(cert) < 2.1
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH
        in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    assert [c.serial for c in pki.issued(VIN_A)] == [cert.serial_number]
    with pytest.raises(PkiError, match="invalid VIN"):
        pki.client("not-a-vin")


def test_revoke_revokes_every_certificate_of_the_vin(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.init()
    with pytest.raises(UnknownClientError, match="pki client"):
        pki.revoke(VIN_A)
    first = _cert(pki.client(VIN_A)[0]).serial_number
    second = _cert(pki.client(VIN_A)[0]).serial_number  # re-issued, e.g. a lost key
    other = _cert(pki.client(VIN_B)[0]).serial_number
    assert sorted(pki.revoke(VIN_A)) == sorted([first, second])
    assert pki.revoked_serials() == {first, second}
    assert other not in pki.revoked_serials()
    assert pki.revoke(VIN_A) == []  # already revoked: the CRL is not rewritten
    crl = x509.load_pem_x509_crl(pki.crl_path.read_bytes())
    assert crl.is_signature_valid(_ca_key(pki))
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_pki_errors_are_gateway_errors(tmp_path: Path) -> None:
    assert issubclass(PkiError, GatewayError)
    with pytest.raises(PkiError, match="DNS name or an IP address"):
        Pki(tmp_path).init(server_hosts=("bad host",))
    with pytest.raises(PkiError, match="at least one"):
        Pki(tmp_path).init(server_hosts=())


# --- the CLI ----------------------------------------------------------------------------------


def _parse(*argv: str, parent_data_dir: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="telematics pki")
    if parent_data_dir:  # as the main CLI's common options would add it
        parser.add_argument("--data-dir", type=Path, default=Path("data"))
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_init_client_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path)]
    pki = Pki(tmp_path / "pki")

    assert run_from_args(_parse("init", *data, "--host", "broker.local")) == 0
    out = capsys.readouterr().out
    assert str(pki.ca_cert_path) in out
    assert f"cafile {pki.ca_cert_path}" in out
    assert "use_identity_as_username true" in out
    assert f"crlfile {pki.crl_path}" in out
    server = _cert(pki.server_cert_path)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["broker.local"]

    with pytest.raises(PkiExistsError, match="--force"):
        run_from_args(_parse(*data, "init", parent_data_dir=True))
    assert run_from_args(_parse(*data, "init", "--force", parent_data_dir=True)) == 0
    capsys.readouterr()

    assert run_from_args(_parse("client", VIN_A, *data)) == 0
    out = capsys.readouterr().out
    cert, key = pki.client_paths(VIN_A)
    assert str(cert) in out
    assert str(key) in out
    # the example publish is one the contract accepts: a retained QoS 1 status in JSON (it
    # said `-m online`, which the gateway quarantines as malformed_json)
    example = next(line for line in out.splitlines() if "mosquitto_pub" in line)
    argv = shlex.split(example)
    assert json.loads(argv[argv.index("-m") + 1]) == {"state": "online"}
    assert {"-r", "-V"} <= set(argv)
    assert argv[argv.index("-q") + 1] == "1"

    assert run_from_args(_parse("revoke", VIN_A, *data)) == 0
    assert "revoked 1 certificate" in capsys.readouterr().out
    assert run_from_args(_parse(*data, "revoke", VIN_A, parent_data_dir=True)) == 0
    assert "already revoked" in capsys.readouterr().out

    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(PkiNotInitialisedError, match="telematics pki init"):
        run_from_args(_parse("client", VIN_B, "--dir", str(elsewhere)))


def test_cli_client_example_uses_this_installations_tls_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The printed ``mosquitto_pub`` went to port 8883 whatever ``--tls-port`` the data
    directory's ``telematics up`` runs; it names that listener now (8883 without one)."""
    for name in ("TELEMATICS_UNIT_TLS_BROKER_URL", "TELEMATICS_UNIT_BROKER_URL",
                 "TELEMATICS_MQTT_URL", "TELEMATICS_DATA_DIR"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)

    def example() -> list[str]:
        assert main(["pki", "client", VIN_A, "--data-dir", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        return shlex.split(next(line for line in out.splitlines() if "mosquitto_pub" in line))

    assert main(["pki", "init", "--data-dir", str(tmp_path)]) == 0
    argv = example()
    assert (argv[argv.index("-h") + 1], argv[argv.index("-p") + 1]) == ("127.0.0.1", "8883")
    (tmp_path / "broker").mkdir()
    (tmp_path / "broker" / "mosquitto.conf").write_text(
        "listener 23456 127.0.0.1\n\nlistener 23457 127.0.0.1\nrequire_certificate true\n"
    )
    argv = example()
    assert (argv[argv.index("-h") + 1], argv[argv.index("-p") + 1]) == ("127.0.0.1", "23457")


def test_cli_default_directory_is_the_clis_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TELEMATICS_DATA_DIR", raising=False)
    assert run_from_args(_parse("init")) == 0
    assert Pki(tmp_path / "data" / "pki").exists()
    # the environment's data directory comes through the CLI (gateway.settings reads it)
    monkeypatch.setenv("TELEMATICS_DATA_DIR", str(tmp_path / "env"))
    assert main(["pki", "init"]) == 0
    assert Pki(tmp_path / "env" / "pki").exists()
    # an explicit --data-dir on the main parser is not overridden by the action's
    assert (
        run_from_args(_parse("--data-dir", str(tmp_path / "main"), "init", parent_data_dir=True))
        == 0
    )
    assert Pki(tmp_path / "main" / "pki").exists()
    capsys.readouterr()


# --- the real broker over TLS -----------------------------------------------------------------


@dataclass
class TlsFleet:
    """A closed broker with a TLS listener; VIN_A and VIN_B have certificates (no
    passwords)."""

    closed: ClosedBroker
    pki: Pki
    tls_port: int
    foreign: Pki  # another CA, same VIN
    clients: list[Mqtt5Client]

    @property
    def broker(self) -> MosquittoProcess:
        return self.closed.broker

    def context(
        self, vin: str | None = None, *, pki: Pki | None = None, check_hostname: bool = True
    ) -> ssl.SSLContext:
        pki = pki or self.pki
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert_path))
        context.check_hostname = check_hostname
        if vin is not None:
            cert, key = pki.client_paths(vin)
            context.load_cert_chain(cert, key)
        return context

    def connect_tls(
        self,
        vin: str | None,
        *,
        pki: Pki | None = None,
        host: str = "127.0.0.1",
        username: str | None = None,
        client_id: str | None = None,
    ) -> Mqtt5Client:
        client, code = Mqtt5Client.connect(
            host,
            self.tls_port,
            client_id or vin or "no-certificate",
            username=username,
            password=None if username is None else "ignored",
            ssl_context=self.context(vin, pki=pki),
        )
        self.clients.append(client)
        assert code == 0, f"{vin} was refused with {code:#x}"
        return client

    def service(self) -> Mqtt5Client:
        client, code = Mqtt5Client.connect(
            self.broker.host,
            self.broker.port,
            "svc",
            username=SERVICE,
            password=self.closed.service[1],
        )
        self.clients.append(client)
        assert code == 0
        assert client.subscribe("v1/#") < 0x80
        return client


@pytest.fixture(scope="module")
def vehicle_auth_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vehicle_auth plugin (decisions 0055, 0060), compiled once for the module."""
    return ensure_vehicle_auth_plugin(tmp_path_factory.mktemp("vehicle-auth-plugin"))


@pytest.fixture(params=["password_file", "vehicle_auth"])
def tls_fleet(
    request: pytest.FixtureRequest, tmp_path: Path, vehicle_auth_plugin: Path
) -> Iterator[TlsFleet]:
    """Every certificate test twice: rights from Dynamic Security (no compiler), and from
    the vehicle_auth plugin's table, where certificate units reach the plugins only
    through the ACL check (no password check on this listener; decision 0060)."""
    pki = Pki(tmp_path / "pki")
    pki.init()
    for vin in (VIN_A, VIN_B):
        pki.client(vin)
    foreign = Pki(tmp_path / "foreign")
    foreign.init()
    foreign.client(VIN_A)
    tls_port = free_port()
    closed = start_closed_broker(
        tmp_path,
        vehicles={VIN_A: None, VIN_B: None},  # certificates only
        persistence=False,
        tls=pki.tls_listener(tls_port),
        vehicle_auth=vehicle_auth_plugin if request.param == "vehicle_auth" else None,
    )
    fleet = TlsFleet(closed, pki, tls_port, foreign, [])
    try:
        yield fleet
    finally:
        for client in fleet.clients:
            client.close()
        closed.broker.stop()


def _handshake(port: int, context: ssl.SSLContext, server_hostname: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def _refusal(fleet: TlsFleet, vin: str | None, pki: Pki | None = None) -> str:
    """Why the broker refuses this client's handshake (the TLS alert's name).

    Over TLS 1.2, because there the server checks the client certificate inside the
    handshake and its alert always reaches us. With TLS 1.3 the client's handshake ends
    before the server has judged the certificate, so the refusal shows up on the first read
    and, depending on timing, as the alert or as a bare EOF; those tests can only check
    that the connection fails.
    """
    context = fleet.context(vin, pki=pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(fleet.tls_port, context, "localhost").close()
    return str(refused.value.reason)


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_server_certificate_verifies_against_the_ca(tls_fleet: TlsFleet, hostname: str) -> None:
    context = tls_fleet.context(VIN_A)
    with _handshake(tls_fleet.tls_port, context, hostname) as tls:
        peer = tls.getpeercert()
        assert peer is not None
        assert ("commonName", "localhost") in peer["subject"][0]


def test_server_certificate_does_not_cover_other_names(tls_fleet: TlsFleet) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(tls_fleet.tls_port, tls_fleet.context(VIN_A), "broker.example").close()


def test_vehicle_with_certificate_publishes_only_to_its_own_topics(tls_fleet: TlsFleet) -> None:
    service = tls_fleet.service()
    vehicle = tls_fleet.connect_tls(VIN_A, host="localhost")
    assert vehicle.publish(topic_for(VIN_B, Channel.TELEMETRY), b"spoofed") == NOT_AUTHORIZED
    assert vehicle.publish(topic_for(VIN_A, Channel.TELEMETRY), b"genuine") < 0x80
    assert service.receive() == (topic_for(VIN_A, Channel.TELEMETRY), b"genuine")


def test_certificate_identity_wins_over_the_username_sent(tls_fleet: TlsFleet) -> None:
    service = tls_fleet.service()
    # A's certificate, B's username (and any password): the broker uses the CN, VIN_A
    vehicle = tls_fleet.connect_tls(VIN_A, username=VIN_B, client_id="claims-to-be-B")
    assert vehicle.publish(topic_for(VIN_B, Channel.TELEMETRY), b"spoofed") == NOT_AUTHORIZED
    assert vehicle.publish(topic_for(VIN_A, Channel.STATUS), b"online") < 0x80
    assert service.receive() == (topic_for(VIN_A, Channel.STATUS), b"online")


def test_certificate_without_identity_has_no_rights(tls_fleet: TlsFleet) -> None:
    tls_fleet.pki.client(VIN_C)  # a valid certificate, but VIN_C was never provisioned
    vehicle = tls_fleet.connect_tls(VIN_C)
    assert vehicle.publish(topic_for(VIN_C, Channel.TELEMETRY), b"x") == NOT_AUTHORIZED


def test_connection_without_client_certificate_is_refused(tls_fleet: TlsFleet) -> None:
    assert _refusal(tls_fleet, None) == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    with pytest.raises(OSError):  # noqa: PT011 - TLS 1.3: an alert or a bare EOF
        tls_fleet.connect_tls(None)


def test_certificate_from_another_ca_is_refused(tls_fleet: TlsFleet) -> None:
    assert _refusal(tls_fleet, VIN_A, tls_fleet.foreign) == "TLSV1_ALERT_UNKNOWN_CA"
    with pytest.raises(OSError):  # noqa: PT011 - TLS 1.3: an alert or a bare EOF
        tls_fleet.connect_tls(VIN_A, pki=tls_fleet.foreign)


def test_a_certificate_only_ever_gets_its_own_client_id(tls_fleet: TlsFleet) -> None:
    """The plugin's client id check runs with password logins only; on the TLS listener
    ``use_username_as_clientid`` makes the id the certificate's CN, so B's certificate
    cannot take over A's session (or fire its Last Will) by sending A's client id."""
    a = tls_fleet.connect_tls(VIN_A)
    b = tls_fleet.connect_tls(VIN_B, client_id=VIN_A)
    log = tls_fleet.broker.log_path.read_text()
    assert f"as {VIN_B} (p5" in log  # B is B, whatever it sent
    assert a.publish(topic_for(VIN_A, Channel.TELEMETRY), b"still mine") < 0x80
    assert not a.closed
    assert b.subscribe(f"v1/vehicles/{VIN_A}/commands") == NOT_AUTHORIZED
    assert b.subscribe(f"v1/vehicles/{VIN_B}/commands") == 1


def test_certificate_vehicle_subscribes_to_its_own_commands_only(tls_fleet: TlsFleet) -> None:
    vehicle = tls_fleet.connect_tls(VIN_A)
    assert vehicle.subscribe("$share/telematics-gateway/v1/vehicles/+/telemetry") == NOT_AUTHORIZED
    assert vehicle.subscribe("#") == NOT_AUTHORIZED
    assert vehicle.subscribe(f"v1/vehicles/{VIN_B}/commands") == NOT_AUTHORIZED
    assert vehicle.subscribe(f"v1/vehicles/{VIN_A}/commands") == 1


def test_revoking_a_certificate_vehicle_disconnects_it_and_leaves_it_nothing(
    tls_fleet: TlsFleet,
) -> None:
    """What a revoked certificate unit can still do, step by step: deleting its broker
    identity disconnects it at once (the plugin kicks the user name, certificate or not);
    while its certificate is not on the CRL it can connect again, but has no right at all
    (an unknown user name); once the CRL lists it, the handshake fails."""
    service = tls_fleet.service()
    revoked = tls_fleet.connect_tls(VIN_A)
    kept = tls_fleet.connect_tls(VIN_B)

    tls_fleet.closed.remove_vehicle(VIN_A)
    assert revoked.wait_closed(timeout=TIMEOUT)

    again = tls_fleet.connect_tls(VIN_A)  # the certificate is still valid ...
    assert again.publish(topic_for(VIN_A, Channel.TELEMETRY), b"after") == NOT_AUTHORIZED
    assert again.subscribe(f"v1/vehicles/{VIN_A}/commands") == NOT_AUTHORIZED
    assert again.subscribe("$share/telematics-gateway/v1/vehicles/+/telemetry") == NOT_AUTHORIZED

    assert tls_fleet.pki.revoke(VIN_A)  # ... until the CRL says otherwise
    tls_fleet.broker.reload()
    # new connections: the CRL (re-read on SIGHUP) fails the handshake
    assert _refusal(tls_fleet, VIN_A) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    with pytest.raises(OSError):  # noqa: PT011 - TLS 1.3: an alert or a bare EOF
        tls_fleet.connect_tls(VIN_A)
    # the established session is not re-verified, and it has no rights anyway
    assert again.publish(topic_for(VIN_A, Channel.TELEMETRY), b"later") == NOT_AUTHORIZED
    # everyone else is unaffected
    assert kept.publish(topic_for(VIN_B, Channel.TELEMETRY), b"kept") < 0x80
    assert service.receive() == (topic_for(VIN_B, Channel.TELEMETRY), b"kept")
    tls_fleet.connect_tls(VIN_B)
