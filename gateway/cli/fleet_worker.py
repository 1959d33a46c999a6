"""``telematics fleet-worker``: the fleet rules and trips worker as a process of its own
(``gateway.fleet.process``; decision 0029)."""

from __future__ import annotations

import argparse
import os

from gateway.cli.options import add_common, add_state_db, add_store
from gateway.errors import ConfigurationError
from gateway.settings import Environment

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Run the fleet rules and trips worker: it reads the telemetry the gateways committed, in
each vehicle's order, and turns it into alerts, trips and vehicle states in the state
database (with their events for the API's live streams and webhooks), and runs the
maintenance check. The vehicles are split into partitions (by VIN); each worker holds
leases on its share of them, so several fleet-worker processes (on one machine or several,
with a shared PostgreSQL state database) split the work evenly, and a dead one's
partitions are taken over when its lease expires. `telematics up` runs one (see
--fleet-workers there) and its API with --no-fleet-worker; a `telematics api` started
alone runs the worker as a thread inside it. Stop it with SIGTERM or Ctrl-C: it gives its
partitions back at once.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    p = sub.add_parser(
        "fleet-worker",
        help="run the fleet rules and trips worker (several share the work)",
        description=DESCRIPTION,
    )
    add_common(p, env)
    add_state_db(p, env)
    add_store(p, env)
    p.add_argument(
        "--nice",
        type=int,
        choices=range(20),
        metavar="N",
        default=env.fleet_nice,
        help="lower the worker's CPU priority by this much (0-19, as nice(1)), so that on a "
        "busy machine the API's requests are served first; alerts then wait, nothing is lost "
        "(env TELEMATICS_FLEET_NICE; default: 5; 0 for the same priority as the API)",
    )
    p.add_argument(
        "--lease-seconds",
        type=float,
        default=env.fleet_lease_seconds,
        metavar="S",
        help="how long a worker's hold on its partitions lasts without renewal (renewed every "
        "third of it): a worker that dies without stopping has its vehicles taken over by "
        "the others after this long (env TELEMATICS_FLEET_LEASE_SECONDS; default: 15)",
    )
    p.add_argument(
        "--flush-seconds",
        type=float,
        default=5.0,
        metavar="S",
        help="how often the vehicles' rule and trip states are written to the state "
        "database; between two writes they are kept in memory, and a worker that takes over "
        "a partition replays the passes since (decision 0050). Longer: less work per sample "
        "and a longer replay; a trip in progress as the API shows it is up to this old "
        "(default: 5; 0 writes them in every pass)",
    )
    p.add_argument(
        "--no-maintenance",
        action="store_true",
        help="do not run the maintenance check in this process (another process runs it)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> int:
    if args.lease_seconds < 1:
        raise ConfigurationError("--lease-seconds: give 1 or more")
    if args.flush_seconds < 0:
        raise ConfigurationError("--flush-seconds: give 0 or more")
    if args.nice:
        # before any thread starts (every thread inherits it) and before the heavy imports
        # below: started with the API by `telematics up`, it must not slow the API's start
        os.nice(args.nice)
    from gateway.files import private_directory
    from gateway.fleet.process import FleetWorkerOptions, run_fleet_worker
    from gateway.fleet.worker import WorkerSettings
    from gateway.notify.wake import WAKE_DIR_NAME
    from gateway.statedb.database import default_url as default_state_db_url
    from gateway.store import resolve_store

    private_directory(args.data_dir)
    run_fleet_worker(
        FleetWorkerOptions(
            state_db_url=args.state_db_url or default_state_db_url(args.data_dir),
            store=resolve_store(args.store, args.data_dir),
            worker=WorkerSettings(
                lease_ms=int(args.lease_seconds * 1000), flush_ms=int(args.flush_seconds * 1000)
            ),
            maintenance=not args.no_maintenance,
            wake_dir=args.data_dir / WAKE_DIR_NAME,
        )
    )
    return 0
