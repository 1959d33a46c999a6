"""What ``telematics up`` starts, decided without doing any of it: :func:`plan_up` is a
function from the command line and the environment to an :class:`UpPlan` (which broker,
which child processes with which argv, the demo, the listeners); :mod:`gateway.cli.up`
carries a plan out (keys, migrations, the first administrator, PKI, provisioning, the
supervisor). The plan is tested without IO (``tests/test_up_plan.py``); its
``children`` are exactly the command lines the supervisor runs. See
docs/decisions/0013-architecture-step.md.
"""

from __future__ import annotations

import argparse
import enum
import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.broker.budget import BUDGET_FIELDS, DEFAULT_BUDGET, MessageBudget
from gateway.cli.sim import SIMULATOR_MODULE
from gateway.core.ratelimit import parse_limit
from gateway.errors import ConfigurationError, GatewayError
from gateway.settings import Environment
from schemas.broker_url import BrokerAddress, parse_broker_url

__all__ = [
    "BrokerMode",
    "BrokerPlan",
    "ChildPlan",
    "DemoPlan",
    "Listener",
    "UpPlan",
    "banner",
    "edge_unit_urls",
    "forwarded",
    "plan_up",
    "up_listeners",
]


#: (what, host, port, the flag and variable that change it)
Listener = tuple[str, str, int, str]


class BrokerMode(enum.StrEnum):
    #: ``--mqtt-url``: someone else's broker
    EXTERNAL = "external"
    #: the private broker, open to anonymous clients (``--anonymous-broker``)
    ANONYMOUS = "anonymous"
    #: the private broker with per-vehicle credentials and ACLs (the default)
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class BrokerPlan:
    mode: BrokerMode
    url: str
    #: the private broker's port and directory (None for an external one)
    port: int | None = None
    directory: Path | None = None
    #: the private closed broker's TLS listener (certificates in DATA_DIR/pki)
    tls_port: int | None = None
    #: the arguments that give the gateways and the API their broker account
    service_args: tuple[str, ...] = ()
    #: what the gateways get on a closed broker: the state database and its check
    gateway_args: tuple[str, ...] = ()
    #: the unit-facing edge brokers' ports, edge 1 first (``--edge-brokers``, decision 0038)
    edge_ports: tuple[int, ...] = ()
    #: each vehicle's message budget on the closed broker and the edges (decision 0048;
    #: None on an anonymous or external broker)
    budget: MessageBudget | None = None

    @property
    def closed(self) -> bool:
        """Vehicles need credentials: the closed private broker, or an external broker
        the gateway logs in to with a service account."""
        return self.mode is BrokerMode.CLOSED


@dataclass(frozen=True, slots=True)
class ChildPlan:
    """One supervised child process."""

    name: str
    argv: tuple[str, ...]
    #: its failure does not stop the installation (the simulator)
    optional: bool = False


@dataclass(frozen=True, slots=True)
class DemoPlan:
    vehicles: int
    #: the demo units' credentials file (closed broker only: an open one takes anyone)
    credentials: Path | None
    #: the command signing public key the units are provisioned with
    public_key: Path


@dataclass(frozen=True, slots=True)
class UpPlan:
    data_dir: Path
    state_db_url: str
    signing_key: Path
    admin_email: str
    api_url: str
    listeners: tuple[Listener, ...]
    broker: BrokerPlan
    #: the gateways, the API, the fleet workers, then (with --demo) the simulator
    children: tuple[ChildPlan, ...]
    demo: DemoPlan | None
    #: the MQTT sessions the closed broker opens for the services at every start
    gateway_client_ids: tuple[str, ...]
    share_group: str
    commands_client_id: str


def python_module(module: str, *args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", module, *args)


def up_listeners(args: argparse.Namespace) -> list[Listener]:
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
        for i in range(1, getattr(args, "edge_brokers", 0) + 1):
            listeners.append(
                (
                    f"edge broker {i}",
                    "127.0.0.1",
                    args.mqtt_port + i,
                    "--mqtt-port PORT (env TELEMATICS_MQTT_PORT; edges use the ports after it)",
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


def forwarded(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The command-line settings of ``up`` that its API and its gateways take: (API
    arguments, gateway arguments). A bad rate limit is an error now, not an API that keeps
    dying."""
    for limit in (args.user_command_limit, args.vehicle_command_limit, args.login_limit):
        parse_limit(limit)
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
        "--max-users-per-account",
        str(args.max_users_per_account),
    ]
    if args.fleet_quotas:
        from gateway.api.settings import parse_fleet_quotas

        try:
            parse_fleet_quotas(args.fleet_quotas)
        except ValueError as exc:
            raise ConfigurationError(f"--fleet-quotas: {exc}") from None
        api += ["--fleet-quotas", args.fleet_quotas]
    if args.auth_secret_file is not None:
        api += ["--auth-secret-file", str(Path(args.auth_secret_file).absolute())]
    if args.no_registration:
        api.append("--no-registration")
    if args.webhook_allow_private_targets:
        api.append("--webhook-allow-private-targets")
    if args.unit_broker_url is not None:
        api += ["--unit-broker-url", args.unit_broker_url]
    edge_urls = edge_unit_urls(args)
    if edge_urls:
        api += ["--edge-broker-urls", ",".join(edge_urls)]
    unit_tls_url = _unit_tls_broker_url(args)
    if unit_tls_url is not None:
        api += ["--unit-tls-broker-url", unit_tls_url]
    gateway = [
        "--share-group",
        args.share_group,
        "--batch-delay-ms",
        repr(args.batch_delay_ms),
        "--receive-maximum",
        str(args.receive_maximum),
        "--nice",
        str(args.nice),
        "--telemetry-retention-days",
        repr(args.telemetry_retention_days),
        "--quarantine-retention-days",
        repr(args.quarantine_retention_days),
        "--quarantine-max-entries",
        str(args.quarantine_max_entries),
        "--quarantine-payload-bytes",
        str(args.quarantine_payload_bytes),
    ]
    if getattr(args, "store", None):  # the same telemetry store for all of them
        api += ["--store", args.store]
        gateway += ["--store", args.store]
    if edge_urls:  # feedback notices go to each VIN's edge (schemas.edges.routed_topic)
        gateway += ["--edge-brokers", str(len(edge_urls))]
    return api, gateway


def edge_unit_urls(args: argparse.Namespace) -> list[str]:
    """The URLs units are told for the edge brokers (``--edge-brokers``), edge 1 first: the
    host of ``--unit-broker-url`` (127.0.0.1 without it), the edge's port."""
    edges = getattr(args, "edge_brokers", 0)
    if not edges:
        return []
    host = _unit_host(args)
    return [BrokerAddress(host, args.mqtt_port + i, tls=False).url for i in range(1, edges + 1)]


def _unit_host(args: argparse.Namespace) -> str:
    """The private broker's host as units reach it: that of ``--unit-broker-url``, else
    127.0.0.1."""
    if args.unit_broker_url is None:
        return "127.0.0.1"
    try:
        return parse_broker_url(args.unit_broker_url).host
    except ValueError as exc:
        raise ConfigurationError(f"--unit-broker-url: {exc}") from None


def _unit_tls_broker_url(args: argparse.Namespace) -> str | None:
    """The broker URL told to units provisioned with a client certificate: the one given,
    else the private broker's TLS listener (``--tls-port``) on the host of
    ``--unit-broker-url`` (127.0.0.1 without it); None when there is no such listener (the
    API then tells them ``--unit-broker-url``)."""
    if args.unit_tls_broker_url is not None:
        return str(args.unit_tls_broker_url)
    if args.tls_port is None or args.mqtt_url is not None or args.anonymous_broker:
        return None
    return BrokerAddress(_unit_host(args), args.tls_port, tls=True).url


def _broker_plan(args: argparse.Namespace, data_dir: Path, state_db_url: str) -> BrokerPlan:
    from gateway.installation import SERVICE_PASSWORD_FILE, SERVICE_USERNAME

    checked = ("--state-db-url", state_db_url, "--require-provisioned")
    if getattr(args, "edge_brokers", 0) and (args.mqtt_url is not None or args.anonymous_broker):
        raise GatewayError("--edge-brokers needs the closed private broker")
    if args.mqtt_url is not None:
        parse_broker_url(args.mqtt_url, tls=False)
        if not args.mqtt_username:
            return BrokerPlan(BrokerMode.EXTERNAL, args.mqtt_url)
        # your own broker with a service account for the gateway: it is a closed one
        service = ["--mqtt-username", args.mqtt_username]
        if args.mqtt_password_file is not None:
            service += ["--mqtt-password-file", str(Path(args.mqtt_password_file).absolute())]
        return BrokerPlan(
            BrokerMode.EXTERNAL, args.mqtt_url, service_args=tuple(service), gateway_args=checked
        )
    directory = data_dir / "broker"
    url = f"mqtt://127.0.0.1:{args.mqtt_port}"
    if args.anonymous_broker:
        if args.tls_port is not None:
            raise GatewayError("--tls-port needs the closed broker (drop --anonymous-broker)")
        return BrokerPlan(BrokerMode.ANONYMOUS, url, port=args.mqtt_port, directory=directory)
    password = data_dir / "secrets" / SERVICE_PASSWORD_FILE
    edges = getattr(args, "edge_brokers", 0)
    if not 0 <= edges <= 64:
        raise ConfigurationError("--edge-brokers: give 0 (none) to 64")
    if edges and args.tls_port is not None:
        raise GatewayError("--edge-brokers: the TLS listener is not on the edges yet (drop one)")
    if edges and args.demo:
        raise GatewayError("--edge-brokers: the demo simulator connects to one broker (drop one)")
    return BrokerPlan(
        BrokerMode.CLOSED,
        url,
        port=args.mqtt_port,
        directory=directory,
        tls_port=args.tls_port,
        service_args=("--mqtt-username", SERVICE_USERNAME, "--mqtt-password-file", str(password)),
        gateway_args=checked,
        edge_ports=tuple(args.mqtt_port + i for i in range(1, edges + 1)),
        budget=_budget(args),
    )


def _budget(args: argparse.Namespace) -> MessageBudget:
    """The ``--budget-*`` options as a budget; a value below 1 is refused here."""
    try:
        return MessageBudget(
            **{
                name: getattr(args, f"budget_{name}", getattr(DEFAULT_BUDGET, name))
                for name in BUDGET_FIELDS
            }
        )
    except ValueError as exc:
        raise ConfigurationError(f"--budget-*: {exc}") from exc


def _fleet_workers(args: argparse.Namespace, common: tuple[str, ...]) -> list[ChildPlan]:
    """The fleet-worker processes (decision 0029), with the settings they share with the
    API (``common``: data directory, log level, state database) and the store."""
    store_args = ("--store", args.store) if getattr(args, "store", None) else ()
    argv = ("fleet-worker", *common, "--nice", str(args.fleet_nice), *store_args)
    return [
        ChildPlan(f"fleet-worker-{i}", python_module("gateway", *argv))
        for i in range(1, args.fleet_workers + 1)
    ]


def plan_up(args: argparse.Namespace, env: Environment, *, data_dir: Path) -> UpPlan:
    """The plan of ``telematics up`` with ``args`` (its parsed command line); ``data_dir``
    is ``--data-dir`` made absolute. No IO: invalid settings raise here, before anything
    is created."""
    from gateway.statedb.database import default_url as default_state_db_url

    api_args, gateway_args = forwarded(args)
    if args.fleet_workers < 0:
        raise ConfigurationError("--fleet-workers: give 0 (the rules in the API) or more")
    state_db_url = args.state_db_url or default_state_db_url(data_dir)
    signing_key = Path(args.signing_key or data_dir / "command-signing-key.pem").absolute()
    broker = _broker_plan(args, data_dir, state_db_url)
    common = ("--data-dir", str(data_dir), "--log-level", args.log_level)
    client_ids = tuple(f"telematics-gateway-{i}" for i in range(1, args.gateways + 1))
    children = [
        ChildPlan(
            f"gateway-{i}",
            python_module(
                "gateway",
                "gateway",
                *common,
                "--mqtt-url",
                broker.url,
                "--client-id",
                client_id,
                *broker.service_args,
                *broker.gateway_args,
                *gateway_args,
            ),
        )
        for i, client_id in enumerate(client_ids, start=1)
    ]
    state_args = ("--state-db-url", args.state_db_url) if args.state_db_url else ()
    api = python_module(
        "gateway",
        "api",
        *common,
        *("--host", args.api_host, "--port", str(args.api_port), "--mqtt-url", broker.url),
        *("--admin-email", args.admin_email, "--signing-key", str(signing_key)),
        *api_args,
        *broker.service_args,
        *state_args,
    )
    if args.fleet_workers > 0:  # the rules in processes of their own (decision 0029)
        api = (*api, "--no-fleet-worker")
    children.append(ChildPlan("api", api))
    children += _fleet_workers(args, (*common, *state_args))
    demo = None
    if args.demo:
        credentials = data_dir / "secrets" / "demo-units.json" if broker.closed else None
        demo = DemoPlan(
            args.vehicles, credentials, signing_key.with_name(signing_key.name + ".pub")
        )
        sim_args = ("--credentials", str(credentials)) if credentials is not None else ()
        simulator = python_module(
            SIMULATOR_MODULE,
            *("--mqtt-url", broker.url, "--vehicles", str(args.vehicles), "--misbehave"),
            # the units' seq counters survive a restart of the demo (device_sim.seqstate)
            *("--seq-state", str(data_dir / "simulator" / "seq-state.json")),
            *sim_args,
        )
        children.append(ChildPlan("simulator", simulator, optional=True))
    return UpPlan(
        data_dir=data_dir,
        state_db_url=state_db_url,
        signing_key=signing_key,
        admin_email=args.admin_email,
        api_url=f"http://{args.api_host}:{args.api_port}",
        listeners=tuple(up_listeners(args)),
        broker=broker,
        children=tuple(children),
        demo=demo,
        gateway_client_ids=client_ids,
        share_group=args.share_group,
        commands_client_id=env.commands_client_id,
    )


_TLS_NOTE = "(client certificate with CN = VIN: telematics pki client VIN)"


def banner(
    plan: UpPlan,
    *,
    tls_url: str | None = None,
    demo_email: str | None = None,
    demo_account: int | None = None,
) -> str:
    """What ``telematics up`` prints once everything is set up."""
    api = plan.api_url
    broker = plan.broker
    if broker.closed:
        kind = " (private; vehicles need credentials: telematics vehicle add --help)"
    elif broker.mode is BrokerMode.ANONYMOUS:
        kind = " (private, anonymous)"
    else:
        kind = ""
    lines = [
        "",
        "  telematics gateway",
        f"    broker   {broker.url}{kind}",
        *(
            [
                f"    edges    {len(broker.edge_ports)} unit-facing brokers, ports "
                f"{broker.edge_ports[0]}-{broker.edge_ports[-1]} (each unit: the URL it was told)"
            ]
            if broker.edge_ports
            else []
        ),
        *([] if tls_url is None else [f"    TLS      {tls_url} {_TLS_NOTE}"]),
        f"    web      {api}/   (the dashboard: open it in a browser and log in)",
        f"    API      {api}/v1   (docs: {api}/docs; health: {api}/healthz)",
        f"    data     {plan.data_dir}",
        f"    log in   curl -s {api}/v1/auth/token -d grant_type=password \\",
        f"               -d username={plan.admin_email} --data-urlencode password=PASSWORD",
        '    then     curl -s -H "Authorization: Bearer ACCESS_TOKEN" ' + f"{api}/v1/vehicles",
        "    stop     Ctrl-C",
        "",
    ]
    if plan.demo is not None and demo_email is not None:
        lines.insert(
            -2,
            f"    demo     {plan.demo.vehicles} vehicles of the organization "
            f"'Demo Fleet' (account {demo_account}); its fleet manager is {demo_email}",
        )
    return "\n".join(lines)
