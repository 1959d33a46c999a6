"""``telematics gateway``: one ingest process (run several to scale out): broker to
telemetry store, with retention. See docs/decisions/0013-architecture-step.md."""

from __future__ import annotations

import argparse
import os

from gateway.cli.options import (
    add_common,
    add_ingest,
    add_mqtt,
    add_mqtt_auth,
    add_retention,
    add_state_db,
    add_store,
    mqtt_settings,
)
from gateway.settings import DEFAULT_PRIVATE_BROKER_PORT, Environment

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    gw = sub.add_parser(
        "gateway",
        help="run one ingest process",
        description="Ingest from the broker into the telemetry store.",
    )
    add_common(gw, env)
    add_mqtt(gw, env, default=f"mqtt://127.0.0.1:{DEFAULT_PRIVATE_BROKER_PORT}", command="gateway")
    add_mqtt_auth(gw, env)
    add_ingest(gw, env)
    add_state_db(gw, env)
    add_store(gw, env)
    gw.add_argument(
        "--require-provisioned",
        action="store_true",
        default=env.require_provisioned,
        help="refuse (quarantine as unprovisioned_vehicle) messages of VINs that are not "
        "provisioned in the state database, or were revoked (env "
        "TELEMATICS_REQUIRE_PROVISIONED=1; `telematics up` turns it on)",
    )
    gw.add_argument(
        "--edge-brokers",
        type=int,
        default=0,
        metavar="N",
        help="the installation runs N edge brokers bridged to this one (decision 0038): "
        "feedback notices go to each vehicle's edge (`telematics up --edge-brokers` sets it)",
    )
    add_retention(gw, env)
    gw.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    from gateway.core.batching import BatchPolicy
    from gateway.files import private_directory
    from gateway.ingest.service import IngestSettings
    from gateway.notify.wake import WAKE_DIR_NAME
    from gateway.retention import RetentionPolicy
    from gateway.runner import GatewayOptions, run_gateway
    from gateway.statedb.database import default_url as default_state_db_url
    from gateway.store import resolve_store
    from gateway.supervisor import data_paths

    mqtt = mqtt_settings(args, env)
    if args.nice:
        os.nice(args.nice)  # before any thread starts: every thread inherits it
    private_directory(args.data_dir)
    db_path, _ = data_paths(args.data_dir)
    settings = IngestSettings(
        mqtt=mqtt,
        client_id=args.client_id,
        share_group=args.share_group,
        receive_maximum=args.receive_maximum,
        batch=BatchPolicy(max_delay_s=args.batch_delay_ms / 1000),
        edge_brokers=args.edge_brokers,
    )
    registry_url = None
    if args.require_provisioned:
        registry_url = args.state_db_url or default_state_db_url(args.data_dir)
    retention = RetentionPolicy(
        telemetry_days=args.telemetry_retention_days or None,
        quarantine_days=args.quarantine_retention_days or None,
        quarantine_max_entries=args.quarantine_max_entries or None,
    )
    run_gateway(
        GatewayOptions(
            db_path=db_path,
            store=resolve_store(args.store, args.data_dir),
            ingest=settings,
            registry_url=registry_url,
            retention=retention,
            quarantine_payload_bytes=args.quarantine_payload_bytes,
            wake_dir=args.data_dir / WAKE_DIR_NAME,
        )
    )
    return 0
