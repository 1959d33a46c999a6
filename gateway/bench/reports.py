"""``telematics bench reports``: how long a 30-day fleet report of 1,000 vehicles takes.

Generates, in a fresh state database (SQLite in a temporary directory, or a fresh database
on the PostgreSQL server of ``--postgresql``), an organization with 1,000 vehicles
(``--vehicles``), ~5 trips a day each (``--trips-per-day``, start times jittered) over 30
days (``--days``) and an ended idling alert per vehicle and day, all stored the way the
rules worker stores them (``FleetLog.commit_partition``: trips, alerts and their daily
rollups in one transaction; on PostgreSQL then ``VACUUM ANALYZE``, as autovacuum would
soon after). Then runs ``telematics api`` on that database (without the
rules worker) and times, over HTTP, the per-vehicle report of the whole range as streamed
CSV (to its last byte) and as JSON, and the utilization report as CSV; ``--reps`` times
each (default 3), printing each and the worst. The range starts and ends mid-day, so the
partial days at both edges are summed from the trips and alerts, the rest from the rollups.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from gateway.bench.commands import _login, _process, _wait
from gateway.bench.jsonout import strict_json
from gateway.bench.probes import _process_cpu_s
from gateway.broker import free_port

__all__ = ["ReportBenchResult", "add_arguments", "run_from_args", "run_reports_bench"]

DAY_MS = 86_400_000
#: the first generated day (a fixed date: the figures do not depend on today)
FIRST_DAY = 20_400


@dataclass(frozen=True, slots=True)
class ReportBenchResult:
    database: str
    vehicles: int
    days: int
    trips: int
    alerts: int
    csv_rows: int
    csv_bytes: int
    csv_ms: list[float]
    json_ms: list[float]
    utilization_csv_ms: list[float]
    worst_csv_ms: float
    worst_json_ms: float
    worst_utilization_csv_ms: float
    #: CPU of the API process (all its threads, /proc/PID/stat) per CSV request: on a
    #: shared machine the figure that does not move with the others' load
    csv_api_cpu_ms: list[float]
    #: the 1-minute load average before the first and after the last request
    load: tuple[float, float]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vehicles", type=int, default=1000, help="vehicles (default: 1000)")
    p.add_argument("--days", type=int, default=30, help="days of trips (default: 30)")
    p.add_argument("--trips-per-day", type=int, default=5, help="per vehicle (default: 5)")
    p.add_argument("--reps", type=int, default=3, help="repetitions (default: 3)")
    p.add_argument(
        "--postgresql",
        metavar="URL",
        help="a PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432/postgres) on "
        "which a fresh database is created and dropped; default: SQLite",
    )
    p.add_argument(
        "--json", action="store_true", help="print the result as one JSON object on the last line"
    )


def run_from_args(args: argparse.Namespace) -> int:
    result = run_reports_bench(
        vehicles=args.vehicles,
        days=args.days,
        trips_per_day=args.trips_per_day,
        reps=args.reps,
        postgresql=args.postgresql,
        progress=not args.json,
    )
    r = result
    print(
        f"\nreports benchmark ({r.database}): {r.vehicles} vehicles, {r.days} days, "
        f"{r.trips:,} trips, {r.alerts:,} alerts; per-vehicle report = {r.csv_rows:,} CSV "
        f"rows, {r.csv_bytes:,} bytes\n"
        f"  CSV, streamed to the last byte  {_ms(r.csv_ms)}  worst {r.worst_csv_ms:.0f} ms\n"
        f"  JSON                            {_ms(r.json_ms)}  worst {r.worst_json_ms:.0f} ms\n"
        f"  utilization CSV                 {_ms(r.utilization_csv_ms)}  worst "
        f"{r.worst_utilization_csv_ms:.0f} ms   (target: < 500 ms)\n"
        f"  API process CPU per CSV         {_ms(r.csv_api_cpu_ms)}   load average "
        f"{r.load[0]:.1f} -> {r.load[1]:.1f}",
        file=sys.stderr,
    )
    if args.json:
        print(strict_json(asdict(result)))
    return 0


def _ms(values: list[float]) -> str:
    return "  ".join(f"{v:6.0f} ms" for v in values)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _database(workdir: Path, postgresql: str | None) -> Iterator[str]:
    """A URL of an empty state database."""
    if postgresql is None:
        yield f"sqlite:///{workdir / 'state.db'}"
        return
    import psycopg
    from psycopg import sql

    base = postgresql.rpartition("/")[0]
    name = f"telematics_bench_{uuid.uuid4().hex[:12]}"
    admin = postgresql.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def generate(url: str, vehicles: int, days: int, per_day: int) -> tuple[int, int, int]:
    """The organization, its vehicles, trips and alerts; (organization id, trips, alerts)."""
    from gateway.statedb import AccountRepository, StateDatabase
    from gateway.statedb.fleet_log import AlertWrite, FleetLog, TripWrite, VinStep

    db = StateDatabase(url)
    try:
        db.upgrade()
        accounts, log = AccountRepository(db), FleetLog(db)
        org = accounts.create_account("organization", "bench reports", now=1)
        rng = random.Random(7)
        owner = f"bench-{uuid.uuid4().hex[:8]}"
        log.take_partitions(owner, 1, now=1, ttl_ms=10**12)
        trips = alerts = 0
        for chunk in range(0, vehicles, 100):
            steps = []
            for v in range(chunk, min(vehicles, chunk + 100)):
                vin = f"WREPORT{v:010d}"
                accounts.provision_vehicle(
                    vin=vin,
                    account_id=org.id,
                    label=None,
                    mqtt_password_hash=None,
                    provisioned_by=None,
                    now=1,
                )
                step = VinStep(vin, 1, org.id, {}, {})
                for d in range(FIRST_DAY, FIRST_DAY + days):
                    for k in range(per_day):
                        start = d * DAY_MS + (6 + 3 * k) * 3_600_000 + rng.randint(0, 3_000_000)
                        end = start + rng.randint(300_000, 3_600_000)
                        step.trips.append(
                            TripWrite(start, end, (11.5, 48.1), (11.6, 48.2),
                                      rng.uniform(1_000, 50_000), rng.uniform(30, 130), 40.0,
                                      rng.uniform(0, 10), None, "ignition_off", False, False)
                        )  # fmt: skip
                    at = d * DAY_MS + 12 * 3_600_000
                    step.alerts.append(
                        AlertWrite("opened", "idling", "idling", "warning", at, at + 600_000, {})
                    )
                trips, alerts = trips + len(step.trips), alerts + len(step.alerts)
                steps.append(step)
            cursor = (chunk, 0)
            log.commit_partition(0, owner, read_from=cursor, cursor=(chunk + 100, 0),
                                 steps=steps, now=2)  # fmt: skip
        log.release_partitions(owner)
        if db.backend == "postgresql":
            # what autovacuum gives a database that has settled (decision 0030): a bulk load
            # just made has no statistics (plans for row estimates of 1, a sort spilled to
            # disk) and no visibility map (index-only scans fetch every row from the heap)
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM ANALYZE")
        return org.id, trips, alerts
    finally:
        db.dispose()


def _get(client: httpx.Client, path: str, params: dict[str, str | int]) -> tuple[float, bytes]:
    """Milliseconds to the last byte of the response, and its body."""
    started = time.perf_counter()
    body = bytearray()
    with client.stream("GET", path, params=params) as r:
        r.raise_for_status()
        for part in r.iter_bytes():
            body += part
    return (time.perf_counter() - started) * 1000, bytes(body)


def run_reports_bench(
    *,
    vehicles: int = 1000,
    days: int = 30,
    trips_per_day: int = 5,
    reps: int = 3,
    postgresql: str | None = None,
    progress: bool = True,
) -> ReportBenchResult:
    workdir = Path(tempfile.mkdtemp(prefix="telematics-bench-reports-"))
    try:
        with _database(workdir, postgresql) as url:
            _say(progress, f"generating {vehicles} vehicles x {days} days x {trips_per_day} trips")
            account, trips, alerts = generate(url, vehicles, days, trips_per_day)
            # mid-day to mid-day: both edges are partial days, read from the trips
            start = FIRST_DAY * DAY_MS + 3 * 3_600_000
            params: dict[str, str | int] = {
                "account_id": account,
                "start": start,
                "end": start + days * DAY_MS,
            }
            timings = _measure(workdir, url, params, reps, progress)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    csv_ms, json_ms, util_ms, cpu_ms, load, body = timings
    return ReportBenchResult(
        database="postgresql" if postgresql else "sqlite",
        vehicles=vehicles,
        days=days,
        trips=trips,
        alerts=alerts,
        csv_rows=body.count(b"\n") - 1,
        csv_bytes=len(body),
        csv_ms=csv_ms,
        json_ms=json_ms,
        utilization_csv_ms=util_ms,
        worst_csv_ms=max(csv_ms),
        worst_json_ms=max(json_ms),
        worst_utilization_csv_ms=max(util_ms),
        csv_api_cpu_ms=cpu_ms,
        load=load,
    )


def _measure(
    workdir: Path, url: str, params: dict[str, str | int], reps: int, progress: bool
) -> tuple[list[float], list[float], list[float], list[float], tuple[float, float], bytes]:
    password = secrets.token_urlsafe(16)
    port = free_port()
    api = [
        *[sys.executable, "-m", "gateway", "api", "--data-dir", str(workdir / "data")],
        *["--state-db-url", url, "--port", str(port), "--log-level", "WARNING"],
        "--no-fleet-worker",
    ]
    base = f"http://127.0.0.1:{port}"
    headers: dict[str, str] = {}
    with _process(api, env={**os.environ, "TELEMATICS_ADMIN_PASSWORD": password}) as proc:

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                headers.update(_login(base, password))
            return bool(headers)

        _wait(up, "the API", timeout=60)
        csv_ms, json_ms, util_ms, cpu_ms = [], [], [], []
        body = b""
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            _get(client, "/v1/reports/vehicles", {**params, "format": "csv"})  # warm up
            load = os.getloadavg()[0]
            for n in range(reps):
                cpu = _process_cpu_s(proc.pid) or 0.0
                ms, body = _get(client, "/v1/reports/vehicles", {**params, "format": "csv"})
                cpu_ms.append(round(((_process_cpu_s(proc.pid) or 0.0) - cpu) * 1000, 1))
                csv_ms.append(round(ms, 1))
                ms, _ = _get(client, "/v1/reports/vehicles", {**params, "format": "json"})
                json_ms.append(round(ms, 1))
                ms, _ = _get(client, "/v1/reports/utilization", {**params, "format": "csv"})
                util_ms.append(round(ms, 1))
                _say(progress, f"rep {n + 1}: CSV {csv_ms[-1]:.0f} ms (API CPU "
                     f"{cpu_ms[-1]:.0f} ms), JSON {json_ms[-1]:.0f} ms, utilization CSV "
                     f"{util_ms[-1]:.0f} ms")  # fmt: skip
    return csv_ms, json_ms, util_ms, cpu_ms, (load, os.getloadavg()[0]), body
