"""A small certificate authority for the broker's TLS listener and the vehicles' certificates.

Why our own CA: a vehicle proves who it is with a client certificate whose CN is its VIN
(the broker's ``use_identity_as_username``), and only certificates *we* issued may count,
so the broker trusts exactly one CA, kept next to the data. It is a development and
small-fleet CA: the CA key sits unencrypted on disk (mode 0600). A production fleet would
keep the CA key in an HSM or a managed PKI and give this module only the public files.

Layout of the directory (``<data-dir>/pki`` by default)::

    ca.crt, ca.key            the CA (ECDSA P-256, 10 years); ca.crt is the broker's cafile
    server.crt, server.key    the broker's certificate (2 years), SANs = the --host names
    crl.pem                   revoked client certificates, signed by the CA (always present:
                              Mosquitto refuses to start with a crlfile that is missing)
    clients/<VIN>.crt/.key    the newest certificate of each vehicle (2 years)
    issued.json               every serial ever issued per VIN, so revoking a vehicle
                              revokes all of its certificates, not only the newest

Keys are ECDSA P-256 (small, fast handshakes on in-car hardware) in unencrypted PKCS#8,
which Mosquitto reads without a passphrase prompt; key files are 0600, written atomically.

Revocation has two layers, because neither is enough alone with Mosquitto 2.0.11:

* the CRL (``crlfile``) makes the broker refuse the TLS handshake of a revoked certificate.
  Checked by experiment: it works, and a SIGHUP re-reads it. But only *new* handshakes are
  checked; an established TLS session is not re-verified, so a revoked vehicle that is
  connected stays connected.
* removing the vehicle's identity from the ACL (:mod:`gateway.broker.auth`) plus a reload
  takes all rights away from that connected session at once: its publishes are refused and
  nothing is delivered to it.

The CRL's *next update* is set to the CA's expiry: OpenSSL rejects every certificate once a
CRL is past its next update, and a CRL that is rewritten only when something is revoked must
not lock the whole fleet out one day.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.broker.auth import atomic_write
from gateway.broker.mosquitto import DEFAULT_MQTTS_PORT, BrokerError, TlsListener
from schemas.vin import is_valid_vin

__all__ = [
    "CA_VALIDITY",
    "CLIENT_VALIDITY",
    "DEFAULT_CA_NAME",
    "DEFAULT_SERVER_HOSTS",
    "SERVER_VALIDITY",
    "IssuedCertificate",
    "Pki",
    "PkiError",
    "PkiExistsError",
    "PkiNotInitialisedError",
    "UnknownClientError",
]

DEFAULT_CA_NAME = "Telematics Gateway CA"
DEFAULT_SERVER_HOSTS = ("localhost", "127.0.0.1")
CA_VALIDITY = dt.timedelta(days=3652)
SERVER_VALIDITY = dt.timedelta(days=730)
CLIENT_VALIDITY = dt.timedelta(days=730)

_CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start this long before now, so a device whose clock is a little behind does
not reject a certificate issued a moment ago as 'not yet valid'."""

_HOST_RE = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]{0,250}[A-Za-z0-9])?")


# --------------------------------------------------------------------------- errors


class PkiError(BrokerError):
    """Base of the PKI's errors; the message says how to fix it."""


class PkiExistsError(PkiError):
    """``init`` would overwrite an existing CA."""


class PkiNotInitialisedError(PkiError):
    """There is no CA in the directory yet."""


class UnknownClientError(PkiError):
    """No certificate was ever issued for that VIN here."""


# --------------------------------------------------------------------------- helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, pem, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _check_vin(vin: str) -> str:
    if not is_valid_vin(vin):
        raise PkiError(
            f"invalid VIN {vin!r}: expected 17 characters from 0-9 and A-Z without I, O or Q"
        )
    return vin


def _san(host: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS name SAN otherwise (TLS clients match an
    address only against IP SANs, a name only against DNS SANs)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _HOST_RE.fullmatch(host) is None:
        raise PkiError(f"invalid server host name {host!r}: give a DNS name or an IP address")
    return x509.DNSName(host)


def _server_sans(hosts: Sequence[str], ca_name: str) -> list[x509.GeneralName]:
    """The server certificate's SANs for ``hosts``, once the arguments of :meth:`Pki.init`
    are checked (a host at least, a CA name)."""
    if not hosts:
        raise PkiError("give at least one server host name (--host) for the broker")
    sans = [_san(h) for h in hosts]
    if not ca_name.strip():
        raise PkiError("the CA name must not be empty")
    return sans


def _new_ca(ca_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA certificate named ``ca_name`` and its key: it may sign
    certificates (no intermediate CAs under it) and CRLs."""
    now = _now()
    ca_key = _new_key()
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_cert, ca_key


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """One client certificate as recorded in ``issued.json``."""

    vin: str
    serial: int
    not_after: str


# --------------------------------------------------------------------------- the CA


class Pki:
    """The CA, the broker's server certificate, client certificates and the CRL in one
    directory (see the module docstring for the layout). Not safe for concurrent writers:
    one operator command at a time."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()

    def __repr__(self) -> str:
        return f"<Pki {self.directory}>"

    # -- paths

    @property
    def ca_cert_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert_path(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key_path(self) -> Path:
        return self.directory / "server.key"

    @property
    def crl_path(self) -> Path:
        return self.directory / "crl.pem"

    @property
    def clients_dir(self) -> Path:
        return self.directory / "clients"

    @property
    def _index_path(self) -> Path:
        return self.directory / "issued.json"

    def client_paths(self, vin: str) -> tuple[Path, Path]:
        """Where the newest certificate and key of ``vin`` are (or would be)."""
        _check_vin(vin)
        return self.clients_dir / f"{vin}.crt", self.clients_dir / f"{vin}.key"

    def exists(self) -> bool:
        """Whether a CA (certificate or key) is in the directory."""
        return self.ca_cert_path.exists() or self.ca_key_path.exists()

    def tls_listener(self, port: int = DEFAULT_MQTTS_PORT, host: str = "127.0.0.1") -> TlsListener:
        """The broker listener for these files: client certificates required, CN = VIN as
        the username, and the CRL."""
        return TlsListener(
            port=port,
            host=host,
            cafile=self.ca_cert_path,
            certfile=self.server_cert_path,
            keyfile=self.server_key_path,
            require_certificate=True,
            use_identity_as_username=True,
            crlfile=self.crl_path,
        )

    # -- init

    def init(
        self,
        ca_name: str = DEFAULT_CA_NAME,
        server_hosts: Sequence[str] = DEFAULT_SERVER_HOSTS,
        *,
        force: bool = False,
    ) -> list[Path]:
        """Create the CA, the server certificate and an empty CRL; return the files written.

        Refuses to replace an existing CA unless ``force``: every certificate issued by it
        would stop working. With ``force`` the old client certificates, the issue record and
        the CRL go too, since they belong to the old CA.
        """
        hosts = list(dict.fromkeys(server_hosts))
        sans = _server_sans(hosts, ca_name)
        if self.exists() and not force:
            raise PkiExistsError(
                f"a CA already exists in {self.directory}; replacing it invalidates every "
                "certificate it issued. Use --force (init(force=True)) to replace it, or "
                "--dir for another directory"
            )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if force:
            shutil.rmtree(self.clients_dir, ignore_errors=True)
            self._index_path.unlink(missing_ok=True)

        ca_cert, ca_key = _new_ca(ca_name)
        server_key = _new_key()
        server_cert = self._issue(
            ca_cert,
            ca_key,
            server_key,
            hosts[0],
            SERVER_VALIDITY,
            ExtendedKeyUsageOID.SERVER_AUTH,
            sans=sans,
        )
        # keys first: a certificate on disk always has its key next to it
        _write_key(self.ca_key_path, ca_key)
        _write_cert(self.ca_cert_path, ca_cert)
        _write_key(self.server_key_path, server_key)
        _write_cert(self.server_cert_path, server_cert)
        self._write_crl(ca_cert, ca_key, [], crl_number=1)
        return [
            self.ca_cert_path,
            self.ca_key_path,
            self.server_cert_path,
            self.server_key_path,
            self.crl_path,
        ]

    # -- clients

    def client(self, vin: str) -> tuple[Path, Path]:
        """Issue a new certificate (CN = ``vin``) and key; return (cert path, key path).

        A vehicle may be issued a certificate again (a lost key, a renewal); the older ones
        stay valid until they expire or :meth:`revoke` revokes them all.
        """
        _check_vin(vin)
        ca_cert, ca_key = self._load_ca()
        key = _new_key()
        cert = self._issue(
            ca_cert, ca_key, key, vin, CLIENT_VALIDITY, ExtendedKeyUsageOID.CLIENT_AUTH
        )
        self.clients_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path, key_path = self.client_paths(vin)
        index = self._read_index()
        index.append(
            IssuedCertificate(vin, cert.serial_number, cert.not_valid_after_utc.isoformat())
        )
        # recorded before the files exist, so a certificate can never be in use unrecorded
        # (and therefore unrevocable)
        self._write_index(index)
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
        return cert_path, key_path

    def issued(self, vin: str | None = None) -> list[IssuedCertificate]:
        """Every client certificate issued here (for one VIN if given), oldest first."""
        return [c for c in self._read_index() if vin is None or c.vin == vin]

    def revoked_serials(self) -> set[int]:
        """The serial numbers in the current CRL."""
        if not self.crl_path.exists():
            return set()
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        return {r.serial_number for r in crl}

    def revoke(self, vin: str) -> list[int]:
        """Revoke every certificate issued for ``vin``: add their serials to the CRL.

        Returns the serials newly revoked (empty if all already were). The broker applies
        the new CRL to new connections after a reload (SIGHUP); remove the vehicle's broker
        identity too, so a session that is already connected loses its rights.
        """
        _check_vin(vin)
        ca_cert, ca_key = self._load_ca()
        serials = [c.serial for c in self.issued(vin)]
        if not serials:
            raise UnknownClientError(
                f"no certificate was issued for {vin} in {self.directory}; check the VIN "
                "(telematics pki client VIN issues one) or the --dir"
            )
        current = (
            x509.load_pem_x509_crl(self.crl_path.read_bytes()) if self.crl_path.exists() else None
        )
        revoked = [] if current is None else list(current)
        already = {r.serial_number for r in revoked}
        new = [s for s in serials if s not in already]
        if not new:
            return []
        now = _now()
        for serial in new:
            revoked.append(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
            )
        number = 1
        if current is not None:
            with contextlib.suppress(x509.ExtensionNotFound):
                number = current.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        self._write_crl(ca_cert, ca_key, revoked, crl_number=number + 1)
        return new

    # -- internals

    def _load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        if not (self.ca_cert_path.exists() and self.ca_key_path.exists()):
            raise PkiNotInitialisedError(
                f"no CA in {self.directory}; create one first with: telematics pki init "
                f"--dir {self.directory}"
            )
        cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.ca_key_path} is not an ECDSA key; recreate the CA with --force")
        return cert, key

    @staticmethod
    def _issue(
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        key: ec.EllipticCurvePrivateKey,
        common_name: str,
        validity: dt.timedelta,
        usage: x509.ObjectIdentifier,
        *,
        sans: Iterable[x509.GeneralName] = (),
    ) -> x509.Certificate:
        now = _now()
        not_after = min(now + validity, ca_cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        sans = list(sans)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def _write_crl(
        self,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
        revoked: Iterable[x509.RevokedCertificate],
        *,
        crl_number: int,
    ) -> None:
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(ca_cert.not_valid_after_utc)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        for r in revoked:
            builder = builder.add_revoked_certificate(r)
        crl = builder.sign(ca_key, hashes.SHA256())
        atomic_write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)

    def _read_index(self) -> list[IssuedCertificate]:
        try:
            raw = json.loads(self._index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except ValueError as exc:
            raise PkiError(f"{self._index_path} is not valid JSON ({exc}); restore it") from exc
        return [
            IssuedCertificate(str(c["vin"]), int(c["serial"]), str(c["not_after"]))
            for c in raw.get("certificates", [])
        ]

    def _write_index(self, index: Sequence[IssuedCertificate]) -> None:
        # serials as strings: they are 159-bit numbers, beyond what JSON tools read exactly
        data = {
            "certificates": [
                {"vin": c.vin, "serial": str(c.serial), "not_after": c.not_after} for c in index
            ]
        }
        atomic_write(self._index_path, (json.dumps(data, indent=1) + "\n").encode(), 0o600)
