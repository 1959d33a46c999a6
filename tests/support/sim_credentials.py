"""A broker that admits only provisioned units, their credentials file, and running
``telematics sim`` as a process."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_sim.credentials import (
    UnitCredentials,
    VehicleCredential,
)
from gateway.broker import BrokerConfig, MosquittoProcess, free_port

SERVICE_USER = "telematics-service"


@dataclass
class SecuredBroker:
    """A private Mosquitto with a password file and a per-VIN ACL (and optionally a TLS
    listener with client certificates); ``passwords`` maps user name to password."""

    broker: MosquittoProcess
    passwords: dict[str, str]
    tls_port: int | None = None

    @property
    def url(self) -> str:
        return self.broker.url


def _acl(vins: Sequence[str]) -> str:
    lines = [f"user {SERVICE_USER}", "topic readwrite v1/#", ""]
    for vin in vins:
        lines += [f"user {vin}"]
        lines += [
            f"topic write v1/vehicles/{vin}/{leaf}"
            for leaf in ("telemetry", "events", "status", "commands/result")
        ]
        lines += [f"topic read v1/vehicles/{vin}/commands", ""]
    return "\n".join(lines)


@contextmanager
def secured_broker(
    tmp_path: Path, vins: Sequence[str], *, tls: TlsFiles | None = None
) -> Iterator[SecuredBroker]:
    passwords = {user: secrets.token_urlsafe(16) for user in (SERVICE_USER, *vins)}
    mosquitto_passwd = shutil.which("mosquitto_passwd")
    assert mosquitto_passwd, "mosquitto_passwd is part of the mosquitto package"
    pw_file, acl_file = tmp_path / "passwd", tmp_path / "acl"
    for n, (user, password) in enumerate(passwords.items()):
        create = ["-c"] if n == 0 else []
        subprocess.run([mosquitto_passwd, *create, "-b", str(pw_file), user, password], check=True)
    acl_file.write_text(_acl(vins))
    lines = [f"password_file {pw_file}", f"acl_file {acl_file}"]
    tls_port = None
    if tls is not None:
        tls_port = free_port()
        lines += [
            f"listener {tls_port} 127.0.0.1",
            f"cafile {tls.ca}",
            f"certfile {tls.server_cert}",
            f"keyfile {tls.server_key}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
    config = BrokerConfig(
        port=free_port(),
        data_dir=tmp_path / "mosquitto",
        allow_anonymous=False,
        extra_lines=tuple(lines),
    )
    with MosquittoProcess(config) as broker:
        yield SecuredBroker(broker, passwords, tls_port)


def credentials_for(
    broker: SecuredBroker, vins: Sequence[str], *, passwords: bool = True, certs: str | None = None
) -> UnitCredentials:
    """What provisioning would write for ``vins``: passwords, or client certificates
    ``certs/VIN.crt`` and ``.key`` (``certs`` relative to the file)."""
    return UnitCredentials.of(
        (
            VehicleCredential(
                vin=vin,
                mqtt_username=vin,
                mqtt_password=broker.passwords[vin] if passwords else None,
                client_cert=None if certs is None else Path(certs, f"{vin}.crt"),
                client_key=None if certs is None else Path(certs, f"{vin}.key"),
            )
            for vin in vins
        ),
        broker_url=broker.url,
    )


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate

    def client(self, cn: str, cert: Path, key: Path) -> None:
        """A client certificate for ``cn``, signed by this CA, written to cert and key."""
        _issue(cn, cert, key, issuer=(self.ca_cert, self.ca_key), client=True)


def _issue(
    cn: str,
    cert_path: Path,
    key_path: Path,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A P-256 key and a certificate for ``cn``: a self-signed CA when ``issuer`` is None,
    else a server (SAN 127.0.0.1) or client certificate signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer_cert.subject if signer_cert is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), False
        )
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    elif client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    cert = builder.sign(signer_key, hashes.SHA256())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def sim(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_sim", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
