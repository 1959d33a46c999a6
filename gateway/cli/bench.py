"""``telematics bench ingest|sim|commands|identities|fleet|fleet-scale|reports``: benchmarks
that print their figures (the work is :mod:`gateway.bench`'s). See
docs/decisions/0013-architecture-step.md."""

from __future__ import annotations

import argparse

from gateway.settings import Environment

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], env: Environment) -> None:
    from gateway.bench.commands import add_arguments as add_commands_bench_arguments
    from gateway.bench.fleet import add_arguments as add_fleet_bench_arguments
    from gateway.bench.identities import add_arguments as add_identities_bench_arguments
    from gateway.bench.ingest import add_arguments as add_ingest_bench_arguments
    from gateway.bench.reports import add_arguments as add_reports_bench_arguments
    from gateway.bench.sim import add_arguments as add_sim_bench_arguments

    bench = sub.add_parser(
        "bench", help="benchmarks", description="Benchmarks that print their figures."
    )
    bench.set_defaults(handler=run)
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    add_ingest_bench_arguments(
        bench_sub.add_parser(
            "ingest",
            help="ingest rate and latency against the broker's raw delivery rate",
            description="Start a private broker; measure the broker's raw delivery rate to a "
            "plain subscriber, then the gateway's committed-sample rate and "
            "publish-to-commit latency with the same publishers.",
        )
    )
    add_sim_bench_arguments(
        bench_sub.add_parser(
            "sim",
            help="simulator scale: 10,000 units at 0.2 msg/s and 1,000 at 1 msg/s",
            description="Start a private broker and run the device simulator at scale, each "
            "unit its own MQTT connection; print rates, CPU and memory per 1,000 units.",
        )
    )
    add_commands_bench_arguments(
        bench_sub.add_parser(
            "commands",
            help="API call -> succeeded latency of remote commands, idle and under ingest",
            description="Run broker, gateway, API and 100 simulated units; send commands "
            "(400 per phase at 25/s by default) with ingest idle, then with ingest at 50% and "
            "80% of its maximum measured in the same run; three repetitions, each and the "
            "worst printed, with per-stage latency, event-loop lag and CPU per process.",
        )
    )
    add_identities_bench_arguments(
        bench_sub.add_parser(
            "identities",
            help="what vehicle identities cost the closed broker: render, one live change, bulk",
            description="Run a closed broker with --vehicles provisioned vehicles; time the "
            "rendering and start, one vehicle added and revoked live, and all of them added "
            "at once.",
        )
    )
    add_fleet_bench_arguments(
        bench_sub.add_parser(
            "fleet",
            help="ingest rate with every fleet rule on against without, and alert latency",
            description="Run broker, gateway and API for 1,000 vehicles with 20 geofences; "
            "measure the ingest rate without and with the rules worker, then publish -> "
            "alert-visible latency at half that rate; N repetitions, each and the worst.",
        )
    )
    _add_scale(bench_sub)
    add_reports_bench_arguments(
        bench_sub.add_parser(
            "reports",
            help="a 30-day fleet report of 1,000 vehicles over HTTP, CSV and JSON",
            description="Generate 30 days of trips for 1,000 vehicles in a fresh state "
            "database (SQLite, or --postgresql) and time the per-vehicle and utilization "
            "reports through the API; N repetitions, each and the worst.",
        )
    )


def _add_scale(bench_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway.bench.scale import add_arguments as add_scale_bench_arguments

    add_scale_bench_arguments(
        bench_sub.add_parser(
            "fleet-scale",
            help="the whole product with a realistic fleet, stepped up until a limit breaks",
            description="Run telematics up (closed broker with per-VIN credentials, gateway, "
            "API) and step the fleet up (1k, 5k, 10k, 20k, 50k, 100k vehicles by default): "
            "provision each step in bulk, connect every unit (parked units report every 30-60 "
            "s, one in ten drives at 1 Hz, send-on-change), then print connected, msg/s, "
            "values/s, ingest lag, command latency, CPU and RSS per process, bytes per "
            "sample, provisioning and ACL reload time, lost and duplicated, and the first "
            "limit that broke. Everything runs on this machine, the load generators too.",
        )
    )


def run(args: argparse.Namespace, env: Environment) -> int:
    if args.bench == "reports":
        from gateway.bench.reports import run_from_args as run_reports_bench

        return run_reports_bench(args)
    if args.bench == "fleet-scale":
        from gateway.bench.scale import run_from_args as run_scale_bench

        return run_scale_bench(args)
    if args.bench == "fleet":
        from gateway.bench.fleet import run_from_args as run_fleet_bench

        return run_fleet_bench(args)
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
