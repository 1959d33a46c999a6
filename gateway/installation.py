"""What ``telematics up`` keeps in the data directory to run a closed installation.

* the gateway's **service account** on the private broker (``secrets/mqtt-service.password``,
  mode 0600): the ingest processes and the API's command service log in with it;
* the **broker administrator** (``secrets/mqtt-broker-admin.password``): the account the
  broker sync sends Dynamic Security commands with, and nothing else;
* the broker's **password file and Dynamic Security file** (``broker/auth/``), rendered
  from the state database's provisioned vehicles before every broker start and kept
  current by :class:`~gateway.broker.auth.BrokerAuthSync` (:func:`closed_broker_sync`);
* with ``--demo``, the **demo organization**: its fleet manager and its simulated vehicles,
  provisioned like real ones, their unit credentials in ``secrets/demo-units.json``
  (refreshed whenever they no longer match the state database).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gateway.accounts.provisioning import provision_or_rotate
from gateway.auth.passwords import generate_password as generate_user_password
from gateway.auth.passwords import hash_password as hash_user_password
from gateway.broker.auth import (
    BrokerAuthFiles,
    BrokerAuthSync,
    IntegrationIdentity,
    ServiceIdentity,
    VehicleIdentity,
    generate_password,
    hash_password,
    verify_mqtt_password,
)
from gateway.broker.control import DynsecControl, clear_retained, purge_sessions
from gateway.broker.edges import BRIDGE_PASSWORD_FILE, bridge_username
from gateway.broker.mosquitto import BrokerError, MosquittoProcess
from gateway.core.fleet.geo import check_simple, shape_from_geojson, shape_to_geojson
from gateway.core.fleet.state import window_from_json
from gateway.core.policy import AccountKind, Role
from gateway.files import write_private_file
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog
from gateway.statedb.fleets import FleetRepository
from gateway.statedb.integrations import IntegrationRepository
from schemas.credentials import (
    UnitCredentials,
    VehicleCredential,
    load_credentials,
    write_credentials,
)

__all__ = [
    "CONTROL_USERNAME",
    "SERVICE_PASSWORD_FILE",
    "SERVICE_USERNAME",
    "DemoLogin",
    "bridge_password",
    "closed_broker_sync",
    "control_password",
    "edge_bridges",
    "provision_demo",
    "service_password",
    "write_unit_credentials",
]

log = logging.getLogger(__name__)

#: the gateway's own MQTT account (ingest and command service)
SERVICE_USERNAME: Final = "telematics-gateway"
#: the account that changes the broker's Dynamic Security plugin (the broker sync)
CONTROL_USERNAME: Final = "telematics-broker-admin"
#: the file in DATA_DIR/secrets with the service account's password
SERVICE_PASSWORD_FILE: Final = "mqtt-service.password"
DEMO_ORGANIZATION: Final = "Demo Fleet"
DEMO_MANAGER_EMAIL: Final = "fleet@demo.local"
#: the demo organization's geofences (GeoJSON Features, as the API takes them), created at
#: demo start: the depot the delivery vans start from (Großmarkthalle, the simulator's
#: ``DEPOT``), with its opening hours, and the old town inside the Altstadtring with a
#: 30 km/h limit (its streets are 30 zones; the ring road itself, 50 km/h, stays outside)
DEMO_GEOFENCES: Final[tuple[dict[str, Any], ...]] = (
    {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [11.5560, 48.1159]},
        "properties": {
            "name": "Depot Großmarkthalle",
            "radius_m": 200,
            "active_window": {
                "start": "06:00",
                "end": "20:00",
                "tz": "Europe/Berlin",
                "weekdays": [0, 1, 2, 3, 4, 5],
            },
        },
    },
    {
        "type": "Feature",
        "geometry": {
            "type": "Polygon",
            "coordinates": [
                [
                    [11.5675, 48.1390],
                    [11.5772, 48.1418],
                    [11.5805, 48.1355],
                    [11.5680, 48.1345],
                    [11.5675, 48.1390],
                ]
            ],
        },
        "properties": {"name": "City centre (Altstadt)", "speed_limit_kmh": 30},
    },
)


def service_password(secrets_dir: Path) -> Path:
    """The file with the service account's password, created (random, 0600) if missing."""
    path = secrets_dir / SERVICE_PASSWORD_FILE
    if not path.exists():
        write_private_file(path, generate_password() + "\n")
    return path


def bridge_password(secrets_dir: Path) -> Path:
    """The file with the edge brokers' bridge password (decision 0038), created (random,
    0600) if missing."""
    path = secrets_dir / BRIDGE_PASSWORD_FILE
    if not path.exists():
        write_private_file(path, generate_password() + "\n")
    return path


def edge_bridges(secrets_dir: Path, edges: int) -> list[ServiceIdentity]:
    """The core broker's accounts of the ``edges`` edges' bridges."""
    secret = bridge_password(secrets_dir).read_text(encoding="utf-8").strip()
    return [
        ServiceIdentity(bridge_username(i), hash_password(secret), kind="bridge")
        for i in range(1, edges + 1)
    ]


def control_password(secrets_dir: Path) -> Path:
    """The file with the broker administrator's password, created (random, 0600) if
    missing."""
    path = secrets_dir / "mqtt-broker-admin.password"
    if not path.exists():
        write_private_file(path, generate_password() + "\n")
    return path


def closed_broker_sync(
    accounts: AccountRepository,
    files: BrokerAuthFiles,
    broker: MosquittoProcess,
    *,
    secrets_dir: Path,
    pki_dir: Path | None = None,
    restart: Callable[[], None] | None = None,
    lock: threading.RLock | None = None,
    interval_s: float = 0.5,
    integrations: IntegrationRepository | None = None,
    holds: Callable[[str], bool] | None = None,
    extra_services: Sequence[ServiceIdentity] = (),
) -> BrokerAuthSync:
    """The sync that keeps ``broker``'s identities equal to the state database: call its
    ``render()`` before every start of the broker, ``start()`` once it runs.

    Service accounts: the gateway's (:data:`SERVICE_USERNAME`) and the broker
    administrator (:data:`CONTROL_USERNAME`), passwords from ``secrets_dir``. With
    ``pki_dir``, revoking a vehicle also revokes its client certificates there (the broker
    re-reads the CRL with the password file), so a revoked unit cannot even complete a TLS
    handshake any more. With ``integrations``, the organizations' integration credentials
    (decision 0017) are identities too.

    With edge brokers (decision 0038): ``holds(vin)`` says which vehicles this broker has
    (an edge: those assigned to it; the core: none), ``extra_services`` adds accounts (the
    core: the edges' bridges).
    """
    service_secret = service_password(secrets_dir).read_text(encoding="utf-8").strip()
    control_secret = control_password(secrets_dir).read_text(encoding="utf-8").strip()
    services = [
        ServiceIdentity(SERVICE_USERNAME, hash_password(service_secret)),
        ServiceIdentity(CONTROL_USERNAME, hash_password(control_secret), kind="control"),
        *extra_services,
    ]

    def identities() -> list[VehicleIdentity]:
        holders = accounts.active_tenures()
        return [
            VehicleIdentity(vin, h, holder=holders[vin][0] if vin in holders else None)
            for vin, h in accounts.broker_identities()
            if holds is None or holds(vin)
        ]

    def integration_identities() -> list[IntegrationIdentity]:
        if integrations is None:
            return []
        return [IntegrationIdentity(u, a, h) for u, a, h in integrations.broker_identities()]

    return BrokerAuthSync(
        files,
        services=services,
        version=accounts.broker_version,
        identities=identities,
        integrations=integration_identities,
        control=DynsecControl(broker.host, broker.port, CONTROL_USERNAME, control_secret),
        reload=broker.reload,
        restart=restart,
        on_removed=None if pki_dir is None else _certificate_revoker(pki_dir),
        after_removed=_session_purger(broker, service_secret, control_secret),
        before_new_password=_session_purger(broker, service_secret, None),
        lock=lock,
        interval_s=interval_s,
    )


def _session_purger(
    broker: MosquittoProcess, secret: str, control_secret: str | None
) -> Callable[[Sequence[str]], None]:
    """Discards the broker sessions of revoked, transferred and decommissioned vehicles
    (see :func:`gateway.broker.control.purge_sessions`), then, with ``control_secret``,
    their retained status (:func:`gateway.broker.control.clear_retained`); without it only
    the sessions (vehicles about to get a new password, decision 0034: Mosquitto 2.0.11
    crashes after a reload disconnects a unit that is offline with a session). A failure is
    logged, not retried: the commands in such a session are cancelled in the state
    database, and their message expiry ends them on the broker too."""

    def purge(vins: Sequence[str]) -> None:
        try:
            purge_sessions(broker.host, broker.port, SERVICE_USERNAME, secret, vins)
            if control_secret is not None:
                clear_retained(
                    broker.host,
                    broker.port,
                    CONTROL_USERNAME,
                    control_secret,
                    [f"v1/vehicles/{vin}/status" for vin in vins],
                )
        except (OSError, BrokerError) as exc:
            log.warning("could not discard the broker sessions of %s: %s", ", ".join(vins), exc)

    return purge


def _certificate_revoker(pki_dir: Path) -> Callable[[Sequence[str]], bool]:
    def revoke(vins: Sequence[str]) -> bool:
        from gateway.broker.pki import Pki, UnknownClientError

        pki = Pki(pki_dir)
        if not pki.exists():
            return False
        changed = False
        for vin in vins:
            try:
                serials = pki.revoke(vin)
            except UnknownClientError:  # no certificate was ever issued for it
                continue
            if serials:
                log.info("revoked the client certificates of %s (serials %s)", vin, serials)
                changed = True
        return changed

    return revoke


@dataclass(frozen=True, slots=True)
class DemoLogin:
    email: str
    #: shown once, when the user is created
    password: str | None = field(repr=False)
    account_id: int


def provision_demo(
    accounts: AccountRepository,
    audit: AuditLog,
    *,
    vins: Sequence[str],
    credentials_path: Path,
    broker_url: str,
    public_key_path: Path,
    now: int,
) -> DemoLogin:
    """The demo organization, its fleet manager and ``vins`` provisioned into it, with
    every unit's credentials in ``credentials_path`` (for ``telematics sim
    --credentials``). Idempotent: on a later start only what is missing is added, and a
    vehicle whose password is not in the file, or no longer the one the state database
    has (someone gave it new credentials through the API, or revoked it), gets a new one,
    so the simulator never starts with credentials the broker refuses."""
    account = next(
        (a for a in accounts.list_accounts() if a.name == DEMO_ORGANIZATION),
        None,
    )
    if account is None:
        account = accounts.create_account(AccountKind.ORGANIZATION, DEMO_ORGANIZATION, now=now)
        audit.append(
            at=now,
            actor="system",
            action="account_create",
            account_id=account.id,
            target=f"account:{account.id}",
            detail={"kind": account.kind, "name": account.name, "demo": True},
        )
    password = None
    if accounts.get_user_by_email(DEMO_MANAGER_EMAIL) is None:
        password = generate_user_password()
        user = accounts.create_user(
            email=DEMO_MANAGER_EMAIL,
            name="Demo fleet manager",
            password_hash=hash_user_password(password),
            role=Role.FLEET_MANAGER,
            account_id=account.id,
            now=now,
        )
        audit.append(
            at=now,
            actor="system",
            action="user_create",
            account_id=account.id,
            target=f"user:{user.id}",
            detail={"email": user.email, "role": user.role, "demo": True},
        )
    fresh = _refresh_demo_units(accounts, audit, vins, credentials_path, account.id, now=now)
    if fresh or not credentials_path.exists():
        write_unit_credentials(
            credentials_path, fresh, public_key_path=public_key_path, broker_url=broker_url
        )
        log.info("provisioned %d demo vehicles (credentials: %s)", len(fresh), credentials_path)
    return DemoLogin(DEMO_MANAGER_EMAIL, password, account.id)


def ensure_demo_geofences(
    fleets: FleetRepository, audit: AuditLog, account_id: int, *, now: int
) -> int:
    """Create :data:`DEMO_GEOFENCES` in the demo organization, those it has no fence of
    that name of (a fence the fleet manager changed or deleted and re-created stays as it
    is); checked as the API checks a fence. Returns how many were created."""
    existing = {
        g.name for g in fleets.list_geofences(account_id=account_id, after=None, limit=1000)
    }
    created = 0
    for feature in DEMO_GEOFENCES:
        props = feature["properties"]
        if props["name"] in existing:
            continue
        shape = shape_from_geojson(feature)
        check_simple(shape)
        window = props.get("active_window")
        window_from_json(window)
        values = {
            "name": props["name"],
            "geometry": shape_to_geojson(shape),
            "speed_limit_kmh": props.get("speed_limit_kmh"),
            "active_window": window,
            "alert_enter": True,
            "alert_exit": True,
        }
        fence = fleets.create_geofence(account_id=account_id, values=values, now=now)
        audit.append(
            at=now,
            actor="system",
            action="geofence_create",
            account_id=account_id,
            target=f"geofence:{fence.id}",
            detail={"name": props["name"], "demo": True},
        )
        created += 1
    return created


def _refresh_demo_units(
    accounts: AccountRepository,
    audit: AuditLog,
    vins: Sequence[str],
    credentials_path: Path,
    account_id: int,
    *,
    now: int,
) -> dict[str, str | None]:
    """Provision (or give new passwords to) the demo vehicles whose entry in the
    credentials file is missing or stale; returns their new passwords."""
    known: dict[str, str | None] = {}
    if credentials_path.exists():
        known = {
            vin: entry.mqtt_password
            for vin, entry in load_credentials(credentials_path).vehicles.items()
        }
    fresh: dict[str, str | None] = {}
    for vin in vins:
        vehicle = accounts.get_vehicle(vin)
        current = known.get(vin)
        if (
            vehicle is not None
            and vehicle.active
            and current is not None
            and vehicle.mqtt_password_hash is not None
            and verify_mqtt_password(password=current, password_hash=vehicle.mqtt_password_hash)
        ):
            continue
        if vehicle is not None and vehicle.active and vehicle.account_id != account_id:
            log.warning(
                "demo vehicle %s belongs to account %d now, not to the demo organization; "
                "its simulated unit will be refused",
                vin,
                vehicle.account_id,
            )
            continue
        rotate = vehicle is not None and vehicle.active
        result = provision_or_rotate(
            accounts,
            vin=vin,
            account_id=account_id,
            label=f"Demo {vin[-4:]}",
            provisioned_by=None,
            now=now,
        )
        audit.append(
            at=now,
            actor="system",
            action="vehicle_credentials_rotate" if rotate else "vehicle_provision",
            account_id=result.vehicle.account_id,
            target=f"vehicle:{vin}",
            detail={"credentials": "password", "demo": True},
        )
        fresh[vin] = result.mqtt_password
    if fresh:
        log.info("new credentials for %d demo vehicles: %s", len(fresh), ", ".join(fresh))
    return fresh


def write_unit_credentials(
    path: Path,
    passwords: dict[str, str | None],
    *,
    public_key_path: Path | None,
    broker_url: str | None,
) -> UnitCredentials:
    """Add ``passwords`` (VIN -> MQTT password) to the unit credentials file at ``path``
    (created if missing; entries of other VINs are kept); returns what it wrote. Used by
    the demo and by ``telematics vehicle add --credentials-file``."""
    existing = load_credentials(path) if path.exists() else UnitCredentials()
    entries = {vin: e for vin, e in existing.vehicles.items() if vin not in passwords}
    for vin, password in passwords.items():
        entries[vin] = VehicleCredential(vin=vin, mqtt_username=vin, mqtt_password=password)
    public_key = existing.gateway_public_key_pem
    if public_key_path is not None and public_key_path.exists():
        public_key = public_key_path.read_bytes()
    written = UnitCredentials.of(
        entries.values(),
        gateway_public_key_pem=public_key,
        broker_url=broker_url or existing.broker_url,
    )
    write_credentials(path, written)
    return written
