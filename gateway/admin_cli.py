"""Operator commands on the state database: ``telematics vehicle|user|account ...``.

They work without a running API (first set-up, scripts, recovery) and write the same audit
entries the API writes, with the operating-system user as the actor. Passwords shown here
are shown once; a password to set is read from the environment, never from the command
line (``ps`` would show it to every user of the machine).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.statedb.accounts import AccountRepository
from gateway.statedb.audit import AuditLog
from gateway.statedb.database import StateDatabase, default_url
from gateway.text import check_plain_text

__all__ = ["add_account_arguments", "add_user_arguments", "add_vehicle_arguments", "run"]

#: environment variable with the password of ``telematics user add``
USER_PASSWORD_ENV = "TELEMATICS_USER_PASSWORD"


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
        "--account", type=int, required=True, help="account id (telematics account list)"
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
        "--broker-url", help="broker URL to put into the credentials file, e.g. mqtt://host:1884"
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
    lst.add_argument("--account", type=int, help="only this account's")
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
    add.add_argument("--account", type=int, help="account id (not for admins)")
    add.add_argument("--name", help="display name (default: the e-mail address)")
    _common(add)
    lst = sub.add_parser("list", help="list users")
    lst.add_argument("--account", type=int, help="only this account's")
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
    db = StateDatabase(args.state_db_url or default_url(args.data_dir))
    try:
        db.upgrade()
        yield AccountRepository(db), AuditLog(db)
    finally:
        db.dispose()


def _no_account(account_id: int) -> CliError:
    return CliError(f"there is no account {account_id}; telematics account list shows them")


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
    from gateway.auth.provisioning import provision_or_rotate, provision_vehicle
    from gateway.statedb.accounts import VehicleAlreadyProvisioned
    from schemas import InvalidVinError, validate_vin

    with _repositories(args) as (accounts, audit):
        if args.vehicle_command == "list":
            vehicles = accounts.list_vehicles(account_id=args.account, include_revoked=args.all)
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
            return 0
        if accounts.get_account(args.account) is None:
            raise _no_account(args.account)
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
                    account_id=args.account,
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
                account_id=args.account,
                target=f"vehicle:{vin}",
                detail={"credentials": "certificate" if args.certificate else "password"},
            )
            created[vin] = result.mqtt_password
        if args.credentials_file is not None:
            write_unit_credentials(
                args.credentials_file,
                created,
                public_key_path=args.data_dir / "command-signing-key.pem.pub",
                broker_url=args.broker_url,
            )
            print(f"provisioned {len(created)} vehicle(s); credentials in {args.credentials_file}")
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


def write_unit_credentials(
    path: Path,
    passwords: dict[str, str | None],
    *,
    public_key_path: Path | None,
    broker_url: str | None,
) -> None:
    """Add ``passwords`` (VIN -> MQTT password) to the unit credentials file at ``path``
    (created if missing; entries of other VINs are kept)."""
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
    write_credentials(
        path,
        UnitCredentials.of(
            entries.values(),
            gateway_public_key_pem=public_key,
            broker_url=broker_url or existing.broker_url,
        ),
    )


def _user(args: argparse.Namespace) -> int:
    from gateway.auth.passwords import (
        WeakPassword,
        check_password,
        generate_password,
        hash_password,
    )
    from gateway.statedb.accounts import DuplicateEmail

    with _repositories(args) as (accounts, audit):
        if args.user_command == "list":
            users = accounts.list_users(account_id=args.account)
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
        if (args.role == "admin") != (args.account is None):
            raise CliError("give --account for every role but admin (and none for an admin)")
        if args.account is not None and accounts.get_account(args.account) is None:
            raise _no_account(args.account)
        check_plain_text(args.email, "the e-mail address")
        if args.name is not None:
            check_plain_text(args.name, "--name")
        password = os.environ.get(USER_PASSWORD_ENV)
        generated = password is None
        if password is None:
            password = generate_password()
        try:
            check_password(password)
        except WeakPassword as exc:
            raise CliError(f"${USER_PASSWORD_ENV}: {exc}") from None
        try:
            user = accounts.create_user(
                email=args.email,
                name=args.name or args.email,
                password_hash=hash_password(password),
                role=args.role,
                account_id=args.account,
                now=_now(),
            )
        except DuplicateEmail:
            raise CliError(f"there is already a user {args.email}") from None
        _record(
            audit,
            "user_create",
            account_id=args.account,
            target=f"user:{user.id}",
            detail={"email": user.email, "role": user.role},
        )
        print(f"created user {user.id} {user.email} ({user.role})")
        if generated:
            print(f"  password (shown only now): {password}")
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
