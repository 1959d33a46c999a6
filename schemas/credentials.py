"""The unit credentials file: what provisioning hands a fleet of in-car units.

A real unit leaves the factory with its own broker identity and the gateway's command
signing key burnt in. Provisioning (``telematics vehicle add VIN``, ``POST /v1/vehicles``)
creates that identity and shows the password once; this file is how it reaches the
simulator (``telematics sim --credentials FILE``), so a simulated fleet logs in exactly as
provisioned vehicles would: MQTT user name and password per VIN, or a TLS client certificate
per VIN. The gateway writes it with :func:`write_credentials`; the simulator reads it with
:func:`load_credentials`. Both sides use this module, so the format has one definition.

Format (JSON, UTF-8)::

    {
      "format": "telematics-unit-credentials/1",
      "broker": {"url": "mqtt://127.0.0.1:1884"},
      "gateway_public_key": "-----BEGIN PUBLIC KEY-----\\n...\\n-----END PUBLIC KEY-----\\n",
      "vehicles": [
        {
          "vin": "WSMZZZ00000000001",
          "mqtt_username": "WSMZZZ00000000001",
          "mqtt_password": "...",
          "client_cert": "certs/WSMZZZ00000000001.crt",
          "client_key": "certs/WSMZZZ00000000001.key"
        }
      ]
    }

``format``
    Required, exactly ``telematics-unit-credentials/1``. A reader refuses any other value
    rather than guess: a later version may move or rename the secrets.
``broker``
    Optional. ``url`` (optional): where the units connect, ``mqtt://host[:port]`` or
    ``mqtts://host[:port]``. The simulator uses it unless ``--mqtt-url`` is given.
``gateway_public_key``
    Optional. The gateway's Ed25519 command signing public key, PEM text. Units that hold it
    refuse unsigned, badly signed and replayed commands.
``vehicles``
    Required, a list (possibly empty), each VIN at most once. Per entry: ``vin`` (required, a
    well-formed VIN), ``mqtt_username`` (required; the gateway uses the VIN),
    ``mqtt_password`` (optional), ``client_cert`` and ``client_key`` (optional paths of a PEM
    client certificate and its private key for TLS client authentication; ``client_key``
    only together with ``client_cert``, which may also hold the key). Relative paths are
    relative to the directory of the credentials file, so the file and its certificates can
    be moved together.

Unknown keys are refused, at the top level and in entries: a misspelt ``mqtt_pasword``
silently ignored would surface only as a refusal by the broker, far from its cause. A
reader's errors are :class:`ValueError` naming the file and the entry (``vehicles[3]
(VIN)``), never a password.

The file holds secrets: :func:`write_credentials` creates it with mode 0600, atomically
(a reader sees the old file or the new one, never half of one), and
:func:`load_credentials` logs a warning when others may read it.

Imports: the standard library and :mod:`schemas.vin` (the contract's VIN rule) only, so the
gateway and the simulator can both use it; it lives in ``schemas`` (it was
``device_sim.credentials``, which re-exports it) because it is part of what an installation
hands its units, and the gateway must not import the simulator (see
docs/decisions/0013-architecture-step.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from schemas.vin import is_valid_vin

__all__ = [
    "FORMAT",
    "UnitCredentials",
    "VehicleCredential",
    "dump_credentials",
    "load_credentials",
    "parse_credentials",
    "write_atomically",
    "write_credentials",
]

log = logging.getLogger(__name__)

#: the value of ``"format"`` this module reads and writes
FORMAT: Final = "telematics-unit-credentials/1"

_TOP_KEYS: Final = frozenset({"format", "broker", "gateway_public_key", "vehicles"})
_BROKER_KEYS: Final = frozenset({"url"})
_ENTRY_KEYS: Final = frozenset(
    {"vin", "mqtt_username", "mqtt_password", "client_cert", "client_key"}
)


@dataclass(frozen=True, kw_only=True, slots=True)
class VehicleCredential:
    """One vehicle's broker identity. The password is left out of ``repr`` so that it cannot
    end up in a log line or a traceback by accident."""

    vin: str
    mqtt_username: str
    mqtt_password: str | None = field(default=None, repr=False)
    #: PEM client certificate for TLS client authentication (CN = VIN at the gateway's broker)
    client_cert: Path | None = None
    #: its private key; None: the key is in ``client_cert`` (or there is no certificate)
    client_key: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.vin, str) or not is_valid_vin(self.vin):
            raise ValueError(
                f"invalid VIN {self.vin!r}: expected 17 characters from 0-9 and A-Z "
                "without I, O or Q"
            )
        if not isinstance(self.mqtt_username, str) or not self.mqtt_username:
            raise ValueError("mqtt_username must be a non-empty string")
        if self.mqtt_password is not None and (
            not isinstance(self.mqtt_password, str) or not self.mqtt_password
        ):
            # the value is not shown: it may be a real password with a wrong type
            raise ValueError("mqtt_password must be a non-empty string (or left out)")
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert (the certificate it belongs to)")


@dataclass(frozen=True, kw_only=True, slots=True)
class UnitCredentials:
    """A credentials file's contents. ``vehicles`` maps VIN to entry, in file order."""

    vehicles: Mapping[str, VehicleCredential] = field(default_factory=lambda: MappingProxyType({}))
    #: the gateway's command signing public key (PEM), if the file has one
    gateway_public_key_pem: bytes | None = None
    #: ``mqtt://host[:port]`` or ``mqtts://host[:port]``, if the file names a broker
    broker_url: str | None = None
    #: the file these came from (None if built in memory), for messages
    source: Path | None = None

    def __post_init__(self) -> None:
        for vin, entry in self.vehicles.items():
            if vin != entry.vin:
                raise ValueError(f"vehicles[{vin!r}] holds the entry of {entry.vin}")
        # a read-only view: a frozen object whose mapping could change would not be frozen
        object.__setattr__(self, "vehicles", MappingProxyType(dict(self.vehicles)))

    @classmethod
    def of(
        cls,
        vehicles: Iterable[VehicleCredential],
        *,
        gateway_public_key_pem: bytes | None = None,
        broker_url: str | None = None,
    ) -> UnitCredentials:
        """Build from a list of entries; ValueError if a VIN appears twice."""
        by_vin: dict[str, VehicleCredential] = {}
        for entry in vehicles:
            if entry.vin in by_vin:
                raise ValueError(f"duplicate VIN {entry.vin}")
            by_vin[entry.vin] = entry
        return cls(
            vehicles=by_vin, gateway_public_key_pem=gateway_public_key_pem, broker_url=broker_url
        )


# --- reading ------------------------------------------------------------------------------------


def load_credentials(path: str | os.PathLike[str]) -> UnitCredentials:
    """Read and check a credentials file. Relative certificate paths are resolved against
    the file's directory. Raises ValueError (naming the file and the entry) for malformed
    content, OSError if the file cannot be read."""
    path = Path(path)
    raw = path.read_bytes()
    with contextlib.suppress(OSError):
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "%s holds MQTT passwords but other users may read it; chmod 600 %s", path, path
            )
    return parse_credentials(raw, source=path)


def parse_credentials(raw: bytes | str, *, source: Path) -> UnitCredentials:
    """:func:`load_credentials` without the reading: ``source`` names the file in messages
    and is the base of relative certificate paths."""
    where = str(source)
    try:
        document = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    if not isinstance(document, dict):
        raise ValueError(f'{where}: expected a JSON object with "format": {FORMAT!r}')
    fmt = document.get("format")
    if fmt != FORMAT:
        found = 'no "format"' if fmt is None else f"format {fmt!r}"
        raise ValueError(
            f'{where}: unknown credentials file format ({found}); expected "format": {FORMAT!r}'
        )
    _no_unknown_keys(document, _TOP_KEYS, where)

    broker_url: str | None = None
    broker = document.get("broker")
    if broker is not None:
        if not isinstance(broker, dict):
            raise ValueError(f'{where}: "broker" must be an object like {{"url": ...}}')
        _no_unknown_keys(broker, _BROKER_KEYS, f"{where}: broker")
        url = broker.get("url")
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise ValueError(
                f"{where}: broker.url must be a non-empty string like mqtt://host:1883"
            )
        broker_url = url.strip() if isinstance(url, str) else None

    key_pem: bytes | None = None
    key = document.get("gateway_public_key")
    if key is not None:
        if not isinstance(key, str) or "-----BEGIN" not in key:
            raise ValueError(f"{where}: gateway_public_key must be PEM text (-----BEGIN ...)")
        key_pem = key.encode("ascii", errors="replace")

    entries = document.get("vehicles")
    if not isinstance(entries, list):
        raise ValueError(f'{where}: "vehicles" must be a list of vehicle entries')
    vehicles: dict[str, VehicleCredential] = {}
    first_index: dict[str, int] = {}
    for index, entry in enumerate(entries):
        credential = _entry(entry, f"{where}: vehicles[{index}]", source.parent)
        if credential.vin in vehicles:
            raise ValueError(
                f"{where}: vehicles[{index}]: duplicate VIN {credential.vin} (also "
                f"vehicles[{first_index[credential.vin]}]); each vehicle may appear once"
            )
        vehicles[credential.vin] = credential
        first_index[credential.vin] = index
    return UnitCredentials(
        vehicles=vehicles, gateway_public_key_pem=key_pem, broker_url=broker_url, source=source
    )


def _no_unknown_keys(obj: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; expected "
            f"{', '.join(sorted(known))}"
        )


def _entry(entry: Any, where: str, base: Path) -> VehicleCredential:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with vin and mqtt_username")
    vin = entry.get("vin")
    if isinstance(vin, str):
        where = f"{where} ({vin})"
    _no_unknown_keys(entry, _ENTRY_KEYS, where)
    if "vin" not in entry:
        raise ValueError(f'{where}: no "vin"')
    if "mqtt_username" not in entry:
        raise ValueError(f'{where}: no "mqtt_username" (the gateway uses the VIN)')
    paths: dict[str, Path | None] = {}
    for name in ("client_cert", "client_key"):
        value = entry.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{where}: {name} must be a non-empty path string")
        paths[name] = None if value is None else base / Path(value)
    try:
        return VehicleCredential(
            vin=entry["vin"],
            mqtt_username=entry["mqtt_username"],
            mqtt_password=entry.get("mqtt_password"),
            client_cert=paths["client_cert"],
            client_key=paths["client_key"],
        )
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


# --- writing ------------------------------------------------------------------------------------


def dump_credentials(credentials: UnitCredentials) -> bytes:
    """The file's bytes for ``credentials`` (JSON, indented, ending in a newline).

    Certificate paths are written as they are: keep them relative to the directory the
    file will be in (or absolute), since that is how :func:`load_credentials` reads them.
    """
    document: dict[str, Any] = {"format": FORMAT}
    if credentials.broker_url is not None:
        document["broker"] = {"url": credentials.broker_url}
    if credentials.gateway_public_key_pem is not None:
        document["gateway_public_key"] = credentials.gateway_public_key_pem.decode("ascii")
    vehicles: list[dict[str, str]] = []
    for entry in credentials.vehicles.values():
        item = {"vin": entry.vin, "mqtt_username": entry.mqtt_username}
        if entry.mqtt_password is not None:
            item["mqtt_password"] = entry.mqtt_password
        if entry.client_cert is not None:
            item["client_cert"] = str(entry.client_cert)
        if entry.client_key is not None:
            item["client_key"] = str(entry.client_key)
        vehicles.append(item)
    document["vehicles"] = vehicles
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_credentials(path: str | os.PathLike[str], credentials: UnitCredentials) -> None:
    """Write ``credentials`` to ``path`` with mode 0600, atomically (:func:`write_atomically`)."""
    write_atomically(Path(path), dump_credentials(credentials))


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically and durably: the data goes to a
    temporary file in the same directory (created 0600, so secrets are never readable by
    others, not even for a moment), is flushed to disk, then renamed over ``path``, and the
    rename is made durable where the file system allows it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # make the rename itself durable (best effort: not every file system allows it)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
