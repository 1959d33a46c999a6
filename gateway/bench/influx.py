"""The InfluxDB half of ``telematics bench ingest --store influxdb://...``.

Issue 15 sets the bar against InfluxDB itself: the gateway must reach 70% of InfluxDB's
own raw line-protocol write rate, measured in the same run with a plain bulk write of the
same points. :func:`raw_write_rate` is that write: the same samples as the benchmark's
vehicles send (``device_sim.loadgen``), encoded beforehand (so only InfluxDB and the HTTP
round trips are measured), 5,000 points a request as the gateway's shipper sends them,
into a database of their own. :func:`count_points` reads back what the gateway wrote, for
the lost and duplicated counts.

Each run writes into fresh databases (``<database>_bench_<time>`` and ``..._raw``) that it
drops afterwards, so it needs the right to create databases: InfluxDB 1.x, or point it at
a test server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from device_sim.loadgen import bench_signals, bench_vin
from gateway.store import lineprotocol as lp
from gateway.store.influx import SHIP_CHUNK, InfluxHttp, InfluxSettings, parse_influx_url

__all__ = ["bench_databases", "count_points", "raw_write_rate"]


@contextmanager
def bench_databases(url: str) -> Iterator[tuple[str, InfluxSettings]]:
    """(the store URL the gateway gets, the raw write's settings): two new databases on
    the server ``url`` names, dropped on the way out."""
    base = parse_influx_url(url)
    stamp = time.strftime("%Y%m%d%H%M%S")
    gateway_db, raw_db = f"{base.database}_bench_{stamp}", f"{base.database}_bench_{stamp}_raw"
    head, _, rest = url.partition("://")
    authority, _, tail = rest.partition("/")
    query = tail.partition("?")[2]
    gateway_url = f"{head}://{authority}/{gateway_db}" + (f"?{query}" if query else "")
    raw = parse_influx_url(f"{head}://{authority}/{raw_db}" + (f"?{query}" if query else ""))
    try:
        yield gateway_url, raw
    finally:
        for database in (gateway_db, raw_db):
            http = InfluxHttp(parse_influx_url(f"{head}://{authority}/{database}"))
            try:
                http.query(f"DROP DATABASE {lp.quote_ident(database)}", post=True)
            finally:
                http.close()


def raw_write_rate(settings: InfluxSettings, vehicles: int, per_vehicle: int, batch: int) -> float:
    """Points per second of a plain bulk write of ``vehicles * per_vehicle * batch``
    benchmark samples, in requests of :data:`SHIP_CHUNK` points."""
    signals = bench_signals()
    now = time.time_ns() // 1_000_000
    rows = [
        (bench_vin(v), 1, seq, now + seq, signals)
        for seq in range(per_vehicle * batch)
        for v in range(vehicles)
    ]
    bodies = [lp.lines(rows[i : i + SHIP_CHUNK]) for i in range(0, len(rows), SHIP_CHUNK)]
    http = InfluxHttp(settings)
    try:
        http.create_database()
        started = time.perf_counter()
        for body in bodies:
            http.write(body)
        elapsed = time.perf_counter() - started
    finally:
        http.close()
    return len(rows) / elapsed


def count_points(url: str, *, below_seq: int) -> tuple[int, int]:
    """(points, distinct (VIN, seq)) of the benchmark's vehicles with ``seq < below_seq``
    in the database ``url`` names."""
    http = InfluxHttp(parse_influx_url(url))
    try:
        results = http.query(
            'SELECT count("seq"), count(distinct("seq")) FROM "telemetry" '
            f'WHERE "seq" < {int(below_seq)} AND vin =~ /^WBENCH/ AND vin != '
            f"{lp.quote_string(bench_vin(999_999))} GROUP BY vin"
        )
    finally:
        http.close()
    points = distinct = 0
    for result in results:
        for series in result.get("series", []):
            _, count, unique = series["values"][0]
            points, distinct = points + int(count), distinct + int(unique)
    return points, distinct
