"""Operator commands on the state database: ``telematics vehicle|user|account ...``.

They work without a running API (first set-up, scripts, recovery: ``telematics user
set-password`` for a lost administrator password) and write the same audit entries the API
writes, with the operating-system user as the actor. Passwords shown here are shown once; a
password to set is read from the environment, never from the command line (``ps`` would
show it to every user of the machine). An account is given by its id or its name
(``--account 'Demo Fleet'``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.text import check_plain_text

if TYPE_CHECKING:  # the state database (SQLAlchemy) loads when a command runs, not for --help
    from device_sim.credentials import UnitCredentials
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog

__all__ = ["add_account_arguments", "add_user_arguments", "add_vehicle_arguments", "run"]

#: environment variable with the password of ``telematics user add`` and ``set-password``
USER_PASSWORD_ENV = "TELEMATICS_USER_PASSWORD"
#: the port ``telematics up`` gives its private broker unless told otherwise
_PRIVATE_BROKER_PORT = 1884
#: the plain MQTT listener in the private broker's configuration (the first ``listener``)
_LISTENER_LINE = re.compile(r"^listener (\d+) (\S+)$", re.MULTILINE)


def default_unit_broker_url(data_dir: Path) -> str:
    """The broker URL written into a unit credentials file when ``--broker-url`` is not
    given: the one ``telematics up`` tells its vehicles. That is ``TELEMATICS_UNIT_BROKER_URL``,
    else ``TELEMATICS_MQTT_URL``, else the private broker ``telematics up`` last ran for
    ``data_dir`` (its port from the configuration it rendered there), else
    ``mqtt://127.0.0.1:1884`` (``TELEMATICS_MQTT_PORT`` instead of 1884 if set)."""
    from gateway.broker.mosquitto import CONFIG_FILE_NAME
    from gateway.supervisor import data_paths

    for name in ("TELEMATICS_UNIT_BROKER_URL", "TELEMATICS_MQTT_URL"):
        url = os.environ.get(name)
        if url:
            return url
    try:
        config = (data_paths(data_dir)[1] / CONFIG_FILE_NAME).read_text(encoding="utf-8")
    except OSError:
        config = ""
    listener = _LISTENER_LINE.search(config)
    if listener is not None:
        port, host = listener.groups()
        return f"mqtt://{host}:{port}"
    return f"mqtt://127.0.0.1:{os.environ.get('TELEMATICS_MQTT_PORT') or _PRIVATE_BROKER_PORT}"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("TELEMATICS_DATA_DIR", "data")),
        help="the installation's data directory (env TELEMATICS_DATA_DIR; default: ./data)",
    )
    p.add_argument(
        "--state-db-url",
        default=os.environ.get("TELEMATICS_STATE_DB_URL"),
        help="state database URL (env TELEMATICS_STATE_DB_URL; default: SQLite state.db in "
        "the data directory)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def add_vehicle_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="vehicle_command", required=True, metavar="ACTION")
    add = sub.add_parser(
        "add",
        help="provision vehicles: registry entry + MQTT credentials (shown once)",
        description="Provision one or more vehicles into an account. Each gets MQTT "
        "credentials (user name = VIN, a random password shown once) which the broker "
        "accepts within a second; with --credentials-file they are written to a unit "
        "credentials file (mode 0600) for `telematics sim --credentials` instead of printed.",
    )
    add.add_argument("vins", nargs="+", metavar="VIN")
    add.add_argument(
        "--account",
        required=True,
        help="the account's id or name, e.g. 'Demo Fleet' (telematics account list)",
    )
    add.add_argument("--label", help="a name people recognise, e.g. 'Van 12'")
    add.add_argument(
        "--certificate",
        action="store_true",
        help="no password: the unit authenticates with a client certificate (CN = VIN; "
        "telematics pki client VIN)",
    )
    add.add_argument(
        "--credentials-file",
        type=Path,
        help="write (or extend) this unit credentials file instead of printing passwords",
    )
    add.add_argument(
        "--broker-url",
        help="where the units connect, written into the credentials file, e.g. "
        "mqtt://host:1884 (default: the URL the file already has, else "
        "$TELEMATICS_UNIT_BROKER_URL, else $TELEMATICS_MQTT_URL, else the private broker "
        "telematics up runs for this data directory, mqtt://127.0.0.1:1884 unless it was "
        "started with another --mqtt-port)",
    )
    _common(add)
    revoke = sub.add_parser(
        "revoke",
        help="revoke vehicles: cut them off the broker, end their grants",
        description="The broker refuses the units from its next reload (within a second); "
        "their data stays.",
    )
    revoke.add_argument("vins", nargs="+", metavar="VIN")
    _common(revoke)
    lst = sub.add_parser("list", help="list provisioned vehicles")
    lst.add_argument("--account", help="only this account's (id or name)")
    lst.add_argument("--all", action="store_true", help="include revoked vehicles")
    _common(lst)


def add_user_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = sub.add_parser(
        "add",
        help="create a user",
        description=f"Create a user. The password comes from ${USER_PASSWORD_ENV}; without "
        "it one is generated and printed once.",
    )
    add.add_argument("email")
    add.add_argument(
        "--role",
        required=True,
        choices=["admin", "fleet_manager", "fleet_viewer", "owner", "driver"],
    )
    add.add_argument("--account", help="the account's id or name (not for admins)")
    add.add_argument("--name", help="display name (default: the e-mail address)")
    _common(add)
    reset = sub.add_parser(
        "set-password",
        help="set a user's password, e.g. a lost administrator's (ends their sessions)",
        description=f"Set the password of the user with this e-mail address: from "
        f"${USER_PASSWORD_ENV}, or, without it, a generated one printed once. The user's "
        "sessions end (every refresh token is revoked; access tokens run out within their "
        "lifetime), a lock-out after wrong passwords is lifted, and the change is audited. "
        "Works while the installation runs.",
    )
    reset.add_argument("email")
    _common(reset)
    lst = sub.add_parser("list", help="list users")
    lst.add_argument("--account", help="only this account's (id or name)")
    _common(lst)


def add_account_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="account_command", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="create an account (an organization or a private one)")
    add.add_argument("name")
    add.add_argument("--kind", choices=["organization", "private"], default="organization")
    _common(add)
    lst = sub.add_parser("list", help="list accounts")
    _common(lst)


# --- running -------------------------------------------------------------------------------


class CliError(GatewayError):
    pass


@contextmanager
def _repositories(args: argparse.Namespace) -> Iterator[tuple[AccountRepository, AuditLog]]:
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog
    from gateway.statedb.database import StateDatabase, default_url

    db = StateDatabase(args.state_db_url or default_url(args.data_dir))
    try:
        db.upgrade()
        yield AccountRepository(db), AuditLog(db)
    finally:
        db.dispose()


def _no_account(account_id: int) -> CliError:
    return CliError(f"there is no account {account_id}; telematics account list shows them")


def _account_id(accounts: AccountRepository, ref: str | None) -> int | None:
    """The id of the account ``ref`` names: its id, or its name (which must be unique)."""
    if ref is None:
        return None
    if ref.strip().isdigit():
        account_id = int(ref)
        if accounts.get_account(account_id) is None:
            raise _no_account(account_id)
        return account_id
    named = [a for a in accounts.list_accounts() if a.name == ref]
    if not named:
        raise CliError(f"there is no account named {ref!r}; telematics account list shows them")
    if len(named) > 1:
        ids = ", ".join(str(a.id) for a in named)
        raise CliError(f"{len(named)} accounts are named {ref!r} (ids {ids}): give the id")
    return named[0].id


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid {os.getuid()}"


def _record(audit: AuditLog, action: str, **entry: Any) -> None:
    """An audit entry by the operating-system user running this command, now."""
    audit.append(at=_now(), actor=_actor(), action=action, **entry)


def _now() -> int:
    return time.time_ns() // 1_000_000


def _print(args: argparse.Namespace, rows: list[dict[str, object]], columns: list[str]) -> None:
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print(
            "  ".join(
                str(r.get(c, "") if r.get(c) is not None else "-").ljust(widths[c]) for c in columns
            )
        )


def run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "vehicle":
        return _vehicle(args)
    if command == "user":
        return _user(args)
    if command == "account":
        return _account(args)
    raise AssertionError(command)


def _vehicle(args: argparse.Namespace) -> int:
    from gateway.accounts.provisioning import provision_or_rotate, provision_vehicle
    from gateway.statedb.accounts import VehicleAlreadyProvisioned
    from schemas import InvalidVinError, validate_vin

    with _repositories(args) as (accounts, audit):
        if args.vehicle_command == "list":
            vehicles = accounts.list_vehicles(
                account_id=_account_id(accounts, args.account), include_revoked=args.all
            )
            _print(
                args,
                [
                    {
                        "vin": v.vin,
                        "account": v.account_id,
                        "label": v.label,
                        "credentials": "password" if v.mqtt_password_hash else "certificate",
                        "revoked": v.revoked_at is not None,
                    }
                    for v in vehicles
                ],
                ["vin", "account", "label", "credentials", "revoked"],
            )
            return 0
        try:
            vins = [validate_vin(v) for v in args.vins]
        except InvalidVinError as exc:
            raise CliError(str(exc)) from None
        if args.vehicle_command == "revoke":
            for vin in vins:
                record = accounts.revoke_vehicle(vin, now=_now())
                if record is None:
                    print(f"{vin}: not provisioned", file=sys.stderr)
                    continue
                _record(
                    audit,
                    "vehicle_revoke",
                    account_id=record.account_id,
                    target=f"vehicle:{vin}",
                )
                print(f"{vin}: revoked")
            _wait_for_broker(args, accounts.broker_version())
            return 0
        account_id = _account_id(accounts, args.account)
        assert account_id is not None  # --account is required for add
        if args.label is not None:
            check_plain_text(args.label, "--label")
        created: dict[str, str | None] = {}
        # writing a credentials file, a vehicle provisioned before gets new credentials
        provision = provision_vehicle if args.credentials_file is None else provision_or_rotate
        for vin in vins:
            try:
                result = provision(
                    accounts,
                    vin=vin,
                    account_id=account_id,
                    label=args.label,
                    provisioned_by=None,
                    now=_now(),
                    password=not args.certificate,
                )
            except VehicleAlreadyProvisioned:
                raise CliError(
                    f"{vin} is already provisioned; revoke it first, or use "
                    "--credentials-file to give it new credentials"
                ) from None
            _record(
                audit,
                "vehicle_provision",
                account_id=account_id,
                target=f"vehicle:{vin}",
                detail={"credentials": "certificate" if args.certificate else "password"},
            )
            created[vin] = result.mqtt_password
        _wait_for_broker(args, accounts.broker_version())
        if args.credentials_file is not None:
            broker_url = args.broker_url
            if broker_url is None and not _names_a_broker(args.credentials_file):
                broker_url = default_unit_broker_url(args.data_dir)
            written = write_unit_credentials(
                args.credentials_file,
                created,
                public_key_path=args.data_dir / "command-signing-key.pem.pub",
                broker_url=broker_url,
            )
            print(
                f"provisioned {len(created)} vehicle(s); credentials in "
                f"{args.credentials_file} (broker {written.broker_url})"
            )
            return 0
        if args.json:
            print(
                json.dumps(
                    [
                        {"vin": v, "mqtt_username": v, "mqtt_password": p}
                        for v, p in created.items()
                    ],
                    indent=2,
                )
            )
            return 0
        print("provisioned (MQTT user name = VIN; passwords are shown only now):")
        for vin, password in created.items():
            print(f"  {vin}  {password or '(client certificate)'}")
        return 0


def _wait_for_broker(args: argparse.Namespace, version: int) -> None:
    """When this data directory's `telematics up` runs its private broker, return once the
    broker has taken what was just changed (it syncs every half second; provisioning many
    vehicles takes longer), so a unit started next is admitted; say so if it takes long."""
    from gateway.health import HEALTH_DIR_NAME, broker_has_identities

    health = args.data_dir / HEALTH_DIR_NAME
    done = broker_has_identities(health, version, timeout_s=2, now_ms=_now)
    if done is False:
        print("waiting for the broker to take the change ...", file=sys.stderr, flush=True)
        done = broker_has_identities(health, version, timeout_s=60, now_ms=_now)
    if done is False:
        print(
            "warning: the broker has not taken the change after a minute; units may be "
            "refused until it has (see the broker log in DATA_DIR/broker/)",
            file=sys.stderr,
        )


def _names_a_broker(path: Path) -> bool:
    """The credentials file at ``path`` exists and has a broker URL."""
    from device_sim.credentials import load_credentials

    return path.exists() and load_credentials(path).broker_url is not None


def write_unit_credentials(
    path: Path,
    passwords: dict[str, str | None],
    *,
    public_key_path: Path | None,
    broker_url: str | None,
) -> UnitCredentials:
    """Add ``passwords`` (VIN -> MQTT password) to the unit credentials file at ``path``
    (created if missing; entries of other VINs are kept); returns what it wrote."""
    from device_sim.credentials import (
        UnitCredentials,
        VehicleCredential,
        load_credentials,
        write_credentials,
    )

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


def _user(args: argparse.Namespace) -> int:
    with _repositories(args) as (accounts, audit):
        if args.user_command == "list":
            users = accounts.list_users(account_id=_account_id(accounts, args.account))
            _print(
                args,
                [
                    {
                        "id": u.id,
                        "email": u.email,
                        "role": u.role,
                        "account": u.account_id,
                        "disabled": u.disabled_at is not None,
                    }
                    for u in users
                ],
                ["id", "email", "role", "account", "disabled"],
            )
            return 0
        if args.user_command == "set-password":
            return _set_password(args, accounts, audit)
        return _add_user(args, accounts, audit)


def _new_password() -> tuple[str, bool]:
    """The password to set: from the environment, else generated; (password, generated)."""
    from gateway.auth.passwords import WeakPassword, check_password, generate_password

    password = os.environ.get(USER_PASSWORD_ENV)
    if password is None:
        return generate_password(), True
    try:
        check_password(password)
    except WeakPassword as exc:
        raise CliError(f"${USER_PASSWORD_ENV}: {exc}") from None
    return password, False


def _add_user(args: argparse.Namespace, accounts: AccountRepository, audit: AuditLog) -> int:
    from gateway.auth.passwords import hash_password
    from gateway.statedb.accounts import DuplicateEmail

    if (args.role == "admin") != (args.account is None):
        raise CliError("give --account for every role but admin (and none for an admin)")
    account_id = _account_id(accounts, args.account)
    check_plain_text(args.email, "the e-mail address")
    if args.name is not None:
        check_plain_text(args.name, "--name")
    password, generated = _new_password()
    try:
        user = accounts.create_user(
            email=args.email,
            name=args.name or args.email,
            password_hash=hash_password(password),
            role=args.role,
            account_id=account_id,
            now=_now(),
        )
    except DuplicateEmail:
        raise CliError(f"there is already a user {args.email}") from None
    _record(
        audit,
        "user_create",
        account_id=account_id,
        target=f"user:{user.id}",
        detail={"email": user.email, "role": user.role},
    )
    print(f"created user {user.id} {user.email} ({user.role})")
    if generated:
        print(f"  password (shown only now): {password}")
    return 0


def _set_password(args: argparse.Namespace, accounts: AccountRepository, audit: AuditLog) -> int:
    """``telematics user set-password EMAIL``: the same change as the API's password change
    (``PATCH /v1/users/{id}``), audited the same way, and it ends what the user is logged in
    with: access tokens, refresh tokens (sessions) and API keys."""
    from gateway.auth.passwords import hash_password

    user = accounts.get_user_by_email(args.email)
    if user is None:
        raise CliError(f"there is no user {args.email}; telematics user list shows them")
    password, generated = _new_password()
    now = _now()
    accounts.update_user(user.id, password_hash=hash_password(password))
    ended = accounts.end_user_sessions(user.id, now=now)
    accounts.clear_login_throttles(user.id)  # a new password starts without a lock-out
    _record(
        audit,
        "user_update",
        account_id=user.account_id,
        target=f"user:{user.id}",
        detail={
            "changed": ["password"],
            "sessions_ended": ended.refresh_sessions,
            "ended_integrations": ended.api_keys,
        },
    )
    print(
        f"set the password of user {user.id} {user.email}; {ended.refresh_sessions} "
        f"session(s) ended, {ended.api_keys} API key(s) revoked"
    )
    if generated:
        print(f"  password (shown only now): {password}")
    if user.disabled_at is not None:
        print("  note: this user is disabled (PATCH /v1/users/{id} enables it)")
    return 0


def _account(args: argparse.Namespace) -> int:
    with _repositories(args) as (accounts, audit):
        if args.account_command == "list":
            _print(
                args,
                [{"id": a.id, "kind": a.kind, "name": a.name} for a in accounts.list_accounts()],
                ["id", "kind", "name"],
            )
            return 0
        account = accounts.create_account(
            args.kind, check_plain_text(args.name, "the account name"), now=_now()
        )
        _record(
            audit,
            "account_create",
            account_id=account.id,
            target=f"account:{account.id}",
            detail={"kind": account.kind, "name": account.name},
        )
        print(f"created {account.kind} account {account.id} {account.name!r}")
        return 0
