"""The ``telematics`` command.

``telematics up [--demo]``   broker + gateway + API (+ simulated fleet), supervised
``telematics gateway``       one ingest process (run several to scale out)
``telematics api``           the HTTP API
``telematics sim``           the device simulator (speaks only the public device contract)
``telematics vehicle|user|account``  operator commands on the state database
``telematics pki``           certificates for the broker's TLS listener
``telematics bench ...``     benchmarks (ingest, commands, sim, identities)

Every option can also be set by an environment variable, named in its help text.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.broker import (
    BrokerConfig,
    find_dynsec_plugin,
    find_mosquitto,
    parse_mqtt_url,
)
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.broker import MosquittoProcess
    from gateway.installation import DemoLogin
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog
    from gateway.supervisor import BrokerKeeper, Part

__all__ = ["build_parser", "main"]

log = logging.getLogger("telematics")

DEFAULT_PRIVATE_BROKER_PORT = 1884
DEFAULT_API_PORT = 8080


def _env(name: str, default: str) -> str:
    return os.environ.get(f"TELEMATICS_{name}", default)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("DATA_DIR", "data")),
        help="where the telemetry database and the private broker's files live "
        "(env TELEMATICS_DATA_DIR; default: ./data)",
    )
    p.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="(env TELEMATICS_LOG_LEVEL; default: INFO)",
    )


def _add_mqtt(p: argparse.ArgumentParser, *, default: str | None) -> None:
    p.add_argument(
        "--mqtt-url",
        default=os.environ.get("TELEMATICS_MQTT_URL", default),
        help="broker to use, mqtt://host:port (env TELEMATICS_MQTT_URL)"
        + ("" if default is None else f"; default: {default}"),
    )


def _add_mqtt_auth(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mqtt-username",
        default=os.environ.get("TELEMATICS_MQTT_USERNAME"),
        help="the gateway's service account on a broker that refuses anonymous clients "
        "(env TELEMATICS_MQTT_USERNAME; `telematics up` sets it up itself)",
    )
    p.add_argument(
        "--mqtt-password-file",
        type=Path,
        default=os.environ.get("TELEMATICS_MQTT_PASSWORD_FILE"),
        metavar="FILE",
        help="file holding the service account's password (env "
        "TELEMATICS_MQTT_PASSWORD_FILE, or the password itself in TELEMATICS_MQTT_PASSWORD; "
        "never on the command line, where ps would show it)",
    )


def _mqtt_credentials(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if args.mqtt_username is None:
        return None, None
    if args.mqtt_password_file is not None:
        try:
            return args.mqtt_username, Path(args.mqtt_password_file).read_text().strip()
        except OSError as exc:
            raise GatewayError(f"cannot read --mqtt-password-file: {exc}") from exc
    return args.mqtt_username, os.environ.get("TELEMATICS_MQTT_PASSWORD")


def _add_state_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-db-url",
        default=os.environ.get("TELEMATICS_STATE_DB_URL"),
        help="state database (accounts, vehicles, commands) as an SQLAlchemy URL, e.g. "
        "postgresql+psycopg://user@host/db (env TELEMATICS_STATE_DB_URL; default: SQLite "
        "file state.db in the data directory)",
    )


def _add_ingest(p: argparse.ArgumentParser, *, client_id: bool = True) -> None:
    """The gateway's ingest settings; ``client_id=False`` for ``up``, which names its
    gateways itself."""
    if client_id:
        p.add_argument(
            "--client-id",
            default=_env("CLIENT_ID", "telematics-gateway-1"),
            help="MQTT client id, unique and stable per gateway process: the broker keeps its "
            "session and queues its share of messages while it is down "
            "(env TELEMATICS_CLIENT_ID; default: telematics-gateway-1)",
        )
    p.add_argument(
        "--share-group",
        default=_env("SHARE_GROUP", "telematics-gateway"),
        help="MQTT 5 shared-subscription group; gateways in one group split the stream "
        "(env TELEMATICS_SHARE_GROUP; default: telematics-gateway)",
    )
    p.add_argument(
        "--batch-delay-ms",
        type=float,
        default=float(_env("BATCH_DELAY_MS", "50")),
        help="longest a message waits for its batch to commit before it is acknowledged "
        "(env TELEMATICS_BATCH_DELAY_MS; default: 50)",
    )
    p.add_argument(
        "--receive-maximum",
        type=int,
        default=int(_env("RECEIVE_MAXIMUM", "20000")),
        help="MQTT 5 Receive Maximum: unacknowledged messages in flight to this gateway; "
        "must exceed message rate x batch delay (env TELEMATICS_RECEIVE_MAXIMUM; "
        "default: 20000)",
    )


def _add_retention(p: argparse.ArgumentParser) -> None:
    from gateway.retention import (
        DEFAULT_QUARANTINE_DAYS,
        DEFAULT_QUARANTINE_MAX_ENTRIES,
        DEFAULT_TELEMETRY_DAYS,
    )
    from gateway.store.sqlite import DEFAULT_QUARANTINE_PAYLOAD_BYTES

    for flag, env, default, kind, what in [
        (
            "--telemetry-retention-days",
            "TELEMETRY_RETENTION_DAYS",
            DEFAULT_TELEMETRY_DAYS,
            float,
            "delete samples this many days after they arrived (0: keep forever)",
        ),
        (
            "--quarantine-retention-days",
            "QUARANTINE_RETENTION_DAYS",
            DEFAULT_QUARANTINE_DAYS,
            float,
            "delete quarantine entries this many days after they arrived (0: keep)",
        ),
        (
            "--quarantine-max-entries",
            "QUARANTINE_MAX_ENTRIES",
            DEFAULT_QUARANTINE_MAX_ENTRIES,
            int,
            "keep at most this many quarantine entries, the newest (0: no cap)",
        ),
        (
            "--quarantine-payload-bytes",
            "QUARANTINE_PAYLOAD_BYTES",
            DEFAULT_QUARANTINE_PAYLOAD_BYTES,
            int,
            "keep at most this many bytes of each refused payload (with its size and SHA-256)",
        ),
    ]:
        p.add_argument(
            flag,
            type=kind,
            default=kind(_env(env, str(default))),
            help=f"{what} (env TELEMATICS_{env}; default: {default})",
        )


def _add_offline_after(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--offline-after",
        type=float,
        default=float(_env("OFFLINE_AFTER", "600")),
        metavar="SECONDS",
        help="show a vehicle offline (reason 'silent') when its status says online but "
        "nothing has come from it for this long; units publish at least every 5 minutes "
        "(env TELEMATICS_OFFLINE_AFTER; default: 600)",
    )


def _add_signing_key(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--signing-key",
        type=Path,
        default=os.environ.get("TELEMATICS_SIGNING_KEY"),
        metavar="FILE",
        help="Ed25519 private key (PEM) that signs every remote command; created (mode 0600, "
        "with its public key next to it as FILE.pub, to provision units with) if missing "
        "(env TELEMATICS_SIGNING_KEY; default: DATA_DIR/command-signing-key.pem)",
    )


def _add_auth(p: argparse.ArgumentParser) -> None:
    from gateway.core.ratelimit import (
        DEFAULT_LOGIN_LIMIT,
        DEFAULT_USER_COMMAND_LIMIT,
        DEFAULT_VEHICLE_COMMAND_LIMIT,
    )

    p.add_argument(
        "--admin-email",
        default=_env("ADMIN_EMAIL", "admin@localhost"),
        help="e-mail address of the first administrator, created when there is none; its "
        "password comes from TELEMATICS_ADMIN_PASSWORD, else one is generated and printed "
        "once (env TELEMATICS_ADMIN_EMAIL; default: admin@localhost)",
    )
    p.add_argument(
        "--auth-secret-file",
        type=Path,
        default=os.environ.get("TELEMATICS_AUTH_SECRET_FILE"),
        metavar="FILE",
        help="key that signs access tokens, created if missing; every API process of an "
        "installation needs the same one (env TELEMATICS_AUTH_SECRET_FILE; default: "
        "DATA_DIR/auth-secret)",
    )
    p.add_argument(
        "--access-token-ttl",
        type=int,
        default=int(_env("ACCESS_TOKEN_TTL", "900")),
        metavar="SECONDS",
        help="lifetime of access tokens (env TELEMATICS_ACCESS_TOKEN_TTL; default: 900)",
    )
    p.add_argument(
        "--refresh-token-ttl",
        type=int,
        default=int(_env("REFRESH_TOKEN_TTL", str(30 * 24 * 3600))),
        metavar="SECONDS",
        help="lifetime of refresh tokens (env TELEMATICS_REFRESH_TOKEN_TTL; default: 30 days)",
    )
    for name, default, what in [
        ("user-command-limit", DEFAULT_USER_COMMAND_LIMIT, "remote commands per user"),
        ("vehicle-command-limit", DEFAULT_VEHICLE_COMMAND_LIMIT, "remote commands per vehicle"),
        ("login-limit", DEFAULT_LOGIN_LIMIT, "password attempts per client address"),
    ]:
        env = "TELEMATICS_" + name.upper().replace("-", "_")
        p.add_argument(
            f"--{name}",
            default=os.environ.get(env, f"{default.rate * 60:g}/min,burst={default.burst}"),
            metavar="RATE",
            help=f"{what}, e.g. 30/min, 5/s,burst=10 or off (env {env}; default: {default})",
        )
    p.add_argument(
        "--invitation-limit",
        default=os.environ.get("TELEMATICS_INVITATION_LIMIT", "20/hour,burst=10"),
        metavar="RATE",
        help="invitations to share a vehicle, per user (env TELEMATICS_INVITATION_LIMIT; "
        "default: 20/hour,burst=10)",
    )
    p.add_argument(
        "--no-registration",
        action="store_true",
        default=_env("NO_REGISTRATION", "") not in ("", "0", "false"),
        help="refuse POST /v1/auth/register: only administrators and account managers "
        "create users (env TELEMATICS_NO_REGISTRATION=1)",
    )
    p.add_argument(
        "--unit-broker-url",
        default=os.environ.get("TELEMATICS_UNIT_BROKER_URL"),
        help="broker URL told to vehicles at provisioning, as they reach it (env "
        "TELEMATICS_UNIT_BROKER_URL; default: --mqtt-url)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="telematics",
        description="Connected-vehicle telematics gateway: ingests vehicle telemetry from "
        "MQTT, validates it against a VSS signal catalog, stores it, and serves it over HTTP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run everything: private broker, gateway, API (and --demo vehicles)",
        description="Start a private Mosquitto (unless --mqtt-url is given), the gateway and "
        "the HTTP API as supervised child processes. Ctrl-C stops everything cleanly.",
    )
    _add_common(up)
    _add_mqtt(up, default=None)
    up.add_argument(
        "--mqtt-port",
        type=int,
        default=int(_env("MQTT_PORT", str(DEFAULT_PRIVATE_BROKER_PORT))),
        help="port of the private broker (env TELEMATICS_MQTT_PORT; default: "
        f"{DEFAULT_PRIVATE_BROKER_PORT}, so it does not clash with a system broker on 1883)",
    )
    up.add_argument(
        "--api-host",
        default=_env("API_HOST", "127.0.0.1"),
        help="(env TELEMATICS_API_HOST; default: 127.0.0.1, this machine only)",
    )
    up.add_argument(
        "--api-port",
        type=int,
        default=int(_env("API_PORT", str(DEFAULT_API_PORT))),
        help=f"(env TELEMATICS_API_PORT; default: {DEFAULT_API_PORT})",
    )
    _add_state_db(up)
    up.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="gateway processes sharing the subscription (default: 1)",
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="also run simulated vehicles driving around Munich, provisioned into the "
        "organization 'Demo Fleet' (with a fleet manager, fleet@demo.local)",
    )
    up.add_argument(
        "--tls-port",
        type=int,
        default=int(_env("TLS_PORT", "0")) or None,
        help="also open a TLS listener on this port that requires a client certificate "
        "whose common name is the VIN (certificates: telematics pki; created in DATA_DIR/pki "
        "on first use) (env TELEMATICS_TLS_PORT; default: none)",
    )
    up.add_argument(
        "--anonymous-broker",
        action="store_true",
        help="run the private broker open to anonymous clients, without per-vehicle "
        "credentials and ACL (development only; vehicles are then not checked)",
    )
    up.add_argument("--vehicles", type=int, default=5, help="number of demo vehicles (default: 5)")
    # the API's and the gateways' settings, handed on to them
    _add_auth(up)
    _add_signing_key(up)
    _add_offline_after(up)
    _add_retention(up)
    _add_mqtt_auth(up)
    _add_ingest(up, client_id=False)

    gw = sub.add_parser(
        "gateway",
        help="run one ingest process",
        description="Ingest from the broker into the telemetry store.",
    )
    _add_common(gw)
    _add_mqtt(gw, default=f"mqtt://127.0.0.1:{DEFAULT_PRIVATE_BROKER_PORT}")
    _add_mqtt_auth(gw)
    _add_ingest(gw)
    _add_state_db(gw)
    gw.add_argument(
        "--require-provisioned",
        action="store_true",
        default=_env("REQUIRE_PROVISIONED", "") not in ("", "0", "false"),
        help="refuse (quarantine as unprovisioned_vehicle) messages of VINs that are not "
        "provisioned in the state database, or were revoked (env "
        "TELEMATICS_REQUIRE_PROVISIONED=1; `telematics up` turns it on)",
    )
    _add_retention(gw)

    api = sub.add_parser(
        "api", help="run the HTTP API", description="Serve the HTTP API (OpenAPI docs at /docs)."
    )
    _add_common(api)
    api.add_argument(
        "--host",
        default=_env("API_HOST", "127.0.0.1"),
        help="(env TELEMATICS_API_HOST; default: 127.0.0.1)",
    )
    api.add_argument(
        "--port",
        type=int,
        default=int(_env("API_PORT", str(DEFAULT_API_PORT))),
        help=f"(env TELEMATICS_API_PORT; default: {DEFAULT_API_PORT})",
    )
    _add_mqtt(api, default=None)
    _add_mqtt_auth(api)
    _add_state_db(api)
    _add_auth(api)
    _add_offline_after(api)
    api.add_argument(
        "--commands-client-id",
        default=_env("COMMANDS_CLIENT_ID", "telematics-commands-1"),
        help="MQTT client id of this API process's command service: unique and stable per "
        "API process, like a gateway's (env TELEMATICS_COMMANDS_CLIENT_ID; default: "
        "telematics-commands-1)",
    )
    _add_signing_key(api)

    from gateway.admin_cli import (
        add_account_arguments,
        add_user_arguments,
        add_vehicle_arguments,
    )

    add_vehicle_arguments(
        sub.add_parser(
            "vehicle",
            help="provision, revoke and list vehicles (telematics vehicle add --help)",
            description="Vehicles in the state database and their broker credentials.",
        )
    )
    add_user_arguments(
        sub.add_parser("user", help="create and list users", description="Users and roles.")
    )
    add_account_arguments(
        sub.add_parser(
            "account",
            help="create and list accounts (organizations, private accounts)",
            description="Accounts: enterprise organizations and private accounts.",
        )
    )
    from gateway.broker.pki import add_arguments as add_pki_arguments

    add_pki_arguments(
        sub.add_parser(
            "pki",
            help="certificates for the broker's TLS listener (CA, server, vehicles)",
            description="A small certificate authority: the broker's server certificate and "
            "one client certificate per vehicle (common name = VIN).",
        )
    )

    sub.add_parser(
        "sim",
        help="run the device simulator (telematics sim --help; scenarios: telematics sim "
        "scenario --help)",
        add_help=False,
    )

    bench = sub.add_parser(
        "bench", help="benchmarks", description="Benchmarks that print their figures."
    )
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    from gateway.bench.ingest import add_arguments as add_ingest_bench_arguments

    add_ingest_bench_arguments(
        bench_sub.add_parser(
            "ingest",
            help="ingest rate and latency against the broker's raw delivery rate",
            description="Start a private broker; measure the broker's raw delivery rate to a "
            "plain subscriber, then the gateway's committed-sample rate and "
            "publish-to-commit latency with the same publishers.",
        )
    )
    from gateway.bench.sim import add_arguments as add_sim_bench_arguments

    add_sim_bench_arguments(
        bench_sub.add_parser(
            "sim",
            help="simulator scale: 10,000 units at 0.2 msg/s and 1,000 at 1 msg/s",
            description="Start a private broker and run the device simulator at scale, each "
            "unit its own MQTT connection; print rates, CPU and memory per 1,000 units.",
        )
    )
    from gateway.bench.commands import add_arguments as add_commands_bench_arguments

    add_commands_bench_arguments(
        bench_sub.add_parser(
            "commands",
            help="API call -> succeeded latency of remote commands, idle and under ingest",
            description="Run broker, gateway, API and 100 simulated units; send 1,000 "
            "commands with ingest idle and again with ingest at half its maximum rate.",
        )
    )
    from gateway.bench.identities import add_arguments as add_identities_bench_arguments

    add_identities_bench_arguments(
        bench_sub.add_parser(
            "identities",
            help="what vehicle identities cost the closed broker: render, one live change, bulk",
            description="Run a closed broker with --vehicles provisioned vehicles; time the "
            "rendering and start, one vehicle added and revoked live, and all of them added "
            "at once.",
        )
    )
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # gmqtt logs every packet type at INFO; its warnings and errors still show
    for chatty in ("gmqtt", "httpx", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.core.batching import BatchPolicy
    from gateway.files import private_directory
    from gateway.ingest.service import IngestSettings
    from gateway.runner import GatewayOptions, run_gateway
    from gateway.statedb.database import default_url as default_state_db_url
    from gateway.supervisor import data_paths

    host, port = parse_mqtt_url(args.mqtt_url)
    private_directory(args.data_dir)
    db_path, _ = data_paths(args.data_dir)
    username, password = _mqtt_credentials(args)
    settings = IngestSettings(
        host=host,
        port=port,
        username=username,
        password=password,
        client_id=args.client_id,
        share_group=args.share_group,
        receive_maximum=args.receive_maximum,
        batch=BatchPolicy(max_delay_s=args.batch_delay_ms / 1000),
    )
    registry_url = None
    if args.require_provisioned:
        registry_url = args.state_db_url or default_state_db_url(args.data_dir)
    from gateway.retention import RetentionPolicy

    retention = RetentionPolicy(
        telemetry_days=args.telemetry_retention_days or None,
        quarantine_days=args.quarantine_retention_days or None,
        quarantine_max_entries=args.quarantine_max_entries or None,
    )
    run_gateway(
        GatewayOptions(
            db_path=db_path,
            ingest=settings,
            registry_url=registry_url,
            retention=retention,
            quarantine_payload_bytes=args.quarantine_payload_bytes,
        )
    )
    return 0


def ensure_signing_key(path: Path) -> None:
    """Create the command signing key at ``path`` (0600) and its public key at
    ``path.pub`` unless the key exists; the public key is what units are provisioned with."""
    from schemas.signing import generate_keypair, public_key_pem, save_private_key

    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    private_key, public_key = generate_keypair()
    save_private_key(path, private_key)
    public_path = path.with_name(path.name + ".pub")
    public_path.write_bytes(public_key_pem(public_key))
    log.info("created the command signing key %s (public key: %s)", path, public_path)


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api import ApiSettings, create_app
    from gateway.api.security import AuthSettings
    from gateway.commands.service import CommandSettings
    from gateway.core.ratelimit import parse_limit
    from gateway.files import private_directory
    from gateway.statedb.database import default_url as default_state_db_url
    from gateway.supervisor import data_paths

    private_directory(args.data_dir)
    db_path, _ = data_paths(args.data_dir)
    state_db_url = args.state_db_url or default_state_db_url(args.data_dir)
    signing_key: Path = args.signing_key or args.data_dir / "command-signing-key.pem"
    commands = None
    if args.mqtt_url is not None:
        host, port = parse_mqtt_url(args.mqtt_url)
        ensure_signing_key(signing_key)
        username, password = _mqtt_credentials(args)
        commands = CommandSettings(
            state_db_url=state_db_url,
            mqtt_host=host,
            mqtt_port=port,
            mqtt_username=username,
            mqtt_password=password,
            client_id=args.commands_client_id,
            signing_key_path=signing_key,
        )
    else:
        log.warning("no --mqtt-url: remote commands are off (their routes answer 503)")
    auth = AuthSettings(
        secret_path=args.auth_secret_file or args.data_dir / "auth-secret",
        access_ttl_s=args.access_token_ttl,
        refresh_ttl_s=args.refresh_token_ttl,
        user_command_limit=parse_limit(args.user_command_limit),
        vehicle_command_limit=parse_limit(args.vehicle_command_limit),
        login_limit=parse_limit(args.login_limit),
        invitation_limit=parse_limit(args.invitation_limit),
        first_admin_email=args.admin_email,
        first_admin_password=os.environ.get("TELEMATICS_ADMIN_PASSWORD") or None,
        open_registration=not args.no_registration,
        broker_url=args.unit_broker_url or args.mqtt_url,
        signing_public_key_path=signing_key.with_name(signing_key.name + ".pub"),
    )
    app = create_app(
        ApiSettings(
            db_path=db_path,
            commands=commands,
            auth=auth,
            state_db_url=state_db_url,
            silent_after_s=args.offline_after,
        )
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def _port_in_use(host: str, port: int) -> bool:
    """Something listens on ``host:port`` (a bind fails with EADDRINUSE). SO_REUSEADDR, as
    Mosquitto and uvicorn use it, so leftovers of our own last run do not count."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise GatewayError(f"cannot listen on {host}:{port}: {exc}") from exc
    return False


def up_listeners(args: argparse.Namespace) -> list[tuple[str, str, int, str]]:
    """What ``telematics up`` will listen on: (what, host, port, the flag and variable that
    change it)."""
    listeners = [
        ("the API", args.api_host, args.api_port, "--api-port PORT (env TELEMATICS_API_PORT)")
    ]
    if args.mqtt_url is None:
        listeners.append(
            (
                "the private broker",
                "127.0.0.1",
                args.mqtt_port,
                "--mqtt-port PORT (env TELEMATICS_MQTT_PORT)",
            )
        )
        if args.tls_port is not None:
            listeners.append(
                (
                    "the broker's TLS listener",
                    "127.0.0.1",
                    args.tls_port,
                    "--tls-port PORT (env TELEMATICS_TLS_PORT)",
                )
            )
    return listeners


def check_up_ports(
    listeners: Sequence[tuple[str, str, int, str]],
    in_use: Callable[[str, int], bool] = _port_in_use,
) -> None:
    """Refuse to start when a port of ``listeners`` is taken, or two of them are the same:
    the parts would start, fail to listen and be restarted until the supervisor gave up."""
    seen: dict[int, tuple[str, str]] = {}
    for what, _, port, flags in listeners:
        if port in seen:
            other, other_flags = seen[port]
            raise GatewayError(
                f"{what} and {other} cannot both listen on port {port}: change {flags} or "
                f"{other_flags}"
            )
        seen[port] = (what, flags)
    for what, host, port, flags in listeners:
        if in_use(host, port):
            raise GatewayError(
                f"port {port} on {host} is already in use, so {what} cannot listen there "
                f"(another telematics up, or another program?): choose another port with "
                f"{flags}"
            )


def _forwarded(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The command-line settings of ``up`` that its API and its gateways take: (API
    arguments, gateway arguments)."""
    from gateway.core.ratelimit import parse_limit

    for limit in (args.user_command_limit, args.vehicle_command_limit, args.login_limit):
        parse_limit(limit)  # a bad value is an error now, not an API that keeps dying
    api = [
        "--access-token-ttl",
        str(args.access_token_ttl),
        "--refresh-token-ttl",
        str(args.refresh_token_ttl),
        "--user-command-limit",
        args.user_command_limit,
        "--vehicle-command-limit",
        args.vehicle_command_limit,
        "--login-limit",
        args.login_limit,
        "--offline-after",
        repr(args.offline_after),
    ]
    if args.auth_secret_file is not None:
        api += ["--auth-secret-file", str(Path(args.auth_secret_file).absolute())]
    if args.no_registration:
        api.append("--no-registration")
    if args.unit_broker_url is not None:
        api += ["--unit-broker-url", args.unit_broker_url]
    gateway = [
        "--share-group",
        args.share_group,
        "--batch-delay-ms",
        repr(args.batch_delay_ms),
        "--receive-maximum",
        str(args.receive_maximum),
        "--telemetry-retention-days",
        repr(args.telemetry_retention_days),
        "--quarantine-retention-days",
        repr(args.quarantine_retention_days),
        "--quarantine-max-entries",
        str(args.quarantine_max_entries),
        "--quarantine-payload-bytes",
        str(args.quarantine_payload_bytes),
    ]
    return api, gateway


@dataclass
class _UpBroker:
    """What ``telematics up`` runs for MQTT: the private broker (None with --mqtt-url) and
    the arguments that give the gateway and the API their broker account."""

    keeper: BrokerKeeper | None
    url: str
    closed: bool
    service_args: list[str] = field(default_factory=list)
    gateway_args: list[str] = field(default_factory=list)


def _up_broker(args: argparse.Namespace, data_dir: Path, accounts: AccountRepository) -> _UpBroker:
    from gateway.broker.auth import BrokerAuthFiles
    from gateway.installation import SERVICE_USERNAME, closed_broker_sync, service_password
    from gateway.statedb.database import default_url as default_state_db_url
    from gateway.supervisor import BrokerKeeper, data_paths

    state_db_url = args.state_db_url or default_state_db_url(data_dir)
    if args.mqtt_url is not None:
        parse_mqtt_url(args.mqtt_url)
        if not args.mqtt_username:
            return _UpBroker(None, args.mqtt_url, closed=False)
        # your own broker with a service account for the gateway: it is a closed one
        service_args = ["--mqtt-username", args.mqtt_username]
        if args.mqtt_password_file is not None:
            password_path = Path(args.mqtt_password_file).absolute()
            service_args += ["--mqtt-password-file", str(password_path)]
        return _UpBroker(
            None,
            args.mqtt_url,
            closed=False,
            service_args=service_args,
            gateway_args=["--state-db-url", state_db_url, "--require-provisioned"],
        )
    find_mosquitto()  # fail early, with the install hint
    closed = not args.anonymous_broker
    _, broker_dir = data_paths(data_dir)
    secrets_dir = data_dir / "secrets"
    tls = None
    if args.tls_port is not None:
        if not closed:
            raise GatewayError("--tls-port needs the closed broker (drop --anonymous-broker)")
        from gateway.broker.pki import Pki

        pki = Pki(data_dir / "pki")
        if not pki.exists():
            pki.init()
            log.info("created a certificate authority for the TLS listener in %s", pki)
        tls = pki.tls_listener(port=args.tls_port)
    if not closed:
        config = BrokerConfig(port=args.mqtt_port, data_dir=broker_dir, allow_anonymous=True)
        return _UpBroker(BrokerKeeper(config), config.url, closed=False)
    find_dynsec_plugin()  # the closed broker cannot refuse subscriptions without it
    files = BrokerAuthFiles(broker_dir / "auth")
    config = BrokerConfig(
        port=args.mqtt_port,
        data_dir=broker_dir,
        allow_anonymous=False,
        password_file=files.password_file,
        dynsec_config_file=files.dynsec_file,
        tls=tls,
    )
    password_file = service_password(secrets_dir)
    keeper = BrokerKeeper(
        config,
        prime=_session_primer(args, password_file),
        sync=lambda k: closed_broker_sync(
            accounts,
            files,
            k.process,
            secrets_dir=secrets_dir,
            pki_dir=data_dir / "pki",
            restart=k.restart,
            lock=k.lock,
        ),
    )
    return _UpBroker(
        keeper,
        config.url,
        closed=True,
        service_args=[
            "--mqtt-username",
            SERVICE_USERNAME,
            "--mqtt-password-file",
            str(password_file),
        ],
        gateway_args=["--state-db-url", state_db_url, "--require-provisioned"],
    )


def _session_primer(
    args: argparse.Namespace, password_file: Path
) -> Callable[[MosquittoProcess], None]:
    """What opens this installation's service sessions right after every broker start:
    each gateway's (``telematics-gateway-N``) and the command service's, with their shared
    subscriptions (see :func:`gateway.broker.control.prime_sessions`). The ids and groups
    are the ones the child processes get: the same defaults and environment."""
    import dataclasses

    from gateway.broker.control import prime_sessions
    from gateway.commands.service import CommandSettings
    from gateway.commands.service import subscription_filters as command_filters
    from gateway.ingest.service import IngestSettings
    from gateway.installation import SERVICE_USERNAME

    group = _env("SHARE_GROUP", "telematics-gateway")
    sessions = {
        f"telematics-gateway-{i}": IngestSettings(
            client_id=f"telematics-gateway-{i}", share_group=group
        ).topic_filters()
        for i in range(1, args.gateways + 1)
    }
    defaults = {f.name: f.default for f in dataclasses.fields(CommandSettings)}
    commands_id = _env("COMMANDS_CLIENT_ID", str(defaults["client_id"]))
    sessions[commands_id] = command_filters(str(defaults["share_group"]))

    def prime(broker: MosquittoProcess) -> None:
        secret = password_file.read_text(encoding="utf-8").strip()
        prime_sessions(broker.host, broker.port, SERVICE_USERNAME, secret, sessions)

    return prime


def _demo_refresher(
    accounts: AccountRepository,
    audit: AuditLog,
    broker: _UpBroker,
    *,
    vins: Sequence[str],
    credentials: Path,
    public_key_path: Path,
) -> Callable[[], DemoLogin]:
    """Provisions the demo vehicles and refreshes stale unit credentials; run at start and
    before every start of the simulator, so a credential rotated through the API does not
    keep the demo down. Waits until the broker has taken new credentials."""
    from gateway.installation import provision_demo

    def refresh() -> DemoLogin:
        before = accounts.broker_version()
        login = provision_demo(
            accounts,
            audit,
            vins=vins,
            credentials_path=credentials,
            broker_url=broker.url,
            public_key_path=public_key_path,
            now=time.time_ns() // 1_000_000,
        )
        sync = None if broker.keeper is None else broker.keeper.sync
        after = accounts.broker_version()
        if sync is not None and sync.running and after != before:
            deadline = time.monotonic() + 10
            while (sync.synced_version or 0) < after and time.monotonic() < deadline:
                time.sleep(0.05)
        return login

    return refresh


def _prepare_data_dir(data_dir: Path) -> None:
    """The data directory holds secrets and databases: private to its owner (0700), and
    last run's health reports are gone (the processes that wrote them are)."""
    from gateway.files import private_directory
    from gateway.health import HEALTH_DIR_NAME

    private_directory(data_dir)
    health = data_dir / HEALTH_DIR_NAME
    if health.is_dir():
        for stale in health.glob("*.json"):
            stale.unlink(missing_ok=True)


def _cmd_up(args: argparse.Namespace) -> int:
    check_up_ports(up_listeners(args))
    api_args, gateway_tuning = _forwarded(args)
    from device_sim.fleet import fleet_vins
    from gateway.accounts.bootstrap import ensure_first_admin, print_first_admin
    from gateway.health import HEALTH_DIR_NAME
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog
    from gateway.statedb.database import StateDatabase
    from gateway.statedb.database import default_url as default_state_db_url
    from gateway.supervisor import Part, Supervisor, python_module

    data_dir: Path = args.data_dir.resolve()
    _prepare_data_dir(data_dir)
    state_db_url = args.state_db_url or default_state_db_url(data_dir)
    signing_key: Path = (args.signing_key or data_dir / "command-signing-key.pem").absolute()
    ensure_signing_key(signing_key)
    state_db = StateDatabase(state_db_url)
    state_db.upgrade()
    accounts, audit = AccountRepository(state_db), AuditLog(state_db)
    admin = ensure_first_admin(
        accounts,
        audit,
        email=args.admin_email,
        password=os.environ.get("TELEMATICS_ADMIN_PASSWORD") or None,
        now=time.time_ns() // 1_000_000,
    )
    broker = _up_broker(args, data_dir, accounts)

    demo_login = None
    simulator = None
    if args.demo:
        sim_args = []
        before_start = None
        if broker.closed:
            credentials = data_dir / "secrets" / "demo-units.json"
            refresh = _demo_refresher(
                accounts,
                audit,
                broker,
                vins=fleet_vins(args.vehicles),
                credentials=credentials,
                public_key_path=signing_key.with_name(signing_key.name + ".pub"),
            )
            demo_login = refresh()
            sim_args = ["--credentials", str(credentials)]
            before_start = refresh
        simulator = Part(
            "simulator",
            python_module(
                "device_sim", "--mqtt-url", broker.url, "--vehicles", str(args.vehicles), *sim_args
            ),
            optional=True,
            before_start=before_start,
        )
    parts = _up_parts(
        args,
        data_dir,
        broker,
        signing_key=signing_key,
        api_args=api_args,
        gateway_args=gateway_tuning,
    )
    if simulator is not None:
        parts.append(simulator)
    if admin is not None:
        print_first_admin(admin)
    _print_banner(args, data_dir, broker, demo_login)
    try:
        return Supervisor(parts, broker.keeper, health_dir=data_dir / HEALTH_DIR_NAME).run()
    finally:
        state_db.dispose()


def _up_parts(
    args: argparse.Namespace,
    data_dir: Path,
    broker: _UpBroker,
    *,
    signing_key: Path,
    api_args: Sequence[str],
    gateway_args: Sequence[str],
) -> list[Part]:
    """The gateways and the API (the simulator is added by the caller); ``api_args`` and
    ``gateway_args``: the settings of ``up`` they take (:func:`_forwarded`)."""
    from gateway.supervisor import Part, python_module

    common = ["--data-dir", str(data_dir), "--log-level", args.log_level]
    state_args = ["--state-db-url", args.state_db_url] if args.state_db_url else []
    parts = [
        Part(
            f"gateway-{i}",
            python_module(
                "gateway",
                "gateway",
                *common,
                "--mqtt-url",
                broker.url,
                "--client-id",
                f"telematics-gateway-{i}",
                *broker.service_args,
                *broker.gateway_args,
                *gateway_args,
            ),
        )
        for i in range(1, args.gateways + 1)
    ]
    parts.append(
        Part(
            "api",
            python_module(
                "gateway",
                "api",
                *common,
                "--host",
                args.api_host,
                "--port",
                str(args.api_port),
                "--mqtt-url",
                broker.url,
                "--admin-email",
                args.admin_email,
                "--signing-key",
                str(signing_key),
                *api_args,
                *broker.service_args,
                *state_args,
            ),
        )
    )
    return parts


def _print_banner(
    args: argparse.Namespace, data_dir: Path, broker: _UpBroker, demo_login: DemoLogin | None
) -> None:
    if demo_login is not None and demo_login.password is not None:
        print(
            "\n  Demo fleet manager created (the password is shown only this once):\n"
            f"    e-mail     {demo_login.email}\n    password   {demo_login.password}",
            flush=True,
        )
    api = f"http://{args.api_host}:{args.api_port}"
    tls = None if broker.keeper is None else broker.keeper.process.config.tls
    if broker.closed:
        kind = " (private; vehicles need credentials: telematics vehicle add --help)"
    elif broker.keeper is not None:
        kind = " (private, anonymous)"
    else:
        kind = ""
    lines = [
        "",
        "  telematics gateway",
        f"    broker   {broker.url}{kind}",
        *(
            [
                f"    TLS      {tls.url} (client certificate with CN = VIN: "
                + "telematics pki client VIN)"
            ]
            if tls is not None
            else []
        ),
        f"    API      {api}   (docs: {api}/docs; health: {api}/healthz)",
        f"    data     {data_dir}",
        f"    log in   curl -s {api}/v1/auth/token -d grant_type=password \\",
        f"               -d username={args.admin_email} --data-urlencode password=PASSWORD",
        '    then     curl -s -H "Authorization: Bearer ACCESS_TOKEN" ' + f"{api}/v1/vehicles",
        "    stop     Ctrl-C",
        "",
    ]
    if demo_login is not None:
        lines.insert(
            -2,
            f"    demo     {args.vehicles} vehicles of the organization "
            f"'Demo Fleet' (account {demo_login.account_id}); its fleet manager is "
            f"{demo_login.email}",
        )
    print("\n".join(lines), flush=True)


def _cmd_sim(argv: Sequence[str]) -> int:
    """``telematics sim ...`` is ``python -m device_sim ...``; ``telematics sim scenario FILE
    ...`` is ``python -m device_sim.scenario FILE ...``."""
    import asyncio

    if argv[:1] == ["scenario"]:
        from device_sim.scenario import main as scenario_main

        try:
            return int(asyncio.run(scenario_main(list(argv[1:]))))
        except BrokenPipeError:  # `--dump | head`: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    from device_sim.fleet import main as sim_main

    return int(asyncio.run(sim_main(list(argv))))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        return _cmd_sim(argv[1:])
    args = build_parser().parse_args(argv)
    # commands without --log-level (vehicle, user, account, pki) print their own results
    _setup_logging(args.log_level if hasattr(args, "log_level") else "WARNING")
    try:
        if args.command == "up":
            return _cmd_up(args)
        if args.command == "gateway":
            return _cmd_gateway(args)
        if args.command == "api":
            return _cmd_api(args)
        if args.command in ("vehicle", "user", "account"):
            from gateway.admin_cli import run as run_admin

            return run_admin(args)
        if args.command == "pki":
            from gateway.broker.pki import run_from_args as run_pki

            return run_pki(args)
        if args.command == "bench":
            if args.bench == "sim":
                from gateway.bench.sim import run_from_args as run_sim_bench

                return run_sim_bench(args)
            if args.bench == "identities":
                from gateway.bench.identities import run_from_args as run_identities_bench

                return run_identities_bench(args)
            if args.bench == "commands":
                from gateway.bench.commands import run_from_args as run_commands_bench

                return run_commands_bench(args)
            from gateway.bench.ingest import run_from_args

            return run_from_args(args)
    except (GatewayError, ValueError) as exc:
        print(f"telematics: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
