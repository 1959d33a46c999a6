"""``telematics up [--demo]``: broker + gateways + API + fleet workers (+ simulated fleet),
supervised.

The command line becomes a plan (:func:`gateway.cli.up_plan.plan_up`, no IO); :func:`run`
carries it out: the ports, the data directory, the signing key, the state database's
migrations, the first administrator, the private broker (PKI, its service account, the
sync of vehicle identities), the demo fleet, then the supervisor with the planned child
processes. See docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any

from gateway.cli.options import (
    add_auth,
    add_common,
    add_fleet_quotas,
    add_ingest,
    add_mqtt,
    add_mqtt_auth,
    add_offline_after,
    add_retention,
    add_signing_key,
    add_state_db,
    add_store,
    add_webhook_targets,
    ensure_signing_key,
)
from gateway.cli.sim import SIMULATOR_MODULE
from gateway.cli.up_plan import (
    BrokerMode,
    UpPlan,
    banner,
    plan_up,
    python_module,
)
from gateway.errors import GatewayError
from gateway.settings import DEFAULT_API_PORT, DEFAULT_PRIVATE_BROKER_PORT, Environment

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.broker import BrokerAuthSync, MosquittoProcess
    from gateway.broker.auth import BrokerAuthFiles
    from gateway.installation import DemoLogin
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog
    from gateway.statedb.integrations import IntegrationRepository
    from gateway.supervisor import BrokerKeeper, Part

__all__ = ["add_parser", "check_up_ports", "run"]

log = logging.getLogger("telematics")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    up = sub.add_parser(
        "up",
        help="run everything: private broker, gateway, API, fleet worker (and --demo vehicles)",
        description="Start a private Mosquitto (unless --mqtt-url is given), the gateways, "
        "the HTTP API and the fleet worker (--fleet-workers) as supervised child processes; "
        "a part that dies is restarted. Ctrl-C stops everything cleanly.",
    )
    up.set_defaults(handler=run)
    add_common(up, env)
    add_mqtt(up, env, default=None, command="up")
    up.add_argument(
        "--mqtt-port",
        type=int,
        default=env.mqtt_port,
        help="port of the private broker (env TELEMATICS_MQTT_PORT; default: "
        f"{DEFAULT_PRIVATE_BROKER_PORT}, so it does not clash with a system broker on 1883)",
    )
    up.add_argument(
        "--api-host",
        default=env.api_host,
        help="(env TELEMATICS_API_HOST; default: 127.0.0.1, this machine only)",
    )
    up.add_argument(
        "--api-port",
        type=int,
        default=env.api_port,
        help=f"(env TELEMATICS_API_PORT; default: {DEFAULT_API_PORT})",
    )
    add_state_db(up, env)
    add_store(up, env)
    up.add_argument(
        "--gateways",
        type=int,
        default=env.gateways,
        metavar="N",
        help="gateway processes sharing the subscription (env TELEMATICS_GATEWAYS; default: 1)",
    )
    _add_demo(up, env)
    up.add_argument(
        "--tls-port",
        type=int,
        default=env.tls_port or None,
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
    up.add_argument(
        "--edge-brokers",
        type=int,
        default=env.edge_brokers,
        metavar="N",
        help="run N unit-facing brokers (edges) on the ports after --mqtt-port, each with "
        "the logins of the vehicles assigned to it by VIN and bridged to the private broker, "
        "which then takes no vehicle logins: for more units than one broker process holds "
        "descriptors; provisioning tells each unit its edge (decision 0038) "
        "(env TELEMATICS_EDGE_BROKERS; default: 0, units connect to the private broker)",
    )
    _add_budget(up, env)
    _add_fleet_worker(up, env)
    # the API's and the gateways' settings, handed on to them
    add_auth(up, env)
    add_signing_key(up, env)
    add_offline_after(up, env)
    add_fleet_quotas(up, env)
    add_webhook_targets(up, env)
    add_retention(up, env)
    add_mqtt_auth(up, env)
    add_ingest(up, env, client_id=False)


def _add_demo(up: argparse.ArgumentParser, env: Environment) -> None:
    """--demo and how many vehicles it runs."""
    up.add_argument(
        "--demo",
        action="store_true",
        help="also run simulated vehicles driving around Munich, provisioned into the "
        "organization 'Demo Fleet' (with a fleet manager, fleet@demo.local)",
    )
    up.add_argument(
        "--vehicles",
        type=int,
        default=env.demo_vehicles,
        metavar="N",
        help="with --demo: how many simulated vehicles (env TELEMATICS_DEMO_VEHICLES; default: 5)",
    )


def _add_budget(up: argparse.ArgumentParser, env: Environment) -> None:
    """Each vehicle's message budget on the closed private broker and the edges (decision
    0048): a token bucket of messages and one of payload bytes; a message over either is
    refused by closing the unit's connection without a PUBACK (it resends it later)."""
    group = up.add_argument_group(
        "each vehicle's message budget (closed private broker and edges, decision 0048)"
    )
    helps = {
        "messages_per_s": "messages a second each vehicle may publish once its burst is spent",
        "burst_messages": "messages a vehicle may publish at once (its bucket's size)",
        "bytes_per_s": "payload bytes a second each vehicle may publish once its burst is spent",
        "burst_bytes": "payload bytes a vehicle may publish at once; a bigger message is "
        "always refused",
    }
    for name, text in helps.items():
        flag = "--budget-" + name.replace("_", "-")
        default = getattr(env, f"budget_{name}")
        group.add_argument(
            flag,
            type=int,
            default=default,
            metavar="N",
            help=f"{text} (env TELEMATICS_BUDGET_{name.upper()}; default: {default})",
        )


def _add_fleet_worker(up: argparse.ArgumentParser, env: Environment) -> None:
    up.add_argument(
        "--fleet-workers",
        type=int,
        default=env.fleet_workers,
        metavar="N",
        help="fleet rules and trips worker processes (telematics fleet-worker), sharing the "
        "vehicles between them; 0 runs the worker as a thread of the API process instead, "
        "for the fewest processes (env TELEMATICS_FLEET_WORKERS; default: 1)",
    )
    up.add_argument(
        "--fleet-nice",
        type=int,
        choices=range(20),
        metavar="N",
        default=env.fleet_nice,
        help="lower the fleet workers' CPU priority by this much (0-19, as nice(1)) "
        "(env TELEMATICS_FLEET_NICE; default: 5)",
    )


# --- ports ---------------------------------------------------------------------------------


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


# --- carrying the plan out -------------------------------------------------------------------


def run(args: argparse.Namespace, env: Environment) -> int:
    from gateway.accounts.bootstrap import ensure_first_admin, print_first_admin
    from gateway.health import HEALTH_DIR_NAME
    from gateway.statedb.accounts import AccountRepository
    from gateway.statedb.audit import AuditLog
    from gateway.statedb.database import StateDatabase
    from gateway.statedb.integrations import IntegrationRepository
    from gateway.supervisor import Supervisor

    plan = plan_up(args, env, data_dir=args.data_dir.resolve())
    check_up_ports(plan.listeners)
    lock = _hold_data_dir(plan.data_dir)
    try:
        _prepare_data_dir(plan.data_dir)
        ensure_signing_key(plan.signing_key)
        state_db = StateDatabase(plan.state_db_url)
    except BaseException:
        lock.close()
        raise
    try:
        state_db.upgrade()
        accounts, audit = AccountRepository(state_db), AuditLog(state_db)
        admin = ensure_first_admin(
            accounts,
            audit,
            email=plan.admin_email,
            password=env.admin_password or None,
            now=time.time_ns() // 1_000_000,
        )
        # the administrator exists now: the children (the API checks for a first
        # administrator too) must not see the variable, or the API would warn on the very
        # first start that it was ignored; nor need they hold a password in their environment
        os.environ.pop("TELEMATICS_ADMIN_PASSWORD", None)
        budget = _budget_settings(plan)
        vehicle_auth = _vehicle_auth_plugin(plan)
        keeper = _broker_keeper(
            plan, accounts, IntegrationRepository(state_db), budget, vehicle_auth
        )
        edges = _edge_keepers(plan, accounts, budget, vehicle_auth)
        parts, demo_login = _parts(plan, keeper, accounts, audit)
        if demo_login is not None:
            from gateway.installation import ensure_demo_geofences
            from gateway.statedb.fleets import FleetRepository

            ensure_demo_geofences(
                FleetRepository(state_db),
                audit,
                demo_login.account_id,
                now=time.time_ns() // 1_000_000,
            )
        if admin is not None:
            print_first_admin(admin)
        _print_banner(plan, keeper, demo_login)
        health_dir = plan.data_dir / HEALTH_DIR_NAME
        return Supervisor(parts, keeper, edges=edges, health_dir=health_dir).run()
    finally:
        state_db.dispose()
        lock.close()


#: in the data directory: held (flock) by the ``telematics up`` that runs on it, its pid inside
UP_LOCK_FILE = "up.lock"


def _hold_data_dir(data_dir: Path) -> IO[str]:
    """Take the data directory for this ``telematics up`` until the returned file is closed
    (or the process ends), or stop with who holds it: a second one on the same directory
    would start a second private broker on the first one's persistence file and a second
    ``telematics-gateway-1`` on the same store, and delete the first one's health reports."""
    import fcntl

    from gateway.files import private_directory

    private_directory(data_dir)
    lock = (data_dir / UP_LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise GatewayError(
            f"another telematics up (pid {holder}) runs on the data directory {data_dir}: "
            f"stop it (Ctrl-C in its terminal, or kill -INT {holder}) or run this one on "
            f"its own with --data-dir DIR (env TELEMATICS_DATA_DIR) and its own ports"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


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


BUDGET_PLUGIN_DIR = "broker-plugins"
"""Where ``telematics up`` compiles the message budget plugin, in the data directory."""


def _budget_settings(plan: UpPlan) -> dict[str, Any]:
    """The :class:`gateway.broker.BrokerConfig` fields of the plan's message budget: the
    budget and its plugin, compiled into ``DATA_DIR/broker-plugins`` if missing. Where it
    cannot be compiled the brokers run without it, and the log says so and what is missing
    (decision 0048): the installation still works, but a PUBACK is then no guarantee of
    delivery while another vehicle floods."""
    from gateway.broker.budget import BudgetPluginUnavailableError, ensure_budget_plugin

    budget = plan.broker.budget
    if budget is None:
        return {}
    try:
        plugin = ensure_budget_plugin(plan.data_dir / BUDGET_PLUGIN_DIR)
    except BudgetPluginUnavailableError as exc:
        log.warning(
            "the broker runs WITHOUT the per-vehicle message budget, so one vehicle "
            "flooding its topics can make the broker acknowledge and then drop other "
            "vehicles' messages and delay them by minutes (decision 0048): %s",
            exc,
        )
        return {}
    log.info(
        "each vehicle may publish %d messages and %d bytes a second (bursts of %d and %d)",
        budget.messages_per_s,
        budget.bytes_per_s,
        budget.burst_messages,
        budget.burst_bytes,
    )
    return {"budget": budget, "budget_plugin": plugin}


def _vehicle_auth_plugin(plan: UpPlan) -> Path | None:
    """The vehicle password plugin (decision 0055), compiled into ``DATA_DIR/broker-plugins``
    if missing, for a closed broker. Where it cannot be compiled (None) the vehicles'
    passwords stay in the password file, with a broker-wide reload per change, and the log
    says so and what is missing."""
    from gateway.broker.vehicle_auth import (
        VehicleAuthPluginUnavailableError,
        ensure_vehicle_auth_plugin,
    )

    if plan.broker.mode is not BrokerMode.CLOSED:
        return None
    try:
        return ensure_vehicle_auth_plugin(plan.data_dir / BUDGET_PLUGIN_DIR)
    except VehicleAuthPluginUnavailableError as exc:
        log.warning(
            "vehicle passwords stay in the broker's password file: every provisioning, "
            "revocation or new password reloads the broker, which then checks every "
            "connected unit's password again while all wait (decision 0055): %s",
            exc,
        )
        return None


def _vehicle_auth_settings(files: BrokerAuthFiles, plugin: Path | None) -> dict[str, Any]:
    if plugin is None:
        return {}
    return {"vehicle_auth_plugin": plugin, "vehicle_table_file": files.vehicle_table_file}


def _broker_keeper(
    plan: UpPlan,
    accounts: AccountRepository,
    integrations: IntegrationRepository,
    budget: dict[str, Any],
    vehicle_auth: Path | None = None,
) -> BrokerKeeper | None:
    """The private broker of the plan, set up (None: an external broker)."""
    from gateway.broker import BrokerConfig, find_dynsec_plugin, find_mosquitto
    from gateway.broker.auth import BrokerAuthFiles
    from gateway.installation import closed_broker_sync, edge_bridges, service_password
    from gateway.supervisor import BrokerKeeper

    broker = plan.broker
    if broker.mode is BrokerMode.EXTERNAL:
        return None
    assert broker.port is not None
    assert broker.directory is not None
    find_mosquitto()  # fail early, with the install hint
    if broker.mode is BrokerMode.ANONYMOUS:
        config = BrokerConfig(port=broker.port, data_dir=broker.directory, allow_anonymous=True)
        return BrokerKeeper(config, sessions=_service_sessions(plan))
    tls = None
    if broker.tls_port is not None:
        from gateway.broker.pki import Pki

        pki = Pki(plan.data_dir / "pki")
        if not pki.exists():
            pki.init()
            log.info("created a certificate authority for the TLS listener in %s", pki)
        tls = pki.tls_listener(port=broker.tls_port)
    find_dynsec_plugin()  # the closed broker cannot refuse subscriptions without it
    files = BrokerAuthFiles(broker.directory / "auth", vehicle_table=vehicle_auth is not None)
    config = BrokerConfig(
        port=broker.port,
        data_dir=broker.directory,
        allow_anonymous=False,
        password_file=files.password_file,
        dynsec_config_file=files.dynsec_file,
        tls=tls,
        **budget,
        **_vehicle_auth_settings(files, vehicle_auth),
    )
    secrets_dir = plan.data_dir / "secrets"
    password_file = service_password(secrets_dir)
    edges = len(broker.edge_ports)
    # with edges, no vehicle logs in here: the edges' bridges do (decision 0038)
    bridges = edge_bridges(secrets_dir, edges) if edges else []
    return BrokerKeeper(
        config,
        sessions=_service_sessions(plan),
        prime=_session_primer(plan, password_file),
        sync=lambda k: closed_broker_sync(
            accounts,
            files,
            k.process,
            secrets_dir=secrets_dir,
            pki_dir=plan.data_dir / "pki",
            restart=k.restart,
            lock=k.lock,
            integrations=integrations,
            holds=(lambda vin: False) if edges else None,
            extra_services=bridges,
        ),
    )


def _edge_keepers(
    plan: UpPlan,
    accounts: AccountRepository,
    budget: dict[str, Any],
    vehicle_auth: Path | None = None,
) -> list[BrokerKeeper]:
    """The unit-facing edge brokers (``--edge-brokers``, decision 0038): each with the
    logins and rights of the vehicles assigned to it, bridged to the private broker."""
    from gateway.broker import BrokerConfig
    from gateway.broker.auth import BrokerAuthFiles
    from gateway.broker.edges import bridge_lines
    from gateway.installation import bridge_password, closed_broker_sync
    from gateway.supervisor import BrokerKeeper
    from schemas.edges import edge_index

    broker = plan.broker
    count = len(broker.edge_ports)
    if not count:
        return []
    assert broker.port is not None
    secrets_dir = plan.data_dir / "secrets"
    secret = bridge_password(secrets_dir).read_text(encoding="utf-8").strip()
    keepers = []
    for i, port in enumerate(broker.edge_ports, start=1):
        directory = plan.data_dir / f"broker-edge-{i}"
        files = BrokerAuthFiles(directory / "auth", vehicle_table=vehicle_auth is not None)
        config = BrokerConfig(
            port=port,
            data_dir=directory,
            allow_anonymous=False,
            password_file=files.password_file,
            dynsec_config_file=files.dynsec_file,
            extra_lines=bridge_lines(
                i, core_host="127.0.0.1", core_port=broker.port, password=secret
            ),
            **budget,
            **_vehicle_auth_settings(files, vehicle_auth),
        )

        def sync(k: BrokerKeeper, files: BrokerAuthFiles = files, i: int = i) -> BrokerAuthSync:
            return closed_broker_sync(
                accounts,
                files,
                k.process,
                secrets_dir=secrets_dir,
                restart=k.restart,
                lock=k.lock,
                holds=lambda vin: edge_index(vin, count) == i,
            )

        keepers.append(BrokerKeeper(config, sync=sync, name=f"edge broker {i}"))
    return keepers


def _service_sessions(plan: UpPlan) -> dict[str, list[str]]:
    """This installation's service sessions: each gateway's (``telematics-gateway-N``) and
    the command service's client id, with their shared subscriptions. The ids and groups
    are the ones the child processes get. The broker keeper writes them into the broker's
    persistence file before every start (decision 0031) and opens them right after it."""
    import dataclasses

    from gateway.commands.service import CommandSettings
    from gateway.commands.service import subscription_filters as command_filters
    from gateway.ingest.service import IngestSettings

    sessions = {
        client_id: list(
            IngestSettings(client_id=client_id, share_group=plan.share_group).topic_filters()
        )
        for client_id in plan.gateway_client_ids
    }
    defaults = {f.name: f.default for f in dataclasses.fields(CommandSettings)}
    sessions[plan.commands_client_id] = list(command_filters(str(defaults["share_group"])))
    return sessions


def _session_primer(plan: UpPlan, password_file: Path) -> Callable[[MosquittoProcess], None]:
    """What opens this installation's service sessions right after every broker start
    (see :func:`gateway.broker.control.prime_sessions`)."""
    from gateway.broker.control import prime_sessions
    from gateway.installation import SERVICE_USERNAME

    sessions = _service_sessions(plan)

    def prime(broker: MosquittoProcess) -> None:
        secret = password_file.read_text(encoding="utf-8").strip()
        prime_sessions(broker.host, broker.port, SERVICE_USERNAME, secret, sessions)

    return prime


def _parts(
    plan: UpPlan, keeper: BrokerKeeper | None, accounts: AccountRepository, audit: AuditLog
) -> tuple[list[Part], DemoLogin | None]:
    """The planned child processes; the demo fleet provisioned first (closed broker), and
    again before every start of the simulator."""
    from gateway.supervisor import Part

    refresh = None
    demo_login = None
    if plan.demo is not None and plan.demo.credentials is not None:
        refresh = _demo_refresher(plan, keeper, accounts, audit, vins=demo_vins(plan.demo.vehicles))
        demo_login = refresh()
    parts = [
        Part(
            child.name,
            list(child.argv),
            optional=child.optional,
            before_start=refresh if child.name == "simulator" else None,
        )
        for child in plan.children
    ]
    return parts, demo_login


def demo_vins(vehicles: int) -> list[str]:
    """The VINs of the simulator's ``vehicles``-vehicle fleet, as it prints them
    (``python -m device_sim --vehicles N --list-vins``): the simulator decides its VINs,
    and the gateway does not import it."""
    argv = python_module(SIMULATOR_MODULE, "--vehicles", str(vehicles), "--list-vins")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GatewayError(f"cannot ask the simulator for the demo VINs: {exc}") from exc
    return done.stdout.split()


def _demo_refresher(
    plan: UpPlan,
    keeper: BrokerKeeper | None,
    accounts: AccountRepository,
    audit: AuditLog,
    *,
    vins: Sequence[str],
) -> Callable[[], DemoLogin]:
    """Provisions the demo vehicles and refreshes stale unit credentials; run at start and
    before every start of the simulator, so a credential rotated through the API does not
    keep the demo down. Waits until the broker has taken new credentials."""
    from gateway.installation import provision_demo

    demo = plan.demo
    assert demo is not None
    assert demo.credentials is not None
    credentials = demo.credentials

    def refresh() -> DemoLogin:
        before = accounts.broker_version()
        login = provision_demo(
            accounts,
            audit,
            vins=vins,
            credentials_path=credentials,
            broker_url=plan.broker.url,
            public_key_path=demo.public_key,
            now=time.time_ns() // 1_000_000,
        )
        sync = None if keeper is None else keeper.sync
        after = accounts.broker_version()
        if sync is not None and sync.running and after != before:
            deadline = time.monotonic() + 10
            while (sync.synced_version or 0) < after and time.monotonic() < deadline:
                time.sleep(0.05)
        return login

    return refresh


def _print_banner(plan: UpPlan, keeper: BrokerKeeper | None, demo_login: DemoLogin | None) -> None:
    if demo_login is not None and demo_login.password is not None:
        print(
            "\n  Demo fleet manager created (the password is shown only this once):\n"
            f"    e-mail     {demo_login.email}\n    password   {demo_login.password}",
            flush=True,
        )
    tls = None if keeper is None else keeper.process.config.tls
    text = banner(
        plan,
        tls_url=None if tls is None else tls.url,
        demo_email=None if demo_login is None else demo_login.email,
        demo_account=None if demo_login is None else demo_login.account_id,
    )
    print(text, flush=True)
