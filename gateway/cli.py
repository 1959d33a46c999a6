"""The ``telematics`` command.

``telematics up [--demo]``   broker + gateway + API (+ simulated fleet), supervised
``telematics gateway``       one ingest process (run several to scale out)
``telematics api``           the HTTP API
``telematics sim``           the device simulator (speaks only the public device contract)
``telematics bench ingest``  the ingest benchmark

Every option can also be set by an environment variable, named in its help text.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.broker import (
    BrokerConfig,
    find_mosquitto,
    parse_mqtt_url,
)
from gateway.errors import GatewayError

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


def _add_state_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-db-url",
        default=os.environ.get("TELEMATICS_STATE_DB_URL"),
        help="state database (commands) as an SQLAlchemy URL, e.g. "
        "postgresql+psycopg://user@host/db (env TELEMATICS_STATE_DB_URL; default: SQLite "
        "file state.db in the data directory)",
    )


def _add_ingest(p: argparse.ArgumentParser) -> None:
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
        "--demo", action="store_true", help="also run simulated vehicles driving around Munich"
    )
    up.add_argument("--vehicles", type=int, default=5, help="number of demo vehicles (default: 5)")

    gw = sub.add_parser(
        "gateway",
        help="run one ingest process",
        description="Ingest from the broker into the telemetry store.",
    )
    _add_common(gw)
    _add_mqtt(gw, default=f"mqtt://127.0.0.1:{DEFAULT_PRIVATE_BROKER_PORT}")
    _add_ingest(gw)

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
    _add_state_db(api)
    api.add_argument(
        "--commands-client-id",
        default=_env("COMMANDS_CLIENT_ID", "telematics-commands-1"),
        help="MQTT client id of this API process's command service: unique and stable per "
        "API process, like a gateway's (env TELEMATICS_COMMANDS_CLIENT_ID; default: "
        "telematics-commands-1)",
    )
    api.add_argument(
        "--signing-key",
        type=Path,
        default=os.environ.get("TELEMATICS_SIGNING_KEY"),
        metavar="FILE",
        help="Ed25519 private key (PEM) that signs every remote command; created (mode 0600, "
        "with its public key next to it as FILE.pub, to provision units with) if missing "
        "(env TELEMATICS_SIGNING_KEY; default: DATA_DIR/command-signing-key.pem)",
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
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # gmqtt logs every packet type at INFO; its warnings and errors still show
    for chatty in ("gmqtt", "httpx"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.ingest.pipeline import BatchPolicy
    from gateway.ingest.service import IngestSettings
    from gateway.runner import GatewayOptions, run_gateway
    from gateway.supervisor import data_paths

    host, port = parse_mqtt_url(args.mqtt_url)
    db_path, _ = data_paths(args.data_dir)
    settings = IngestSettings(
        host=host,
        port=port,
        client_id=args.client_id,
        share_group=args.share_group,
        receive_maximum=args.receive_maximum,
        batch=BatchPolicy(max_delay_s=args.batch_delay_ms / 1000),
    )
    run_gateway(GatewayOptions(db_path=db_path, ingest=settings))
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
    from gateway.commands.service import CommandSettings
    from gateway.statedb.database import default_url as default_state_db_url
    from gateway.supervisor import data_paths

    db_path, _ = data_paths(args.data_dir)
    commands = None
    if args.mqtt_url is not None:
        host, port = parse_mqtt_url(args.mqtt_url)
        signing_key: Path = args.signing_key or args.data_dir / "command-signing-key.pem"
        ensure_signing_key(signing_key)
        commands = CommandSettings(
            state_db_url=args.state_db_url or default_state_db_url(args.data_dir),
            mqtt_host=host,
            mqtt_port=port,
            client_id=args.commands_client_id,
            signing_key_path=signing_key,
        )
    else:
        log.warning("no --mqtt-url: remote commands are off (their routes answer 503)")
    app = create_app(ApiSettings(db_path=db_path, commands=commands))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from gateway.supervisor import Part, Supervisor, data_paths, python_module

    data_dir: Path = args.data_dir.resolve()
    _, broker_dir = data_paths(data_dir)
    broker: BrokerConfig | None = None
    if args.mqtt_url is None:
        find_mosquitto()  # fail early, with the install hint
        broker = BrokerConfig(port=args.mqtt_port, data_dir=broker_dir)
        mqtt_url = broker.url
    else:
        parse_mqtt_url(args.mqtt_url)
        mqtt_url = args.mqtt_url
    common = ["--data-dir", str(data_dir), "--log-level", args.log_level]
    parts = [
        Part(
            f"gateway-{i}",
            python_module(
                "gateway",
                "gateway",
                *common,
                "--mqtt-url",
                mqtt_url,
                "--client-id",
                f"telematics-gateway-{i}",
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
                mqtt_url,
                *(["--state-db-url", args.state_db_url] if args.state_db_url else []),
            ),
        )
    )
    if args.demo:
        parts.append(
            Part(
                "simulator",
                python_module(
                    "device_sim", "--mqtt-url", mqtt_url, "--vehicles", str(args.vehicles)
                ),
            )
        )
    api = f"http://{args.api_host}:{args.api_port}"
    port = parse_mqtt_url(mqtt_url)[1]
    example = (
        '{"vin":"WVWZZZ1JZXW000001","seq":1,"ts":\'$(date +%s000)\','
        '"signals":{"Vehicle.Speed":42.0}}'
    )
    lines = [
        "",
        "  telematics gateway",
        f"    broker   {mqtt_url}{' (private, started here)' if broker else ''}",
        f"    API      {api}   (docs: {api}/docs)",
        f"    data     {data_dir}",
        f"    try      curl -s {api}/v1/vehicles",
        f"    publish  mosquitto_pub -p {port} -q 1 -t v1/vehicles/WVWZZZ1JZXW000001/telemetry \\",
        f"               -m '{example}'",
        "    stop     Ctrl-C",
        "",
    ]
    print("\n".join(lines), flush=True)
    return Supervisor(parts, broker).run()


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
    _setup_logging(args.log_level if hasattr(args, "log_level") else "INFO")
    try:
        if args.command == "up":
            return _cmd_up(args)
        if args.command == "gateway":
            return _cmd_gateway(args)
        if args.command == "api":
            return _cmd_api(args)
        if args.command == "bench":
            if args.bench == "sim":
                from gateway.bench.sim import run_from_args as run_sim_bench

                return run_sim_bench(args)
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
