"""What ``telematics up`` keeps in the data directory to run a closed installation.

* the gateway's **service account** on the private broker (``secrets/mqtt-service.password``,
  mode 0600): the ingest processes and the API's command service log in with it;
* the broker's **password file and ACL** (``broker/auth/``), rendered from the state
  database's provisioned vehicles and kept current by :class:`BrokerAuthSync`;
* with ``--demo``, the **demo organization**: its fleet manager and its simulated vehicles,
  provisioned like real ones, their unit credentials in ``secrets/demo-units.json``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gateway.auth.passwords import generate_password as generate_user_password
from gateway.auth.passwords import hash_password as hash_user_password
from gateway.auth.policy import AccountKind, Role
from gateway.auth.provisioning import provision_or_rotate
from gateway.broker.auth import (
    BrokerAuthFiles,
    BrokerAuthSync,
    ServiceIdentity,
    VehicleIdentity,
    generate_password,
    hash_password,
)
from gateway.broker.mosquitto import MosquittoProcess
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog

__all__ = [
    "SERVICE_USERNAME",
    "DemoLogin",
    "broker_auth",
    "provision_demo",
    "service_password",
]

log = logging.getLogger(__name__)

#: the gateway's own MQTT account (ingest and command service)
SERVICE_USERNAME: Final = "telematics-gateway"
DEMO_ORGANIZATION: Final = "Demo Fleet"
DEMO_MANAGER_EMAIL: Final = "fleet@demo.local"


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def service_password(secrets_dir: Path) -> Path:
    """The file with the service account's password, created (random, 0600) if missing."""
    path = secrets_dir / "mqtt-service.password"
    if not path.exists():
        _write_secret(path, generate_password() + "\n")
    return path


def broker_auth(
    accounts: AccountRepository, files: BrokerAuthFiles, service_password_file: Path
) -> Callable[[MosquittoProcess], Callable[[], None]]:
    """Write the broker's password file and ACL from the state database now (so the broker
    starts with every provisioned vehicle), and return what to call once the broker runs:
    it starts the sync that rewrites them and reloads the broker on every change, and
    returns the function that stops it."""
    secret = service_password_file.read_text(encoding="utf-8").strip()
    services = [ServiceIdentity(SERVICE_USERNAME, hash_password(secret))]

    def identities() -> list[VehicleIdentity]:
        return [VehicleIdentity(vin, h) for vin, h in accounts.broker_identities()]

    files.write(identities(), services)

    def start(broker: MosquittoProcess) -> Callable[[], None]:
        sync = BrokerAuthSync(
            files,
            services=services,
            version=accounts.broker_version,
            identities=identities,
            reload=broker.reload,
        )
        broker.reload()  # it may have started from other files (a restart, an old run)
        sync.start()
        return sync.stop

    return start


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
    vehicle whose password is not in the file gets a new one."""
    from gateway.admin_cli import write_unit_credentials

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
    known: set[str] = set()
    if credentials_path.exists():
        from device_sim.credentials import load_credentials

        known = set(load_credentials(credentials_path).vehicles)
    fresh: dict[str, str | None] = {}
    for vin in vins:
        vehicle = accounts.get_vehicle(vin)
        if vehicle is not None and vehicle.active and vin in known:
            continue
        result = provision_or_rotate(
            accounts,
            vin=vin,
            account_id=account.id,
            label=f"Demo {vin[-4:]}",
            provisioned_by=None,
            now=now,
        )
        audit.append(
            at=now,
            actor="system",
            action="vehicle_provision",
            account_id=account.id,
            target=f"vehicle:{vin}",
            detail={"credentials": "password", "demo": True},
        )
        fresh[vin] = result.mqtt_password
    if fresh or not credentials_path.exists():
        write_unit_credentials(
            credentials_path, fresh, public_key_path=public_key_path, broker_url=broker_url
        )
        log.info("provisioned %d demo vehicles (credentials: %s)", len(fresh), credentials_path)
    return DemoLogin(DEMO_MANAGER_EMAIL, password, account.id)
