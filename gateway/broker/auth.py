"""Vehicle and service identities on the private broker: who may log in, and what each may do.

Two mechanisms, both shipped with Mosquitto 2.0 (Debian's ``mosquitto`` package), nothing
compiled, both rendered from the state database (through plain callables here):

Authentication: the password file
    One ``username:hash`` line per identity in Mosquitto 2.0's ``$7$`` format
    (PBKDF2-HMAC-SHA512, what ``mosquitto_passwd`` writes): ``$7$<iterations>$<base64 salt>$
    <base64 hash>``, standard base64 with padding, a salt of exactly 12 bytes and a 64-byte
    hash; Mosquitto 2.0.11 drops (with an error in its log) any entry whose salt or hash has
    another length. :func:`hash_password` computes it with :mod:`hashlib`, so provisioning
    thousands of vehicles needs no ``mosquitto_passwd`` subprocess per vehicle. Re-read on
    SIGHUP: a connected client whose line is gone or whose password changed is disconnected
    at once. Only hashes are stored, so the password file stays the place for passwords:
    the plugin below takes a new password only in plain text.

    Where our vehicle password plugin could be compiled (:mod:`gateway.broker.vehicle_auth`,
    decision 0055), the vehicles' lines are in its own table instead
    (:func:`render_vehicle_table`, ``BrokerAuthFiles(vehicle_table=True)``): it re-reads
    the table when the sync replaces it and disconnects exactly the units whose entry went
    or changed, so a vehicle change needs no reload, which re-checked every connected
    client. The password file then holds the service accounts and integrations. The same
    plugin then also answers the vehicles' ACL checks from that table, with the rights
    below (decision 0060), and Dynamic Security holds no vehicle: a bulk provisioning is
    one table swap instead of two plugin commands per vehicle (each rewriting the plugin's
    whole file), so it never restarts the broker.

Authorization: the Dynamic Security plugin
    Not Mosquitto's ACL file: in 2.0.11 it never checks SUBSCRIBE (``security_default.c``:
    "FIXME - implement ACL subscription strings"), so any vehicle credential could join the
    gateway's shared subscription ``$share/telematics-gateway/v1/vehicles/+/telemetry`` and
    be dealt a share of every vehicle's messages, which the broker then dropped because
    that member may not read them (issue 10). The plugin checks subscriptions, publishes
    and deliveries, and binds a client id to a user name. :func:`render_dynsec` writes its
    whole file before the broker starts (so it is always derived from the state database);
    at run time :class:`BrokerAuthSync` sends the differences as commands
    (:mod:`gateway.broker.control`). A vehicle writes its ``telemetry``, ``events``,
    ``status`` and ``commands/result`` and subscribes to and reads its ``commands`` and
    ``feedback`` (the gateway's notices of what it refused), nothing else.

    * Default: nothing is allowed but unsubscribing. A user name the plugin does not know
      (a revoked vehicle's certificate, a service account of another installation) has no
      right at all: publishes get PUBACK 0x87, subscriptions SUBACK 0x87, nothing is
      delivered.
    * Without our plugin (no compiler), each vehicle is a plugin client (user name = VIN,
      ``clientid`` = VIN) with a role of its own, :func:`vehicle_acls`: publish to its own
      ``telemetry``, ``events``, ``status`` and ``commands/result``, subscribe to exactly
      its own ``commands`` topic and receive messages on it. Anything else, including
      ``$share/...``, ``#``, ``$SYS/#``, ``$CONTROL/#`` and other VINs' topics, is refused.
    * The client has no password in the plugin, so its password check defers to the
      password file; before deferring it compares the client id: a vehicle connecting with
      any client id but its VIN gets CONNACK 0x87 (and cannot kick another vehicle off or
      fire its Last Will). Certificate clients skip password checks altogether, so the TLS
      listener sets ``use_username_as_clientid`` instead (:class:`~gateway.broker.TlsListener`).
    * Service accounts (:class:`ServiceIdentity`) get :data:`SERVICE_ACLS` or
      :data:`CONTROL_ACLS`, without a client id binding (several gateway processes share
      one account under distinct client ids).

How Mosquitto 2.0.11 applies this was established by experiment; ``tests/test_broker_auth.py``
and ``tests/test_abuse_broker.py`` pin it down against the real broker, decision 0008 has
the measurements.

Everything here is synchronous and uses only the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from gateway.files import write_private_file

__all__ = [
    "BRIDGE_ACLS",
    "CONTROL_ACLS",
    "DEFAULT_ITERATIONS",
    "DYNSEC_FILE_NAME",
    "EDGE_SERVICE_ACLS",
    "IDENTITY_SYNC_REST_MAX_S",
    "IDENTITY_SYNC_SHARE",
    "PASSWORD_FILE_NAME",
    "SALT_BYTES",
    "SERVICE_ACLS",
    "TOLERATED_ERRORS",
    "VEHICLE_TABLE_FILE_NAME",
    "BrokerAuthFiles",
    "BrokerAuthSync",
    "ControlChannel",
    "DynsecChanges",
    "IntegrationIdentity",
    "ServiceIdentity",
    "VehicleIdentity",
    "VehicleTableError",
    "generate_password",
    "hash_password",
    "integration_acls",
    "integration_changes",
    "integration_topic",
    "plan_dynsec_changes",
    "render_dynsec",
    "render_password_file",
    "render_vehicle_table",
    "vehicle_acls",
    "vehicle_topics",
    "verify_mqtt_password",
]

log = logging.getLogger(__name__)

PASSWORD_FILE_NAME = "mosquitto.passwd"
DYNSEC_FILE_NAME = "dynamic-security.json"

DEFAULT_ITERATIONS = 101
"""``mosquitto_passwd``'s default. Low on purpose: the broker pays it on every CONNECT, and a
fleet reconnects all at once after an outage. The iteration count protects guessable human
passwords; vehicles and services get :func:`generate_password` secrets (192 random bits),
which no iteration count makes easier or harder to brute-force."""

SALT_BYTES = 12
"""Mosquitto 2.0 accepts exactly 12 bytes of salt (and a 64-byte hash), nothing else."""

_HASH_BYTES = 64  # SHA-512

_VIN_RE = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
"""Same alphabet as :data:`schemas.vin.VIN_PATTERN` (a test keeps them equal); repeated here
so this package stays importable without pydantic."""

_SERVICE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

_B64 = r"[A-Za-z0-9+/]+={0,2}"
_HASH_RE = re.compile(rf"\$7\$[1-9][0-9]{{0,8}}\${_B64}\${_B64}|\$6\${_B64}\${_B64}")

_VEHICLE_WRITE = ("telemetry", "events", "status", "commands/result")
_VEHICLE_READ = ("commands", "feedback")

_CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"

SERVICE_ACLS: tuple[tuple[str, str], ...] = (
    ("subscribePattern", "$share/+/v1/#"),
    ("subscribePattern", "v1/#"),
    ("publishClientReceive", "v1/#"),
    ("publishClientSend", "v1/vehicles/+/commands"),
    ("publishClientSend", "v1/vehicles/+/feedback"),
    ("publishClientSend", "integrations/+/alerts"),
)
"""(ACL type, topic) of the gateway's service account: read everything of the device
contract, directly or through any shared-subscription group (the broker checks a
``$share/<group>/<filter>`` subscription as that whole string), and publish only commands
(ingest publishes nothing but the rate-bounded notices on a vehicle's ``feedback`` topic;
the command service publishes commands, which units check for the gateway's signature
anyway), and the organizations' alerts on their integration topics
(:func:`integration_topic`, the API's MQTT fan-out)."""

CONTROL_ACLS: tuple[tuple[str, str], ...] = (
    ("publishClientSend", _CONTROL_TOPIC),
    ("subscribeLiteral", _CONTROL_TOPIC + "/response"),
    ("publishClientReceive", _CONTROL_TOPIC + "/response"),
    ("publishClientSend", "v1/vehicles/+/status"),
)
"""(ACL type, topic) of the Dynamic Security administrator: the control topic and its
answers, and of the device contract only publishing a vehicle's ``status``: the sync
deletes the retained status of a VIN that changed hands or was removed
(:func:`gateway.broker.control.clear_retained`; the administrator could grant itself any
right, so this adds none)."""

EDGE_SERVICE_ACLS: tuple[tuple[str, str], ...] = tuple(
    ("publishClientSend", f"edges/+/v1/vehicles/+/{t}") for t in _VEHICLE_READ
)
"""Added to the service account's rights on a core broker with edge brokers (one that has
bridge accounts): commands and feedback notices routed to their VIN's edge
(:func:`schemas.edges.routed_topic`, decision 0038)."""

BRIDGE_ACLS: tuple[tuple[str, str], ...] = (
    *(("publishClientSend", f"v1/vehicles/+/{t}") for t in _VEHICLE_WRITE),
    # under the edges' prefixes (schemas.edges.edge_prefix): each bridge subscribes its own
    *(("subscribePattern", f"edges/+/v1/vehicles/+/{t}") for t in _VEHICLE_READ),
    *(("publishClientReceive", f"edges/+/v1/vehicles/+/{t}") for t in _VEHICLE_READ),
)
"""(ACL type, topic) of an edge broker's bridge on the core broker (decision 0038): what
its units may write, for every VIN (the edge checked each unit's own rights before it
forwards anything), and the commands and feedback for every VIN (the edge delivers each to
its own VIN only). No ``$share``, no ``$CONTROL``, nothing outside the device contract."""

_DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}
"""What a client may do that no ACL of its roles mentions: nothing but unsubscribe."""

_SERVICE_ROLE = "telematics-service"
_CONTROL_ROLE = "telematics-broker-admin"
_BRIDGE_ROLE = "telematics-edge-bridge"


# --------------------------------------------------------------------------- passwords


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_password(password: str) -> bytes:
    if not password:
        raise ValueError("a broker password must not be empty")
    if "\x00" in password:
        # Mosquitto hashes strlen(password): the broker would see a shorter password
        raise ValueError("a broker password must not contain a NUL character")
    return password.encode("utf-8")


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """Return ``password`` hashed for a Mosquitto 2.0 password file (the part after ``:``).

    ``$7$<iterations>$<base64 salt>$<base64 hash>``, PBKDF2-HMAC-SHA512 over the UTF-8
    bytes, exactly what ``mosquitto_passwd -b`` writes. ``salt`` defaults to 12 random bytes
    (pass one only to reproduce a known hash).
    """
    raw = _check_password(password)
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if len(salt) != SALT_BYTES:
        raise ValueError(f"the salt must be {SALT_BYTES} bytes (Mosquitto's), got {len(salt)}")
    if not 1 <= iterations <= 999_999_999:
        raise ValueError(f"iterations must be 1..999999999, got {iterations}")
    digest = hashlib.pbkdf2_hmac("sha512", raw, salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def _decode_hash(hashed: str) -> tuple[int | None, bytes, bytes]:
    """Split a ``$7$`` (or legacy ``$6$``) hash into (iterations or None, salt, digest).

    Raises ``ValueError`` for anything Mosquitto 2.0.11 would drop from its password file.
    """
    if _HASH_RE.fullmatch(hashed) is None:
        raise ValueError(
            "not a Mosquitto password hash ($7$<iterations>$<salt>$<hash>; "
            "make one with hash_password())"
        )
    parts = hashed.split("$")
    iterations = int(parts[2]) if parts[1] == "7" else None
    try:
        salt = base64.b64decode(parts[-2], validate=True)
        digest = base64.b64decode(parts[-1], validate=True)
    except binascii.Error:
        raise ValueError("the salt or hash of a Mosquitto password hash is not base64") from None
    if len(salt) != SALT_BYTES or len(digest) != _HASH_BYTES:
        raise ValueError(
            f"a Mosquitto password hash needs a {SALT_BYTES}-byte salt and a "
            f"{_HASH_BYTES}-byte hash (Mosquitto drops other entries); got "
            f"{len(salt)} and {len(digest)} bytes"
        )
    return iterations, salt, digest


def verify_mqtt_password(*, password: str, password_hash: str) -> bool:
    """Whether Mosquitto would accept ``password`` for ``password_hash``; False if malformed.
    Keyword-only: both are strings, and a swap must not go unnoticed (user passwords have
    :func:`gateway.auth.passwords.verify_password`).

    Constant-time comparison. Also understands the older ``$6$`` (one SHA-512 round over
    password and salt) that Mosquitto 2.0 still accepts.
    """
    try:
        raw = _check_password(password)
        iterations, salt, digest = _decode_hash(password_hash)
    except ValueError:
        return False
    if iterations is None:
        computed = hashlib.sha512(raw + salt).digest()
    else:
        computed = hashlib.pbkdf2_hmac("sha512", raw, salt, iterations)
    return hmac.compare_digest(computed, digest)


def generate_password() -> str:
    """A new random secret for a vehicle or service: 192 bits, URL-safe (32 characters).

    URL-safe so it survives environment variables, URLs and config files unquoted.
    """
    return secrets.token_urlsafe(24)


# --------------------------------------------------------------------------- identities


@dataclass(frozen=True, slots=True)
class VehicleIdentity:
    """A vehicle allowed on the broker, its username being its VIN.

    ``password_hash`` is a :func:`hash_password` value, or None for a vehicle that
    authenticates by client certificate only (TLS listener with
    ``use_identity_as_username``, certificate CN = VIN): such a vehicle has no password-file
    line, so it cannot log in with a password at all, but it does get its rights.
    """

    vin: str
    password_hash: str | None = None
    #: which holding period of the VIN this identity is (any value that changes when the
    #: VIN passes to a new holder); the sync discards the broker session of a VIN whose
    #: holder changed, so nothing waiting there reaches the next holder's unit
    holder: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # validated here, not at render time, so a bad record fails where it was made
        if not isinstance(self.vin, str) or _VIN_RE.fullmatch(self.vin) is None:
            raise ValueError(
                f"invalid VIN {self.vin!r} for a broker identity: expected 17 characters "
                "from 0-9 and A-Z without I, O or Q"
            )
        if self.password_hash is not None:
            _decode_hash(self.password_hash)


@dataclass(frozen=True, slots=True)
class ServiceIdentity:
    """One of the installation's own accounts.

    ``kind`` ``"service"``: the gateway and the command service (:data:`SERVICE_ACLS`:
    subscribe to ``v1/#``, also through shared subscriptions, receive all of ``v1/#``,
    publish only commands). ``"control"``: the Dynamic Security administrator the broker
    sync logs in with (:data:`CONTROL_ACLS`: the plugin's control topic, nothing else);
    its client id is bound to its name, like a vehicle's. ``"bridge"``: an edge broker's
    bridge into the core broker (:data:`BRIDGE_ACLS`, client id bound to its name;
    decision 0038).

    Names are 1-64 of ``A-Z a-z 0-9 . _ -``: nothing that could start a comment or split a
    ``user:hash`` line, and never a VIN (17 characters of the VIN alphabet), so no account
    can shadow a vehicle.
    """

    username: str
    password_hash: str
    kind: Literal["service", "control", "bridge"] = "service"

    def __post_init__(self) -> None:
        if (
            not isinstance(self.username, str)
            or _SERVICE_RE.fullmatch(self.username) is None
            or _VIN_RE.fullmatch(self.username) is not None
        ):
            raise ValueError(
                f"invalid service account name {self.username!r}: use 1-64 characters "
                "from A-Z, a-z, 0-9, '.', '_' and '-' that do not form a VIN"
            )
        if self.kind not in ("service", "control", "bridge"):
            raise ValueError(f"invalid service account kind {self.kind!r}")
        _decode_hash(self.password_hash)


_INTEGRATION_RE = re.compile(r"integration-[1-9][0-9]{0,17}")


@dataclass(frozen=True, slots=True)
class IntegrationIdentity:
    """An organization's integration credential (decision 0017): user name
    ``integration-<id>``, may subscribe to and read its organization's alert topic
    (:func:`integration_topic`) and do nothing else; its client id is its user name."""

    username: str
    account_id: int
    password_hash: str

    def __post_init__(self) -> None:
        if not isinstance(self.username, str) or not _INTEGRATION_RE.fullmatch(self.username):
            raise ValueError(
                f"invalid integration name {self.username!r}: expected integration-<id>"
            )
        if not isinstance(self.account_id, int) or not 0 < self.account_id < 2**63:
            raise ValueError(f"invalid account id {self.account_id!r} for an integration")
        _decode_hash(self.password_hash)


def vehicle_topics(vin: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The topics a vehicle may (write, read): its own ``v1/vehicles/<VIN>/...`` only.

    Spelled out here (not imported from :mod:`schemas.topics`) to keep this package free of
    pydantic; a test checks they are the device contract's topics.
    """
    prefix = f"v1/vehicles/{vin}/"
    return (
        tuple(prefix + t for t in _VEHICLE_WRITE),
        tuple(prefix + t for t in _VEHICLE_READ),
    )


def vehicle_acls(vin: str) -> tuple[tuple[str, str], ...]:
    """(ACL type, topic) of a vehicle's role: publish its own four topics, subscribe to its
    own ``commands`` and ``feedback`` topics, spelled exactly (``subscribeLiteral``: a
    filter with a wildcard is another string and refused), and receive what is published
    there."""
    write, read = vehicle_topics(vin)
    return (
        *(("publishClientSend", t) for t in write),
        *(("subscribeLiteral", t) for t in read),
        *(("publishClientReceive", t) for t in read),
    )


def vehicle_role_name(vin: str) -> str:
    return f"vehicle-{vin}"


def integration_topic(account_id: int) -> str:
    """The topic an organization's alerts are published on for its integrations
    (home-automation tools and the like; decision 0017)."""
    return f"integrations/{account_id}/alerts"


def integration_acls(account_id: int) -> tuple[tuple[str, str], ...]:
    """(ACL type, topic) of an integration credential's role: subscribe to its
    organization's alert topic, spelled exactly (no wildcard, no ``$share/``), and receive
    what is published there; no publish at all."""
    topic = integration_topic(account_id)
    return (("subscribeLiteral", topic), ("publishClientReceive", topic))


def _integration_role_name(username: str) -> str:
    return f"role-{username}"


def _integration_client(i: IntegrationIdentity) -> dict[str, Any]:
    # the client id is bound to the name: an integration cannot take over (and kick off)
    # a vehicle's or a service's session by connecting under its client id
    return {
        "username": i.username,
        "clientid": i.username,
        "roles": [{"rolename": _integration_role_name(i.username)}],
    }


def _role(name: str, acls: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return {
        "rolename": name,
        "acls": [{"acltype": kind, "topic": topic, "allow": True} for kind, topic in acls],
    }


def _vehicle_client(vin: str) -> dict[str, Any]:
    # no "password": the plugin then defers the password check to the password file, after
    # it has checked the client id
    return {"username": vin, "clientid": vin, "roles": [{"rolename": vehicle_role_name(vin)}]}


def _service_client(service: ServiceIdentity) -> dict[str, Any]:
    client: dict[str, Any] = {"username": service.username}
    if service.kind == "control":
        client["clientid"] = service.username
        client["roles"] = [{"rolename": _CONTROL_ROLE}]
    elif service.kind == "bridge":
        # bound to its client id: one edge's bridge cannot take over another's session
        client["clientid"] = service.username
        client["roles"] = [{"rolename": _BRIDGE_ROLE}]
    else:
        client["roles"] = [{"rolename": _SERVICE_ROLE}]
    return client


def render_dynsec(
    vehicles: Iterable[VehicleIdentity],
    services: Iterable[ServiceIdentity],
    integrations: Iterable[IntegrationIdentity] = (),
    *,
    vehicle_rights: bool = True,
) -> str:
    """The Dynamic Security plugin's file: default access, every identity as a client, the
    two shared roles, one role per vehicle and one per integration, sorted (the same
    identities always give the same bytes). Certificate-only vehicles are clients too: the
    plugin applies rights by user name, which is the certificate's common name on the TLS
    listener.

    Without ``vehicle_rights`` the vehicles are left out: our vehicle_auth plugin holds
    their rights in its table (decision 0060), and Dynamic Security defers for a user name
    it has no client for."""
    vehicles, services = list(vehicles), list(services)
    found = sorted(integrations, key=_int_key)
    _check_unique(vehicles, services, found)
    vins = sorted(v.vin for v in vehicles) if vehicle_rights else []
    bridged = any(s.kind == "bridge" for s in services)
    roles = [
        _role(_SERVICE_ROLE, SERVICE_ACLS + (EDGE_SERVICE_ACLS if bridged else ())),
        _role(_CONTROL_ROLE, CONTROL_ACLS),
        _role(_BRIDGE_ROLE, BRIDGE_ACLS),
        *(_role(vehicle_role_name(vin), vehicle_acls(vin)) for vin in vins),
        *(_integration_role(i) for i in found),
    ]
    clients = [
        *(_service_client(s) for s in sorted(services, key=_svc_key)),
        *(_vehicle_client(vin) for vin in vins),
        *(_integration_client(i) for i in found),
    ]
    document = {
        "defaultACLAccess": _DEFAULT_ACCESS,
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
    return json.dumps(document, separators=(",", ":")) + "\n"


@dataclass(frozen=True, slots=True)
class DynsecChanges:
    """What the plugin must be told to go from the vehicles it has to the wanted ones."""

    add: tuple[str, ...]
    remove: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.add) + len(self.remove)

    def add_commands(self) -> list[dict[str, Any]]:
        """Two control commands per added vehicle: its role, then its client (which refers
        to the role)."""
        out: list[dict[str, Any]] = []
        for vin in self.add:
            role = _role(vehicle_role_name(vin), vehicle_acls(vin))
            out.append({"command": "createRole", **role})
            out.append({"command": "createClient", **_vehicle_client(vin)})
        return out

    def remove_commands(self) -> list[dict[str, Any]]:
        """Two control commands per removed vehicle: its client (the plugin disconnects it),
        then its role."""
        out: list[dict[str, Any]] = []
        for vin in self.remove:
            out.append({"command": "deleteClient", "username": vin})
            out.append({"command": "deleteRole", "rolename": vehicle_role_name(vin)})
        return out


TOLERATED_ERRORS = frozenset(
    {"Client already exists", "Role already exists", "Client not found", "Role not found"}
)
"""Errors that mean the plugin already is where a command would take it: our roles and
clients are a pure function of the VIN, so an existing one is the one we would create."""


def plan_dynsec_changes(present: Iterable[str], wanted: Iterable[str]) -> DynsecChanges:
    """The vehicles to add and remove, each sorted. ``present`` may hold service account
    names (the plugin lists every client): only VINs are vehicles."""
    have = {u for u in present if _VIN_RE.fullmatch(u)}
    want = set(wanted)
    return DynsecChanges(add=tuple(sorted(want - have)), remove=tuple(sorted(have - want)))


def _integration_role(i: IntegrationIdentity) -> dict[str, Any]:
    return _role(_integration_role_name(i.username), integration_acls(i.account_id))


def integration_changes(
    present: Iterable[str], wanted: Iterable[IntegrationIdentity]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The control commands that take the plugin from the integration clients it has
    (``present``: every client name it lists) to ``wanted``: (add: role then client,
    remove: client then role)."""
    have = {u for u in present if _INTEGRATION_RE.fullmatch(u)}
    want = {i.username: i for i in wanted}
    add: list[dict[str, Any]] = []
    for name in sorted(set(want) - have):
        add.append({"command": "createRole", **_integration_role(want[name])})
        add.append({"command": "createClient", **_integration_client(want[name])})
    remove: list[dict[str, Any]] = []
    for name in sorted(have - set(want)):
        remove.append({"command": "deleteClient", "username": name})
        remove.append({"command": "deleteRole", "rolename": _integration_role_name(name)})
    return add, remove


def _check_unique(
    vehicles: Sequence[VehicleIdentity],
    services: Sequence[ServiceIdentity],
    integrations: Sequence[IntegrationIdentity] = (),
) -> None:
    seen: set[str] = set()
    names = [
        *(v.vin for v in vehicles),
        *(s.username for s in services),
        *(i.username for i in integrations),
    ]
    for name in names:
        if name in seen:
            raise ValueError(
                f"broker username {name!r} appears twice; each vehicle and service account "
                "needs its own name (Mosquitto would silently use only one of them)"
            )
        seen.add(name)


_PASSWORD_HEADER = (
    "# Generated by gateway.broker.auth (vehicles and service accounts); rewritten on every\n"
    "# change and re-read by the broker on SIGHUP, do not edit. Format username then hash\n"
    "# ($7$ = PBKDF2-SHA512, as mosquitto_passwd writes). Rights are in the Dynamic Security\n"
    "# plugin's file next to this one.\n"
)


def render_password_file(
    vehicles: Iterable[VehicleIdentity],
    services: Iterable[ServiceIdentity],
    integrations: Iterable[IntegrationIdentity] = (),
) -> str:
    """The password file: services first, then vehicles with a password, then
    integrations, sorted by name.

    Sorted so the same identities always give the same bytes, which is how
    :meth:`BrokerAuthFiles.write` knows that nothing changed and no reload is needed.
    """
    vehicles, services = list(vehicles), list(services)
    found = sorted(integrations, key=_int_key)
    _check_unique(vehicles, services, found)
    lines = [_PASSWORD_HEADER]
    lines.extend(f"{s.username}:{s.password_hash}\n" for s in sorted(services, key=_svc_key))
    lines.extend(
        f"{v.vin}:{v.password_hash}\n"
        for v in sorted(vehicles, key=_vin_key)
        if v.password_hash is not None
    )
    lines.extend(f"{i.username}:{i.password_hash}\n" for i in found)
    return "".join(lines)


_TABLE_HEADER = (
    "# Generated by gateway.broker.auth: the vehicles' user names and password hashes, read\n"
    "# by our vehicle_auth plugin whenever this file is replaced (decision 0055), do not\n"
    "# edit. Format VIN:hash as in the password file; the last line counts the entries.\n"
)


def render_vehicle_table(vehicles: Iterable[VehicleIdentity], token: str) -> str:
    """The vehicle password plugin's table (:mod:`gateway.broker.vehicle_auth`): one
    ``VIN:hash`` line per vehicle with a password and ``VIN:-`` per certificate-only
    vehicle (its rights, no password: decision 0060), sorted, then ``# end <entries>
    <token>``. The plugin treats a file without that line, or with another count, as
    empty (a partial file never lets anyone in) and acknowledges the token it loaded."""
    if not re.fullmatch(r"[A-Za-z0-9]{1,64}", token):
        raise ValueError(f"a vehicle table token is 1-64 letters and digits, got {token!r}")
    vehicles = list(vehicles)
    _check_unique(vehicles, (), ())
    lines = [_TABLE_HEADER]
    lines.extend(f"{v.vin}:{v.password_hash or '-'}\n" for v in sorted(vehicles, key=_vin_key))
    lines.append(f"# end {len(lines) - 1} {token}\n")
    return "".join(lines)


def _svc_key(s: ServiceIdentity) -> str:
    return s.username


def _int_key(i: IntegrationIdentity) -> str:
    return i.username


def _vin_key(v: VehicleIdentity) -> str:
    return v.vin


# --------------------------------------------------------------------------- files


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see
    :func:`gateway.files.write_private_file`, the one writer of private files)."""
    write_private_file(path, data, mode=mode)


VEHICLE_TABLE_FILE_NAME = "vehicles.table"

VEHICLE_TABLE_WAIT_S = 10.0
"""How long :meth:`BrokerAuthFiles.wait_vehicle_table` waits for the plugin to load a new
table (it looks every 20 ms, at least every ~100 ms on an idle broker)."""


class VehicleTableError(RuntimeError):
    """The broker's vehicle password plugin did not load the table the gateway wrote."""


class BrokerAuthFiles:
    """The broker's password file and the Dynamic Security plugin's file in one directory
    (mode 0700, files 0600), and with ``vehicle_table`` the vehicle password plugin's table.

    Point :class:`~gateway.broker.BrokerConfig` at :attr:`password_file` and
    :attr:`dynsec_file` (with ``vehicle_table``: :attr:`vehicle_table_file` and the plugin,
    :mod:`gateway.broker.vehicle_auth`), and :meth:`write` them before every broker start
    (Mosquitto refuses to start when the password file is missing; the plugin would start
    empty). While the broker runs, only the password file and the table are ours to
    rewrite: the Dynamic Security plugin saves its own file after every control command and
    never re-reads it.

    With ``vehicle_table`` the vehicles' passwords are in the table only, and the password
    file holds the service accounts and integrations: a vehicle change then needs no reload
    (decision 0055). Their rights are in it too, so the Dynamic Security file is rendered
    without vehicles (decision 0060).
    """

    def __init__(self, directory: Path, *, vehicle_table: bool = False) -> None:
        self.directory = Path(directory).absolute()
        self.vehicle_table = vehicle_table

    def __repr__(self) -> str:
        table = " vehicle_table" if self.vehicle_table else ""
        return f"<BrokerAuthFiles {self.directory}{table}>"

    @property
    def password_file(self) -> Path:
        return self.directory / PASSWORD_FILE_NAME

    @property
    def dynsec_file(self) -> Path:
        return self.directory / DYNSEC_FILE_NAME

    @property
    def vehicle_table_file(self) -> Path:
        return self.directory / VEHICLE_TABLE_FILE_NAME

    @property
    def vehicle_table_applied(self) -> Path:
        """What the plugin writes after each load: ``ok <token> <entries> <skipped>`` or
        ``invalid <reason>``."""
        return self.directory / (VEHICLE_TABLE_FILE_NAME + ".applied")

    def _mkdir(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def _in_password_file(self, vehicles: list[VehicleIdentity]) -> list[VehicleIdentity]:
        return [] if self.vehicle_table else vehicles

    def ensure(self) -> None:
        """Create files that are missing as valid files with no identities (deny everyone).
        Existing files are kept."""
        self._mkdir()
        files = [
            (self.password_file, render_password_file((), ())),
            (self.dynsec_file, render_dynsec((), ())),
        ]
        if self.vehicle_table:
            files.append((self.vehicle_table_file, render_vehicle_table((), _token())))
        for path, text in files:
            if not path.exists():
                atomic_write(path, text)

    def write(
        self,
        vehicles: Iterable[VehicleIdentity],
        services: Iterable[ServiceIdentity],
        integrations: Iterable[IntegrationIdentity] = (),
    ) -> None:
        """Render and replace the files, for a broker about to start. All are rendered
        before any is written, so invalid identities change nothing."""
        vehicles, services, found = list(vehicles), list(services), list(integrations)
        _check_unique(vehicles, services, found)
        password_text = render_password_file(self._in_password_file(vehicles), services, found)
        dynsec_text = render_dynsec(
            vehicles, services, found, vehicle_rights=not self.vehicle_table
        )
        table_text = render_vehicle_table(vehicles, _token()) if self.vehicle_table else None
        self._mkdir()
        atomic_write(self.password_file, password_text)
        atomic_write(self.dynsec_file, dynsec_text)
        if table_text is not None:
            atomic_write(self.vehicle_table_file, table_text)

    def write_password_file(
        self,
        vehicles: Iterable[VehicleIdentity],
        services: Iterable[ServiceIdentity],
        integrations: Iterable[IntegrationIdentity] = (),
    ) -> bool:
        """Replace the password file if its content changed; True if it did (reload then).
        With ``vehicle_table`` the vehicles are not in it (see :meth:`write_vehicle_table`)."""
        vehicles = list(vehicles)
        if self.vehicle_table:
            _check_unique(vehicles, list(services), list(integrations))
        text = render_password_file(self._in_password_file(vehicles), services, integrations)
        self._mkdir()
        try:
            current: str | None = self.password_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current == text:
            return False
        atomic_write(self.password_file, text)
        return True

    def write_vehicle_table(self, vehicles: Iterable[VehicleIdentity]) -> str | None:
        """Replace the vehicle table if its entries changed: the new file's token (pass it
        to :meth:`wait_vehicle_table`), or None when nothing changed."""
        if not self.vehicle_table:
            raise RuntimeError(f"{self!r} keeps the vehicles in the password file")
        token = _token()
        text = render_vehicle_table(vehicles, token)
        body = text[: text.rindex("# end ")]
        try:
            current = self.vehicle_table_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = ""
        if "# end " in current and current[: current.rindex("# end ")] == body:
            return None
        self._mkdir()
        atomic_write(self.vehicle_table_file, text)
        return token

    def vehicle_table_vins(self) -> list[str]:
        """The VINs of the vehicle table on disk (each line before its end line), empty
        when there is none: the vehicles the broker's plugin was last given."""
        try:
            text = self.vehicle_table_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        vins = []
        for line in text.splitlines():
            if line.startswith("# end "):
                break
            vin, colon, _ = line.partition(":")
            if colon and _VIN_RE.fullmatch(vin):
                vins.append(vin)
        return vins

    def wait_vehicle_table(self, token: str, timeout_s: float = VEHICLE_TABLE_WAIT_S) -> None:
        """Wait until the broker's plugin has loaded the table of ``token`` (from then on
        its passwords are in force and the units of removed or changed entries are
        disconnected). Raises :class:`VehicleTableError` if the plugin found the table
        unusable or did not load it within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        seen = ""
        while True:
            try:
                seen = self.vehicle_table_applied.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                seen = ""
            words = seen.split()
            if words[:2] == ["ok", token]:
                return
            if words[:1] == ["invalid"]:
                raise VehicleTableError(f"the broker refused the vehicle table: {seen}")
            if time.monotonic() >= deadline:
                raise VehicleTableError(
                    f"the broker did not load the vehicle table {token} within {timeout_s:g} s "
                    f"(its last answer: {seen or 'none'}); is the vehicle_auth plugin loaded?"
                )
            time.sleep(0.005)


def _token() -> str:
    return secrets.token_hex(8)


# --------------------------------------------------------------------------- sync


class ControlChannel(Protocol):
    """What the sync needs of :class:`gateway.broker.control.DynsecControl`."""

    def execute(
        self,
        commands: Sequence[Mapping[str, Any]],
        *,
        per_message: int = ...,
        tolerate: frozenset[str] = ...,
    ) -> list[dict[str, Any]]: ...


DYNSEC_SAVE_S_PER_VEHICLE = 30e-6
"""Measured cost of one plugin command per vehicle the plugin holds (it rewrites its whole
file after each): 190 to 350 ms per command at 10,000 vehicles on the 2-core development
machine (depending on what else runs), linear from 2,500 to 20,000 (decision 0008)."""

CONTROL_MESSAGE_BUDGET_S = 0.5
"""Estimated broker time per control message: the broker serves nobody while it runs one,
so changes go in messages of about this cost, the broker answering others in between."""

IDENTITY_SYNC_SHARE = 0.2
"""The most of the time the sync's changes may keep the broker busy: after a sync that
changed the broker and took *d* seconds, the next one waits at least *d* x (1 / share - 1)
(4 *d*), not only :attr:`BrokerAuthSync.interval_s`. Mosquitto 2.0.11 checks the password of
every connected client again on each reload, in its one thread (0.4-0.6 s for 2,000 units
on the shared 2-core machine, linear), and the plugin rewrites its file after each command;
an owner renewing their car's password in a loop (``POST /v1/vehicles/{vin}/credentials``)
or a fleet manager adding and removing integration credentials kept it reloading 36-55 %
of the time at 2,000 units, nearly always at 20,000, every unit's messages waiting
meanwhile (security review 7, decision 0049). Changes made meanwhile are applied together
at the next sync; a small installation (a sync of a few tens of ms) sees no difference.
The rest is at most :data:`IDENTITY_SYNC_REST_MAX_S`."""

IDENTITY_SYNC_REST_MAX_S = 30.0
"""The longest rest after one sync: a bulk change that restarted the broker (10 s and more
at 10,000 units) is followed by 30 s, not four times its length, so an operator's next
``telematics vehicle add`` (which waits a minute for the broker) still gets through."""

LIVE_CHANGES_BUDGET_S = 10.0
"""Estimated broker time above which a change (a bulk provisioning) is applied by
re-rendering the plugin's file and restarting the broker instead: connections drop once
and come back, a clean stop saves every session and queued message, and the gateways'
shared subscriptions are opened again before the units return (:mod:`gateway.supervisor`).
At 10,000 vehicles about 15 vehicle changes in one go are applied live, more restart the
broker (2.3 s until the last of 10,000 new ones logs in); at 1,000 about 150 (decision
0008)."""


def estimate_control_s(changes: int, present: int) -> float:
    """Broker time to apply ``changes`` vehicle changes to a plugin holding ``present``
    vehicles: two commands per change, each rewriting the (growing) file."""
    return 2 * changes * (present + changes / 2) * DYNSEC_SAVE_S_PER_VEHICLE


def commands_per_message(present: int, changes: int = 0) -> int:
    """How many commands fit :data:`CONTROL_MESSAGE_BUDGET_S` when the plugin holds between
    ``present`` and ``present + changes`` vehicles (at least the two of one vehicle, which
    belong together). Priced at the larger size: the file grows with every addition."""
    per_command = max(present + changes, 1) * DYNSEC_SAVE_S_PER_VEHICLE
    return max(2, int(CONTROL_MESSAGE_BUDGET_S / per_command) // 2 * 2)


class BrokerAuthSync:
    """Keeps the broker's identities equal to the identity source, without a restart.

    ``version()`` is cheap and changes whenever the identities change (a counter in the
    state database bumped by every provisioning, revocation and new password);
    ``identities()`` is the full list, read only when the version moved. On a change:

    1. the plugin is asked which vehicles it has (``listClients``); added vehicles get
       their role and client there (``control``) before they can log in;
    2. ``on_removed(vins)`` runs (the installation revokes their client certificates; True
       when that changed a file the broker must re-read);
    3. the password file is rewritten if it changed, and ``reload()`` (SIGHUP) makes the
       broker re-read it: a client whose password changed or went is disconnected and
       refused from then on;
    4. removed vehicles lose their client and role in the plugin: a certificate unit is
       disconnected, and whatever logs in under that name has no right at all;
    5. ``after_removed(vins)`` runs for the removed vehicles, and both before step 1 and
       after step 3 for those whose :attr:`VehicleIdentity.holder` changed (transferred,
       or revoked and claimed again between two syncs): the installation discards their
       broker sessions, so nothing waiting in them reaches the unit of the VIN's next
       holder, and deletes their retained status (issue 16: the old holder's unit leaves
       nothing behind, not even the Will the reload made the broker publish).

    With the vehicle table (``files.vehicle_table``, decision 0060) the vehicles' rights and
    passwords are both in the table: steps 1 and 4 send no vehicle command (the vehicles
    added and removed are those of the table on disk; a vehicle client Dynamic Security
    still holds from before is deleted), one table swap applies a change of any size, and
    nothing restarts the broker. Without it, a change too big to apply live
    (:data:`LIVE_CHANGES_BUDGET_S`) calls ``restart()`` instead, which must :meth:`render`
    and restart the broker. :meth:`render` is also what a (re)start of the broker needs
    first. A version is only recorded as synced once everything succeeded, so a failure
    (database briefly unavailable, broker restarting) is retried on the next tick instead of
    being forgotten. ``lock`` serializes the sync with whoever else starts, stops or
    restarts the broker (an ``RLock``, since ``restart()`` runs inside the sync).
    """

    def __init__(
        self,
        files: BrokerAuthFiles,
        *,
        services: Sequence[ServiceIdentity],
        version: Callable[[], int],
        identities: Callable[[], Sequence[VehicleIdentity]],
        control: ControlChannel,
        reload: Callable[[], None],
        restart: Callable[[], None] | None = None,
        on_removed: Callable[[Sequence[str]], bool] | None = None,
        after_removed: Callable[[Sequence[str]], None] | None = None,
        before_new_password: Callable[[Sequence[str]], None] | None = None,
        lock: threading.RLock | None = None,
        interval_s: float = 0.5,
        integrations: Callable[[], Sequence[IntegrationIdentity]] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.files = files
        self.services = tuple(services)
        self.interval_s = interval_s
        self.lock = lock or threading.RLock()
        self._version = version
        self._identities = identities
        self._control = control
        self._reload = reload
        self._restart = restart
        self._on_removed = on_removed
        self._after_removed = after_removed
        self._before_new_password = before_new_password
        self._integrations = integrations or (lambda: ())
        self._holders: dict[str, int | None] = {}
        self._passwords: dict[str, str | None] = {}
        self._synced: int | None = None
        self._reload_pending = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    @property
    def synced_version(self) -> int | None:
        """The version whose identities the broker has loaded (None before the first sync)."""
        return self._synced

    @property
    def running(self) -> bool:
        """Whether the thread of :meth:`start` is syncing."""
        return self._thread is not None and self._thread.is_alive()

    def render(self) -> None:
        """Write both files from the identity source, for a broker about to (re)start.

        If the source cannot be read, the files on disk are kept (the plugin saved its own
        after its last change) and the next :meth:`sync_once` catches up once it can.
        """
        with self.lock:
            version = self._version()
            vehicles = list(self._identities())
            self.files.write(vehicles, self.services, self._integrations())
            self._holders = {v.vin: v.holder for v in vehicles}
            self._passwords = {v.vin: v.password_hash for v in vehicles}
            self._synced = version
            self._reload_pending = False

    def sync_once(self) -> bool:
        """Apply what changed since the last sync; True if the broker was changed.

        The version is read *before* the identities: if they change in between, the newer
        list is applied under the older version and the next call finds nothing to do
        instead of ever recording a version newer than what the broker has.
        """
        with self.lock:
            version = self._version()
            if version == self._synced and not self._reload_pending:
                return False
            vehicles = list(self._identities())
            integrations = list(self._integrations())
            listed = self._control.execute([{"command": "listClients"}])
            present = listed[0].get("data", {}).get("clients", [])
            names = [c for c in present if isinstance(c, str)]
            add_integrations, remove_integrations = integration_changes(names, integrations)
            planned = self._plan_vehicles(names, [v.vin for v in vehicles], len(present))
            if planned is None:
                return True  # restarted with re-rendered files instead
            changes, add_rights, remove_rights = planned
            passed_on, renewed = self._passed_on_and_renewed(vehicles)
            # before the new holder's password works: its unit must never find the session
            # (and the commands in it) of the one before
            self._purge(passed_on)
            per_message = commands_per_message(len(present), len(changes.add))
            # rights before the password: a new vehicle never logs in without its role
            self._apply(add_rights, per_message)
            self._apply(add_integrations, per_message)
            if changes.remove and self._on_removed is not None and self._on_removed(changes.remove):
                self._reload_pending = True
            # their sessions go before anything disconnects them: Mosquitto 2.0.11 corrupts
            # its session-expiry list when it disconnects a client that is already offline
            # with a session (a reload dropping its password, the plugin deleting its
            # client), and crashes a moment later (decision 0034)
            self._purge(changes.remove)
            if renewed and self._before_new_password is not None:
                # the same for a new password: the reload would disconnect a unit that is
                # offline with a session; its session goes first (the commands waiting in
                # it end at their expiry)
                self._before_new_password(renewed)
            # the vehicles' passwords: their own table, which the broker's plugin re-reads
            # without a reload, disconnecting exactly the units whose entry went or changed
            # (decision 0055); without the plugin they are in the password file
            table = self.files.write_vehicle_table(vehicles) if self.files.vehicle_table else None
            if self.files.write_password_file(vehicles, self.services, integrations):
                self._reload_pending = True
            if table is not None:
                self.files.wait_vehicle_table(table)
            reloaded = self._reload_pending or table is not None
            if self._reload_pending:
                self._reload()  # a removed password vehicle is disconnected and refused
                self._reload_pending = False
            # again, now that the old password is refused: an old unit that reconnected
            # since the first purge is gone (its session too, before the plugin below kicks
            # it once more), and so is the retained status (or Will) it left
            self._purge([*passed_on, *changes.remove])
            # only then its rights: deleting them earlier would disconnect it while its
            # password still worked, and it could log in again (with no rights) meanwhile
            self._apply(remove_rights, per_message)
            self._apply(remove_integrations, per_message)
            self._purge(changes.remove)
            if changes:
                log.info(
                    "broker identities: %d vehicles added, %d removed",
                    len(changes.add),
                    len(changes.remove),
                )
            self._synced = version
            return (
                bool(changes)
                or reloaded
                or bool(remove_rights)
                or bool(add_integrations or remove_integrations)
            )

    def _plan_vehicles(
        self, names: list[str], wanted: list[str], present: int
    ) -> tuple[DynsecChanges, list[dict[str, Any]], list[dict[str, Any]]] | None:
        """(the vehicles added and removed, the Dynamic Security commands that give their
        rights, those that take them), or None when the broker was restarted instead.

        With the vehicle table the rights are in it with the passwords (decision 0060): a
        bulk change is one table swap, no command, no restart; the added and removed are
        those of the table on disk, and a vehicle client Dynamic Security still holds (a
        data directory of before) is deleted once the table is in force."""
        if self.files.vehicle_table:
            changes = plan_dynsec_changes(self.files.vehicle_table_vins(), wanted)
            return changes, [], plan_dynsec_changes(names, ()).remove_commands()
        changes = plan_dynsec_changes(names, wanted)
        if changes and self._restarted_instead(len(changes), present):
            return None
        return changes, changes.add_commands(), changes.remove_commands()

    def _restarted_instead(self, changes: int, present: int) -> bool:
        """Restart the broker with re-rendered identities instead of applying ``changes``
        live when that would keep it busy too long (:data:`LIVE_CHANGES_BUDGET_S`)."""
        if self._restart is None:
            return False
        cost = estimate_control_s(changes, present)
        if cost <= LIVE_CHANGES_BUDGET_S:
            return False
        log.info(
            "%d vehicle changes would keep the broker busy for about %.0f s; "
            "restarting it with re-rendered identities instead",
            changes,
            cost,
        )
        self._restart()
        return True

    def _passed_on_and_renewed(
        self, vehicles: Sequence[VehicleIdentity]
    ) -> tuple[list[str], list[str]]:
        """The VINs whose holder changed since the last sync, and those that kept their
        holder but got a new password; remembers both for the next sync."""
        holders = {v.vin: v.holder for v in vehicles}
        passed_on = [
            vin
            for vin, holder in holders.items()
            if vin in self._holders and self._holders[vin] != holder
        ]
        renewed = [
            v.vin
            for v in vehicles
            if v.vin in self._passwords
            and self._passwords[v.vin] != v.password_hash
            and v.vin not in passed_on
        ]
        self._holders = holders
        self._passwords = {v.vin: v.password_hash for v in vehicles}
        return passed_on, renewed

    def _purge(self, vins: Sequence[str]) -> None:
        if vins and self._after_removed is not None:
            self._after_removed(vins)

    def _apply(self, commands: list[dict[str, Any]], per_message: int) -> None:
        if commands:
            self._control.execute(commands, per_message=per_message, tolerate=TOLERATED_ERRORS)

    def start(self) -> None:
        """Sync now and then every ``interval_s`` in a daemon thread, until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("BrokerAuthSync is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="broker-auth-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waits for a sync in progress, up to ``timeout``)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        rest = 1 / IDENTITY_SYNC_SHARE - 1
        while True:
            started = time.monotonic()
            pause = self.interval_s
            try:
                if self.sync_once():
                    # paced by what the change cost the broker (IDENTITY_SYNC_SHARE)
                    took = time.monotonic() - started
                    pause = max(pause, min(took * rest, IDENTITY_SYNC_REST_MAX_S))
            except Exception:
                # log the first failure with its traceback, the repeats quietly
                log.log(
                    logging.DEBUG if self._failing else logging.WARNING,
                    "broker identity sync failed; retrying every %g s",
                    self.interval_s,
                    exc_info=True,
                )
                self._failing = True
            else:
                if self._failing:
                    log.info("broker identity sync works again (version %s)", self._synced)
                self._failing = False
            if self._stop.wait(pause):
                return
