"""``telematics vehicle add|revoke|list``: provisioning on the state database, the broker
credentials it creates (shown once, or written to a unit credentials file), and waiting
until the installation's broker has taken the change. See
docs/decisions/0013-architecture-step.md."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gateway.cli.admin import (
    CliError,
    account_id,
    add_admin_common,
    now,
    print_rows,
    record,
    repositories,
)
from gateway.errors import GatewayError
from gateway.settings import DEFAULT_PRIVATE_BROKER_PORT, Environment
from gateway.text import check_plain_text

if TYPE_CHECKING:
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog

__all__ = ["add_parser", "default_unit_broker_url", "edge_broker_url", "run"]

#: the plain MQTT listener in the private broker's configuration (the first ``listener``)
_LISTENER_LINE = re.compile(r"^listener (\d+) (\S+)$", re.MULTILINE)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    parser = sub.add_parser(
        "vehicle",
        help="provision, revoke and list vehicles (telematics vehicle add --help)",
        description="Vehicles in the state database and their broker credentials.",
    )
    parser.set_defaults(handler=run)
    actions = parser.add_subparsers(dest="vehicle_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add",
        help="provision vehicles: registry entry + MQTT credentials (shown once)",
        description="Provision one or more vehicles into an account. Each gets MQTT "
        "credentials (user name = VIN, a random password shown once); while telematics up "
        "runs for this data directory, the command returns once its broker has them, so a "
        "unit started next is let in. With --credentials-file they are written to a unit "
        "credentials file (mode 0600) for `telematics sim --credentials` instead of printed.",
    )
    add.add_argument(
        "vins", nargs="+", metavar="VIN", help="17 characters, no I, O, Q; several at once"
    )
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
        "started with another --mqtt-port; with --certificate first "
        "$TELEMATICS_UNIT_TLS_BROKER_URL, and that broker's TLS listener)",
    )
    add_admin_common(add, env)
    revoke = actions.add_parser(
        "revoke",
        help="revoke vehicles: cut them off the broker, end their grants",
        description="Revoke vehicles: their open commands are cancelled and their grants "
        "end; while telematics up runs for this data directory, the command returns once its "
        "broker has cut the units off and refuses their passwords. Their data stays.",
    )
    revoke.add_argument("vins", nargs="+", metavar="VIN", help="the VINs to revoke")
    add_admin_common(revoke, env)
    lst = actions.add_parser(
        "list",
        help="list provisioned vehicles",
        description="List provisioned vehicles: VIN, account, label, credentials (password "
        "or certificate) and whether revoked (--json for JSON).",
    )
    lst.add_argument("--account", help="only this account's (id or name)")
    lst.add_argument("--all", action="store_true", help="include revoked vehicles")
    add_admin_common(lst, env)


def run(args: argparse.Namespace, env: Environment) -> int:
    from schemas import InvalidVinError, validate_vin

    with repositories(args) as (accounts, audit):
        if args.vehicle_command == "list":
            return _list(args, accounts)
        try:
            vins = [validate_vin(v) for v in args.vins]
        except InvalidVinError as exc:
            raise CliError(str(exc)) from None
        if args.vehicle_command == "revoke":
            return _revoke(args, accounts, audit, vins)
        return _add(args, env, accounts, audit, vins)


def _list(args: argparse.Namespace, accounts: AccountRepository) -> int:
    vehicles = accounts.list_vehicles(
        account_id=account_id(accounts, args.account), include_revoked=args.all
    )
    print_rows(
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


def _revoke(
    args: argparse.Namespace, accounts: AccountRepository, audit: AuditLog, vins: list[str]
) -> int:
    done: list[dict[str, object]] = []
    for vin in vins:
        revoked = accounts.revoke_vehicle(vin, now=now())
        done.append({"vin": vin, "revoked": revoked is not None})
        if revoked is None:
            print(f"{vin}: not provisioned", file=sys.stderr)
            continue
        record(audit, "vehicle_revoke", account_id=revoked.account_id, target=f"vehicle:{vin}")
        if not args.json:
            print(f"{vin}: revoked")
    _wait_for_broker(args, accounts.broker_version())
    if args.json:
        print(json.dumps(done, indent=2))
    return 0


def _add(
    args: argparse.Namespace,
    env: Environment,
    accounts: AccountRepository,
    audit: AuditLog,
    vins: list[str],
) -> int:
    account = account_id(accounts, args.account)
    assert account is not None  # --account is required for add
    if args.label is not None:
        check_plain_text(args.label, "--label")
    edge_url = None  # before provisioning: a refusal must not lose the new passwords
    if args.credentials_file is not None and args.broker_url is None and not args.certificate:
        edge_url = edge_broker_url(args.data_dir, vins)
        if edge_url is not None and _names_a_broker(args.credentials_file):
            from schemas.credentials import load_credentials

            if load_credentials(args.credentials_file).broker_url != edge_url:
                raise GatewayError(
                    f"{args.credentials_file} is for another broker than these VINs' edge "
                    f"({edge_url}): use a credentials file per edge"
                )
    created, renewed = _provision(args, accounts, audit, vins, account)
    _wait_for_broker(args, accounts.broker_version())
    if args.credentials_file is not None:
        from gateway.installation import write_unit_credentials

        broker_url = args.broker_url or edge_url
        if broker_url is None and not _names_a_broker(args.credentials_file):
            broker_url = default_unit_broker_url(args.data_dir, env, tls=args.certificate)
        written = write_unit_credentials(
            args.credentials_file,
            created,
            public_key_path=args.data_dir / "command-signing-key.pem.pub",
            broker_url=broker_url,
        )
        again = (
            f" ({len(renewed)} of them provisioned before: new passwords, their old ones "
            "no longer work)"
            if renewed
            else ""
        )
        print(
            f"provisioned {len(created)} vehicle(s){again}; credentials in "
            f"{args.credentials_file} (broker {written.broker_url})"
        )
        return 0
    if args.json:
        print(
            json.dumps(
                [{"vin": v, "mqtt_username": v, "mqtt_password": p} for v, p in created.items()],
                indent=2,
            )
        )
        return 0
    print("provisioned (MQTT user name = VIN; passwords are shown only now):")
    for vin, password in created.items():
        print(f"  {vin}  {password or '(client certificate)'}")
    return 0


#: provisioning this many vehicles at once says how far it got, every PROGRESS_EVERY
PROGRESS_FROM: Final = 100
PROGRESS_EVERY: Final = 250


def _provision(
    args: argparse.Namespace,
    accounts: AccountRepository,
    audit: AuditLog,
    vins: list[str],
    account: int,
) -> tuple[dict[str, str | None], list[str]]:
    """Provision ``vins`` into ``account``: VIN -> its new MQTT password (None: client
    certificate), and the VINs that were provisioned before. Writing a credentials file, a
    vehicle provisioned before in ``account`` gets new credentials; one that another
    account holds is refused (it would stay there, its unit cut off)."""
    from gateway.accounts.provisioning import provision_or_rotate, provision_vehicle
    from gateway.statedb.accounts import VehicleAlreadyProvisioned

    created: dict[str, str | None] = {}
    renewed: list[str] = []
    provision = provision_vehicle if args.credentials_file is None else provision_or_rotate
    progress = len(vins) >= PROGRESS_FROM  # 1,000 took 20 s in silence
    if progress:
        print(f"provisioning {len(vins)} vehicles ...", file=sys.stderr, flush=True)
    for done, vin in enumerate(vins):
        if progress and done and done % PROGRESS_EVERY == 0:
            print(f"  {done}/{len(vins)}", file=sys.stderr, flush=True)
        held = accounts.get_vehicle(vin)
        if held is not None and held.active:
            if held.account_id != account:
                raise CliError(
                    f"{vin} is provisioned in account {held.account_id}, not {args.account}; "
                    f"revoke it first (telematics vehicle revoke {vin}) to provision it "
                    "into another account"
                )
            renewed.append(vin)
        try:
            result = provision(
                accounts,
                vin=vin,
                account_id=account,
                label=args.label,
                provisioned_by=None,
                now=now(),
                password=not args.certificate,
            )
        except VehicleAlreadyProvisioned:
            raise CliError(
                f"{vin} is already provisioned; revoke it first, or use "
                "--credentials-file to give it new credentials"
            ) from None
        record(
            audit,
            "vehicle_provision",
            account_id=account,
            target=f"vehicle:{vin}",
            detail={"credentials": "certificate" if args.certificate else "password"},
        )
        created[vin] = result.mqtt_password
    return created, renewed


def _wait_for_broker(args: argparse.Namespace, version: int) -> None:
    """When this data directory's `telematics up` runs its private broker, return once the
    broker has taken what was just changed (it syncs every half second; provisioning many
    vehicles takes longer), so a unit started next is admitted; say so if it takes long."""
    from gateway.health import HEALTH_DIR_NAME, broker_wait

    health = args.data_dir / HEALTH_DIR_NAME
    state = broker_wait(health, version, timeout_s=2, now_ms=now)
    if state == "pending":
        print("waiting for the broker to take the change ...", file=sys.stderr, flush=True)
        state = broker_wait(health, version, timeout_s=60, now_ms=now)
    if state == "not_responding":
        print(
            "warning: a broker of this installation is not responding (its process is "
            "stopped, see /healthz); its units are refused until it runs again and has "
            "taken the change",
            file=sys.stderr,
        )
    elif state == "pending":
        print(
            "warning: the broker has not taken the change after a minute; units may be "
            "refused until it has (see the broker log in DATA_DIR/broker/)",
            file=sys.stderr,
        )


def _names_a_broker(path: Path) -> bool:
    """The credentials file at ``path`` exists and has a broker URL."""
    from schemas.credentials import load_credentials

    return path.exists() and load_credentials(path).broker_url is not None


def edge_broker_url(data_dir: Path, vins: list[str]) -> str | None:
    """With edge brokers (``telematics up --edge-brokers``, decision 0038), the URL of the
    edge that holds ``vins``' logins (from the configuration ``up`` last rendered for it);
    None without edges. A credentials file has one broker URL, so VINs of different edges
    are refused: add them edge by edge, or give ``--broker-url``."""
    from gateway.broker.mosquitto import CONFIG_FILE_NAME
    from schemas.edges import edge_index

    configs = sorted(
        data_dir.glob(f"broker-edge-*/{CONFIG_FILE_NAME}"),
        key=lambda p: int(p.parent.name.rsplit("-", 1)[1]),
    )
    if not configs or not vins:
        return None
    edges = {edge_index(vin, len(configs)) for vin in vins}
    if len(edges) > 1:
        raise GatewayError(
            f"these VINs log in at {len(edges)} different edge brokers and a credentials "
            "file has one broker URL: add them edge by edge (schemas.edges.edge_index), or "
            "give --broker-url"
        )
    listeners = _LISTENER_LINE.findall(configs[edges.pop() - 1].read_text(encoding="utf-8"))
    if not listeners:
        return None
    port, host = listeners[0]
    return f"mqtt://{host}:{port}"


def default_unit_broker_url(data_dir: Path, env: Environment, *, tls: bool = False) -> str:
    """The broker URL written into a unit credentials file when ``--broker-url`` is not
    given: the one ``telematics up`` tells its vehicles. That is ``TELEMATICS_UNIT_BROKER_URL``,
    else ``TELEMATICS_MQTT_URL``, else the private broker ``telematics up`` last ran for
    ``data_dir`` (its port from the configuration it rendered there), else
    ``mqtt://127.0.0.1:1884`` (``TELEMATICS_MQTT_PORT`` instead of 1884 if set). For units
    with a client certificate (``tls``), first ``TELEMATICS_UNIT_TLS_BROKER_URL``, else that
    broker's TLS listener (its second listener), since they cannot log in on the first."""
    from gateway.broker.mosquitto import CONFIG_FILE_NAME
    from gateway.supervisor import data_paths

    urls: tuple[str | None, ...] = (env.unit_tls_broker_url,) if tls else ()
    for url in (*urls, env.unit_broker_url, env.mqtt_url):
        if url:
            return url
    try:
        config = (data_paths(data_dir)[1] / CONFIG_FILE_NAME).read_text(encoding="utf-8")
    except OSError:
        config = ""
    listeners = _LISTENER_LINE.findall(config)
    if tls and len(listeners) > 1:
        port, host = listeners[1]
        return f"mqtts://{host}:{port}"
    if listeners:
        port, host = listeners[0]
        return f"mqtt://{host}:{port}"
    return f"mqtt://127.0.0.1:{env.mqtt_port or DEFAULT_PRIVATE_BROKER_PORT}"
